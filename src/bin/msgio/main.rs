//! `msgio`: publish, read, measure and repair messages on any transport msgio opens by URL.
//!
//! ```sh
//! msgio pub redis://127.0.0.1/orders '{"id": 1}' -H Type:order.created
//! msgio sub redis://127.0.0.1/orders --json --count 10
//! msgio bench mem://bench --messages 100000 --size 128 --concurrency 64
//! msgio dlq list redis://127.0.0.1/orders-dead
//! msgio dlq replay redis://127.0.0.1/orders-dead --to redis://127.0.0.1/orders
//! msgio health nats://127.0.0.1:4222/orders.created
//! ```
//!
//! A URL picks the transport and the destination (see `msgio::url`); a password is taken
//! from `--password-file` or `MSGIO_PASSWORD` when the URL names a user without one, and
//! is never printed: URLs are shown with it replaced by `***`. Errors are one line on
//! standard error and a non-zero exit status (1; 2 for a command line that cannot be
//! read).

mod bench;
mod dlq;
mod print;
mod publish;
mod subscribe;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use msgio::url::Url;
use msgio::{BoxServer, BoxTopic, Error, ServerConfig};

/// Publish, read, measure and repair messages on any transport msgio opens by URL.
#[derive(Parser, Debug)]
#[command(name = "msgio", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish messages.
    Pub(publish::PubArgs),
    /// Print the messages a destination delivers (acking them unless --no-ack).
    #[command(alias = "tail")]
    Sub(subscribe::SubArgs),
    /// Publish and consume N messages; print msgs/s and latency percentiles.
    Bench(bench::BenchArgs),
    /// Dead letters: list, show or replay them.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Exit 0 when the broker behind URL answers, 1 when it does not.
    Health(HealthArgs),
}

/// How to reach a destination: its URL and where its password comes from.
#[derive(Args, Debug, Clone)]
struct Target {
    /// The destination's URL (mem://, redis://, nats://, amqp://, postgres://, kafka://).
    url: String,
    /// A file holding the password for the URL's user (else MSGIO_PASSWORD).
    #[arg(long, value_name = "PATH")]
    password_file: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
struct HealthArgs {
    #[command(flatten)]
    target: Target,
    /// How long to wait for the broker.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

impl Target {
    /// The URL with the password put in, when one is given and the URL has a user
    /// without one. Not for printing: see [`Target::shown`].
    fn resolve(&self) -> Result<String, Error> {
        let password = match &self.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Error::other(format!("cannot read the password file {path:?}: {e}"))
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => std::env::var("MSGIO_PASSWORD").ok(),
        };
        Ok(match password {
            Some(password) => with_password(&self.url, &password),
            None => self.url.clone(),
        })
    }

    /// The URL as it may be shown.
    fn shown(&self) -> String {
        Url::parse(&self.url).map_or_else(
            |_| "(a URL that cannot be read)".to_owned(),
            |u| u.to_string(),
        )
    }

    async fn topic(&self) -> Result<BoxTopic, Error> {
        msgio::open_topic(&self.resolve()?).await
    }

    async fn server(&self, config: ServerConfig) -> Result<BoxServer, Error> {
        msgio::open_server(&self.resolve()?, config).await
    }
}

/// `url` with `password` as its user's password, when its user has none.
fn with_password(url: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = &rest[..at];
    if user.contains(':') || user.is_empty() {
        return url.to_owned();
    }
    format!(
        "{scheme}://{user}:{}{}",
        percent_encode(password),
        &rest[at..]
    )
}

/// `text` with every byte but `A-Z a-z 0-9 - . _ ~` percent-encoded, for a URL.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}

/// `500ms`, `30s`, `5m`, `1h`, or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (500ms, 30s, 5m, 1h)"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?} is not a duration (500ms, 30s, 5m, 1h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

async fn health(args: HealthArgs) -> Result<(), Error> {
    let shown = args.target.shown();
    match tokio::time::timeout(args.timeout, args.target.topic()).await {
        Ok(Ok(_topic)) => {
            println!("ok: {shown}");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::connection_lost(format!(
            "{shown} did not answer within {:?}",
            args.timeout
        ))),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MSGIO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("msgio: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Pub(args) => publish::run(args).await,
            Command::Sub(args) => subscribe::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Dlq(command) => dlq::run(command).await,
            Command::Health(args) => health(args).await,
        }
    });
    // Servers and connections may hold threads: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = one_line(&e.to_string());
            match text.strip_prefix("msgio: ") {
                Some(rest) => eprintln!("msgio: {rest}"),
                None => eprintln!("msgio: {text}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// `text` on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_goes_in_only_where_the_user_has_none() {
        assert_eq!(
            with_password("redis://app@h:6379/s", "p/w@1"),
            "redis://app:p%2Fw%401@h:6379/s"
        );
        assert_eq!(with_password("redis://app:x@h/s", "p"), "redis://app:x@h/s");
        assert_eq!(with_password("redis://h/s", "p"), "redis://h/s");
    }

    #[test]
    fn durations_read_as_the_urls_do() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }
}

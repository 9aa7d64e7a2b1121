//! `msgio sub` (`tail`): print what a destination delivers; and the reading loop `dlq`
//! shares: serve until a count, an idle spell or Ctrl-C, acking or leaving each message.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use msgio::{BoxServer, Context, Error, Message, ReceiverFunc, Server, ServerConfig};

use crate::print::{self, Format};
use crate::{Target, parse_duration};

#[derive(Args, Debug)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    target: Target,
    /// One JSON object per message, a line each.
    #[arg(long, conflicts_with = "raw")]
    json: bool,
    /// The bodies alone, a line each.
    #[arg(long)]
    raw: bool,
    /// Leave the messages where they are instead of acking them: they are put back when
    /// the command ends (the broker may count a delivery attempt; NATS and Redis do).
    #[arg(long)]
    no_ack: bool,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop once no message arrived for this long (500ms, 5s).
    #[arg(long, value_parser = parse_duration)]
    idle: Option<Duration>,
    /// Read as this consumer group (redis and kafka `group`, nats `durable`, amqp `queue`).
    #[arg(long)]
    group: Option<String>,
}

/// How long a message left in place stays invisible after reading ends.
const LEAVE_DELAY: Duration = Duration::from_secs(1);

/// What to do with a message once handled.
pub(crate) enum Disposition {
    /// Acknowledge it: it is gone from the destination.
    Ack,
    /// Leave it: put back when reading ends.
    Leave,
}

/// When reading ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Until {
    /// After this many messages were handled.
    pub(crate) count: Option<u64>,
    /// After no message arrived for this long.
    pub(crate) idle: Option<Duration>,
}

/// Serves `server` with `handle` until `until` says or Ctrl-C; `handle` gets each message
/// with its number (from 1). Messages it leaves are held (not redelivered meanwhile)
/// and put back at the end. Returns how many it handled.
pub(crate) async fn read<F, Fut>(server: BoxServer, until: Until, handle: F) -> Result<u64, Error>
where
    F: Fn(u64, Context, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Disposition, Error>> + Send,
{
    let handled = Arc::new(AtomicU64::new(0));
    let last = Arc::new(Mutex::new(Instant::now()));
    let done = Arc::new(tokio::sync::Notify::new());
    let handle = Arc::new(handle);
    let receiver = {
        let (handled, last, done) = (handled.clone(), last.clone(), done.clone());
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let (handled, last, done, handle) =
                (handled.clone(), last.clone(), done.clone(), handle.clone());
            async move {
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                let n = handled.fetch_add(1, Ordering::SeqCst) + 1;
                let over = until.count.is_some_and(|c| n > c);
                let disposition = if over {
                    Disposition::Leave
                } else {
                    let d = handle(n, ctx.clone(), msg).await?;
                    if until.count == Some(n) {
                        done.notify_one();
                    }
                    d
                };
                match disposition {
                    Disposition::Ack => Ok(()),
                    Disposition::Leave => {
                        // Held until reading ends, then put back as a failed attempt
                        // due a moment later: by then this server's connection is
                        // closed, so that the message goes to the next reader, not to a
                        // request of this one still waiting at the broker.
                        ctx.cancelled().await;
                        Err(Error::retry_after(LEAVE_DELAY, "left by msgio"))
                    }
                }
            }
        })
    };
    let serving = server.clone();
    let mut task = tokio::spawn(async move { serving.serve(receiver).await });
    let idle = async {
        match until.idle {
            None => std::future::pending::<()>().await,
            Some(idle) => loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if last.lock().unwrap_or_else(|p| p.into_inner()).elapsed() >= idle {
                    return;
                }
            },
        }
    };
    let ended = tokio::select! {
        () = done.notified() => None,
        () = idle => None,
        _ = tokio::signal::ctrl_c() => None,
        served = &mut task => Some(served),
    };
    if let Some(served) = ended {
        // serve stopped by itself: a connection it could not make, say.
        return match served {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(handled.load(Ordering::SeqCst)),
            Err(e) => Err(Error::other(e)),
        };
    }
    // The deadline passes when messages are held (left): they are put back then.
    match server.shutdown(Duration::from_millis(500)).await {
        Ok(()) | Err(Error::DeadlineExceeded) => {}
        Err(e) => return Err(e),
    }
    let _ = task.await;
    Ok(handled
        .load(Ordering::SeqCst)
        .min(until.count.unwrap_or(u64::MAX)))
}

/// `url` reading as `group`, in the scheme's own parameter.
pub(crate) fn with_group(url: &str, group: &str) -> Result<String, Error> {
    let scheme = url
        .split_once("://")
        .map_or("", |(s, _)| s)
        .to_ascii_lowercase();
    let param = match scheme.as_str() {
        "redis" | "kafka" => "group",
        "nats" => "durable",
        "amqp" => "queue",
        _ => {
            return Err(Error::other(format!(
                "--group: {scheme}:// has no consumer groups"
            )));
        }
    };
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|p| p.split('=').next() == Some(param)) {
        return Err(Error::other(format!(
            "--group and the URL's {param}= both name the group: give one"
        )));
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{url}{sep}{param}={}",
        crate::percent_encode(group)
    ))
}

/// The server configuration for reading: attempts unlimited (the command never
/// dead-letters), one message at a time when acking (in order), up to 1,000 held when
/// leaving.
pub(crate) fn config(leave: bool, count: Option<u64>) -> ServerConfig {
    let concurrency = if leave {
        count.map_or(1000, |c| c.clamp(1, 1000) as usize)
    } else {
        1
    };
    ServerConfig::new()
        .concurrency(concurrency)
        .unlimited_attempts()
}

pub(crate) async fn run(args: SubArgs) -> Result<(), Error> {
    let format = if args.json {
        Format::Json
    } else if args.raw {
        Format::Raw
    } else {
        Format::Human
    };
    let mut target = args.target.clone();
    if let Some(group) = &args.group {
        target.url = with_group(&target.url, group)?;
    }
    let server = target.server(config(args.no_ack, args.count)).await?;
    let leave = args.no_ack;
    let until = Until {
        count: args.count,
        idle: args.idle,
    };
    let n = read(server, until, move |n, ctx, mut msg| async move {
        let body = msg.body.read_to_bytes(usize::MAX).await?;
        print::print(format, n, &ctx, &msg.attributes, &body);
        Ok(if leave {
            Disposition::Leave
        } else {
            Disposition::Ack
        })
    })
    .await?;
    eprintln!(
        "{n} message(s) from {}{}",
        args.target.shown(),
        if leave { ", left in place" } else { "" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_group;

    #[test]
    fn the_group_goes_in_the_schemes_parameter() {
        assert_eq!(
            with_group("redis://h/s", "billing").unwrap(),
            "redis://h/s?group=billing"
        );
        assert_eq!(
            with_group("nats://h/a.b?stream=S", "b").unwrap(),
            "nats://h/a.b?stream=S&durable=b"
        );
        assert!(with_group("mem://q", "b").is_err());
        assert!(with_group("kafka://h/t?group=a", "b").is_err());
    }
}

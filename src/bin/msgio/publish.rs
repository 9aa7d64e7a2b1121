//! `msgio pub`: one message, several, or one per line, from an argument, a file or stdin.

use std::io::Read;
use std::time::Duration;

use clap::Args;
use futures::io::AsyncWriteExt;
use msgio::{Context, Error, MessageWriter, Topic};

use crate::{Target, parse_duration};

#[derive(Args, Debug)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    target: Target,
    /// The body (else --file, else standard input). `{{seq}}` is replaced by the
    /// message's number (from 1).
    body: Option<String>,
    /// Read the body from a file (`-` for standard input).
    #[arg(long, short, value_name = "PATH", conflicts_with = "body")]
    file: Option<String>,
    /// One message per line of the input (empty lines skipped).
    #[arg(long)]
    lines: bool,
    /// An attribute, `key:value` (repeatable; a key given twice gets both values).
    #[arg(short = 'H', long = "header", value_name = "KEY:VALUE")]
    headers: Vec<String>,
    /// Deliver no sooner than this (500ms, 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Publish the message this many times (`{{seq}}` numbers them).
    #[arg(long, default_value_t = 1)]
    count: u64,
}

/// The input's bodies: one, or one per line.
fn bodies(args: &PubArgs) -> Result<Vec<Vec<u8>>, Error> {
    let input = match (&args.body, args.file.as_deref()) {
        (Some(body), _) => body.clone().into_bytes(),
        (None, Some(path)) if path != "-" => {
            std::fs::read(path).map_err(|e| Error::other(format!("cannot read {path:?}: {e}")))?
        }
        (None, _) => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .map_err(|e| Error::other(format!("cannot read standard input: {e}")))?;
            input
        }
    };
    Ok(if args.lines {
        input
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    } else {
        vec![input]
    })
}

/// The attributes `-H key:value` gives.
fn headers(args: &PubArgs) -> Result<Vec<(String, String)>, Error> {
    args.headers
        .iter()
        .map(|h| match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(Error::other(format!("-H {h:?}: an attribute is key:value"))),
        })
        .collect()
}

/// `text` with every `{{seq}}` replaced by `seq`.
fn numbered(text: &[u8], seq: u64) -> Vec<u8> {
    const MARK: &[u8] = b"{{seq}}";
    if !text.windows(MARK.len()).any(|w| w == MARK) {
        return text.to_vec();
    }
    let n = seq.to_string();
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(i) = rest.windows(MARK.len()).position(|w| w == MARK) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(n.as_bytes());
        rest = &rest[i + MARK.len()..];
    }
    out.extend_from_slice(rest);
    out
}

pub(crate) async fn run(args: PubArgs) -> Result<(), Error> {
    let bodies = bodies(&args)?;
    let headers = headers(&args)?;
    let topic = args.target.topic().await?;
    let ctx = Context::background();
    let mut published = 0u64;
    for _ in 0..args.count {
        for body in &bodies {
            published += 1;
            let seq = published;
            let mut writer = topic.new_writer(&ctx)?;
            for (key, value) in &headers {
                let value = String::from_utf8_lossy(&numbered(value.as_bytes(), seq)).into_owned();
                writer.attributes_mut().add(key, value);
            }
            if let Some(delay) = args.delay {
                writer.set_delay(delay);
            }
            writer.write_all(&numbered(body, seq)).await?;
            writer.close().await?;
        }
    }
    eprintln!(
        "published {published} message(s) to {}",
        args.target.shown()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn seq_is_replaced_everywhere() {
        assert_eq!(numbered(b"a {{seq}} b {{seq}}", 7), b"a 7 b 7");
        assert_eq!(numbered(b"none", 7), b"none");
    }
}

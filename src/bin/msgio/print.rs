//! How `sub` and `dlq` print a message: for people, as JSON lines, or the body alone.

use std::io::Write;

use bytes::Bytes;
use msgio::{Attributes, Context};

/// How to print messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// A header line, the attributes, a blank line, the body.
    Human,
    /// One JSON object per line.
    Json,
    /// The body alone, and a newline.
    Raw,
}

/// Writes one message to standard output, whole (messages printed from several tasks do
/// not interleave).
pub(crate) fn print(format: Format, n: u64, ctx: &Context, attributes: &Attributes, body: &Bytes) {
    let mut out = Vec::with_capacity(body.len() + 256);
    match format {
        Format::Raw => {
            out.extend_from_slice(body);
            out.push(b'\n');
        }
        Format::Json => {
            let mut line = serde_json::to_vec(&json(ctx, attributes, body)).unwrap_or_default();
            line.push(b'\n');
            out = line;
        }
        Format::Human => {
            let id = ctx
                .message_id()
                .map_or_else(|| "-".to_owned(), ToString::to_string);
            let source = ctx.source().unwrap_or("-");
            let _ = writeln!(
                out,
                "--- message {n} (id {id}, attempt {}, from {source})",
                ctx.attempt()
            );
            for (key, value) in attributes.iter() {
                let _ = writeln!(out, "{key}: {value}");
            }
            out.push(b'\n');
            match std::str::from_utf8(body) {
                Ok(text) => out.extend_from_slice(text.as_bytes()),
                Err(_) => {
                    let _ = write!(
                        out,
                        "({} bytes, not UTF-8; base64: {})",
                        body.len(),
                        base64(body)
                    );
                }
            }
            out.push(b'\n');
        }
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(&out);
    let _ = lock.flush();
}

/// A message as JSON: `id`, `attempt`, `source`, `attributes` (each key to its values, in
/// order), `body` (UTF-8 text, or base64 with `body_encoding: "base64"`).
pub(crate) fn json(ctx: &Context, attributes: &Attributes, body: &Bytes) -> serde_json::Value {
    let mut attrs = serde_json::Map::new();
    for (key, value) in attributes.iter() {
        let entry = attrs
            .entry(key.to_owned())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(value.into());
        }
    }
    let (body, encoding) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), "utf-8"),
        Err(_) => (base64(body), "base64"),
    };
    serde_json::json!({
        "id": ctx.message_id().map(ToString::to_string),
        "attempt": ctx.attempt(),
        "source": ctx.source(),
        "attributes": attrs,
        "body": body,
        "body_encoding": encoding,
    })
}

/// Standard base64 with padding.
pub(crate) fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_standard() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}

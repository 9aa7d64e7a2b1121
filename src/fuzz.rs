//! Entry points for the fuzz targets in `fuzz/`: every decoder of outside input, fed
//! arbitrary bytes. Built only with `--cfg fuzzing` (as `cargo fuzz` builds), never part
//! of the API. Each returns normally for any input; a panic, a hang or an allocation out of
//! proportion to the input is the bug the fuzzer looks for.

use crate::{Attributes, canonical_key};

/// The largest body a decoder may produce in a run (the decoders' size limit).
#[cfg_attr(not(any(feature = "base64", feature = "gzip")), allow(dead_code))]
const LIMIT: usize = 1 << 20;

/// `canonical_key` on the input as text, and a sequence of `Attributes` operations it
/// spells, checked against a simple model (a list of `(canonical key, value)` pairs).
pub fn attributes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let once = canonical_key(&text);
    assert_eq!(
        canonical_key(&once),
        once,
        "canonical_key is not idempotent"
    );
    let mut attrs = Attributes::new();
    let mut model: Vec<(String, String)> = Vec::new();
    // Operations: one byte of kind, then a key and a value, each up to a 0 byte.
    let mut parts = data.split(|b| *b == 0);
    while let (Some(op), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next()) {
        let key = String::from_utf8_lossy(key);
        let value = String::from_utf8_lossy(value);
        let canon = canonical_key(&key).into_owned();
        match op.first().copied().unwrap_or(0) % 4 {
            0 => {
                attrs.set(&*key, &*value);
                model.retain(|(k, _)| *k != canon);
                model.push((canon.clone(), value.into_owned()));
            }
            1 => {
                attrs.add(&*key, &*value);
                model.push((canon.clone(), value.into_owned()));
            }
            2 => {
                attrs.remove(&key);
                model.retain(|(k, _)| *k != canon);
            }
            _ => {
                let _ = attrs.clone().to_header_map();
            }
        }
        let expected: Vec<&str> = model
            .iter()
            .filter(|(k, _)| *k == canon)
            .map(|(_, v)| v.as_str())
            .collect();
        let got: Vec<&str> = attrs.get_all(&key).collect();
        assert_eq!(got, expected, "values of {key:?}");
    }
}

/// A Redis stream entry: the input split into fields at `0xff 0xfe` (one
/// `XREADGROUP` entry's field list), decoded as the server decodes it.
#[cfg(feature = "redis")]
pub fn redis_entry(data: &[u8]) {
    let mut fields = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(2).position(|w| w == [0xff, 0xfe]) {
        fields.push(redis::Value::BulkString(rest[..at].to_vec()));
        rest = &rest[at + 2..];
    }
    fields.push(redis::Value::BulkString(rest.to_vec()));
    let _ = crate::redis::fuzz_decode(fields);
}

/// AMQP basic properties as a broker sends them (a content header's property list),
/// parsed by lapin's parser, then decoded into attributes as the server decodes them.
#[cfg(feature = "amqp")]
pub fn amqp_properties(data: &[u8]) {
    if let Ok((_, props)) = lapin::protocol::basic::parse_properties(data) {
        crate::amqp::fuzz_decode(&props);
    }
}

/// What a NATS server sends on a pull connection: operations read off a buffer as they
/// would arrive, and each message's header block read into attributes.
#[cfg(feature = "nats")]
pub fn nats(data: &[u8]) {
    crate::nats::fuzz_read(data);
}

/// A base64 body, decoded by the receiver half of the codec.
#[cfg(feature = "base64")]
pub fn base64(data: &[u8]) {
    use crate::Body;
    use bytes::Bytes;
    use futures::executor::block_on;
    let mut body = Body::from_reader(crate::decorators::base64::Base64Decoder::new(Body::from(
        Bytes::copy_from_slice(data),
    )));
    if let Ok(out) = block_on(body.read_to_bytes(LIMIT)) {
        // Base64 only shrinks what it decodes.
        assert!(out.len() <= data.len());
    }
}

/// A compressed body (the first byte picks gzip, zstd or lz4), decompressed by the
/// receiver half of its codec, which must stop at its size limit.
#[cfg(all(feature = "gzip", feature = "zstd", feature = "lz4"))]
pub fn decompress(data: &[u8]) {
    use crate::decorators::{gzip, lz4, zstd};
    use crate::{Context, Error, Message, Receiver, ReceiverFunc};
    use bytes::Bytes;
    use futures::executor::block_on;
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let mut msg = Message::new(Bytes::copy_from_slice(body));
    let read = ReceiverFunc::new(|_: Context, mut msg: Message| async move {
        // The codec bounds what it decodes; read past the limit to see that it does.
        let out = msg.body.read_to_bytes(LIMIT * 4).await?;
        assert!(
            out.len() <= LIMIT,
            "decoded {} bytes past the limit",
            out.len()
        );
        Ok::<(), Error>(())
    });
    let ctx = Context::background();
    let limit = LIMIT as u64;
    msg.attributes.set(
        "Content-Encoding",
        ["gzip", "zstd", "lz4"][usize::from(which % 3)],
    );
    let result = match which % 3 {
        0 => block_on(
            gzip::receiver(read)
                .max_decoded_size(limit)
                .receive(ctx, msg),
        ),
        1 => block_on(
            zstd::receiver(read)
                .max_decoded_size(limit)
                .receive(ctx, msg),
        ),
        _ => block_on(
            lz4::receiver(read)
                .max_decoded_size(limit)
                .receive(ctx, msg),
        ),
    };
    if let Err(e) = result {
        assert!(
            e.is_reject(),
            "a body that fails to decode is rejected: {e:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    /// Every committed seed of `target`, through `run`.
    fn seeds(target: &str, run: fn(&[u8])) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            run(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
        run(b"");
    }

    #[test]
    fn attributes() {
        seeds("attributes", super::attributes);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_entry() {
        seeds("redis_entry", super::redis_entry);
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn amqp_properties() {
        seeds("amqp_properties", super::amqp_properties);
    }

    #[cfg(feature = "nats")]
    #[test]
    fn nats() {
        seeds("nats", super::nats);
    }

    #[cfg(feature = "base64")]
    #[test]
    fn base64() {
        seeds("base64", super::base64);
    }

    #[cfg(all(feature = "gzip", feature = "zstd", feature = "lz4"))]
    #[test]
    fn decompress() {
        seeds("decompress", super::decompress);
    }
}

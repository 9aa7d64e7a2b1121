//! The NATS client protocol, as far as a pull consumer needs it: server operations read
//! from a buffer, header blocks read leniently and in wire order, JetStream ack reply
//! subjects.
//!
//! This is outside input: a message's header block is whatever its publisher wrote, and
//! the server stores and delivers it unchecked. A header block msgio cannot read is
//! reported as a problem of that one message (it is dead-lettered with its raw bytes),
//! never a reason to drop the connection; only a protocol line the server itself got
//! wrong ends it.

use bytes::{Buf, Bytes, BytesMut};

/// The longest control line accepted (a subject is at most a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

/// One operation the server sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerOp {
    /// `MSG` or `HMSG`: a message on a subscription.
    Msg(Msg),
    Ping,
    Pong,
    Ok,
    /// `-ERR`, with the server's text.
    Err(String),
    /// `INFO`, with its JSON.
    Info(Bytes),
}

/// A message as it came: the header block (for `HMSG`) and the payload, unparsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) subject: String,
    pub(crate) sid: u64,
    pub(crate) reply: Option<String>,
    pub(crate) headers: Option<Bytes>,
    pub(crate) payload: Bytes,
}

/// The server broke the protocol: the connection cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub(crate) String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NATS protocol error: {}", self.0)
    }
}

/// Takes the next whole operation off the front of `buf`, `None` when it has not all
/// arrived yet. A message may be at most `max_size` bytes (headers and payload).
///
/// # Errors
///
/// A line the protocol does not allow, or a message larger than `max_size`.
pub(crate) fn parse_op(
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<ServerOp>, ProtocolError> {
    let Some(eol) = find_crlf(buf) else {
        if buf.len() > MAX_LINE {
            return Err(ProtocolError(format!(
                "a control line longer than {MAX_LINE} bytes"
            )));
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let (verb, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let op = match verb.to_ascii_uppercase().as_slice() {
        b"MSG" | b"HMSG" => {
            let with_headers = verb.len() == 4;
            let args = std::str::from_utf8(args)
                .map_err(|_| ProtocolError("a message line that is not UTF-8".into()))?;
            let head = MsgHead::parse(args, with_headers)?;
            if head.total > max_size {
                return Err(ProtocolError(format!(
                    "a message of {} bytes, over the limit of {max_size}",
                    head.total
                )));
            }
            // The line, the message and its closing CRLF.
            let needed = eol + 2 + head.total + 2;
            if buf.len() < needed {
                buf.reserve(needed - buf.len());
                return Ok(None);
            }
            buf.advance(eol + 2);
            let mut body = buf.split_to(head.total).freeze();
            if &buf[..2] != b"\r\n" {
                return Err(ProtocolError("a message not followed by CRLF".into()));
            }
            buf.advance(2);
            let headers = head.header_len.map(|n| body.split_to(n));
            return Ok(Some(ServerOp::Msg(Msg {
                subject: head.subject,
                sid: head.sid,
                reply: head.reply,
                headers,
                payload: body,
            })));
        }
        b"PING" => ServerOp::Ping,
        b"PONG" => ServerOp::Pong,
        b"+OK" => ServerOp::Ok,
        b"-ERR" => ServerOp::Err(
            String::from_utf8_lossy(args)
                .trim()
                .trim_matches('\'')
                .to_owned(),
        ),
        b"INFO" => ServerOp::Info(Bytes::copy_from_slice(args)),
        _ => {
            return Err(ProtocolError(format!(
                "an unknown operation {:?}",
                String::from_utf8_lossy(&line[..line.len().min(32)])
            )));
        }
    };
    buf.advance(eol + 2);
    Ok(Some(op))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// `MSG <subject> <sid> [reply] <size>` or `HMSG <subject> <sid> [reply] <hdr size> <size>`.
struct MsgHead {
    subject: String,
    sid: u64,
    reply: Option<String>,
    header_len: Option<usize>,
    total: usize,
}

impl MsgHead {
    fn parse(args: &str, with_headers: bool) -> Result<Self, ProtocolError> {
        let parts: Vec<&str> = args.split_ascii_whitespace().collect();
        let sizes = if with_headers { 2 } else { 1 };
        if parts.len() != 2 + sizes && parts.len() != 3 + sizes {
            return Err(ProtocolError(format!("a message line {args:?}")));
        }
        let number = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| ProtocolError(format!("a message line {args:?}")))
        };
        let total = number(parts[parts.len() - 1])?;
        let header_len = if with_headers {
            let n = number(parts[parts.len() - 2])?;
            if n > total {
                return Err(ProtocolError(format!(
                    "a message line {args:?}: headers longer than the message"
                )));
            }
            Some(n)
        } else {
            None
        };
        Ok(MsgHead {
            subject: parts[0].to_owned(),
            sid: parts[1]
                .parse()
                .map_err(|_| ProtocolError(format!("a message line {args:?}")))?,
            reply: (parts.len() == 3 + sizes).then(|| parts[2].to_owned()),
            header_len,
            total,
        })
    }
}

/// A header block, read leniently.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderBlock {
    /// The status code of the version line (`NATS/1.0 408 Request Timeout`), if any.
    pub(crate) status: Option<u16>,
    /// The description after the status code.
    pub(crate) description: String,
    /// The headers in the order they came, values trimmed, continuation lines joined.
    pub(crate) entries: Vec<(String, String)>,
    /// Why the block is not what the protocol allows, when it is not: the entries then
    /// hold what could be read.
    pub(crate) problem: Option<String>,
}

impl HeaderBlock {
    /// The first value of `name` (compared without case).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a header block: `NATS/1.0[ <status>[ <description>]]` then `Name: value` lines.
///
/// Never fails: what breaks the protocol (bytes that are not UTF-8, no version line, a
/// line without a colon, an empty name) is named in [`HeaderBlock::problem`], and the
/// lines that could be read are kept.
pub(crate) fn parse_headers(block: &[u8]) -> HeaderBlock {
    let mut out = HeaderBlock::default();
    let problem = |out: &mut HeaderBlock, why: String| {
        if out.problem.is_none() {
            out.problem = Some(why);
        }
    };
    let text = match std::str::from_utf8(block) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(e) => {
            problem(
                &mut out,
                format!(
                    "the header block is not UTF-8 (at byte {})",
                    e.valid_up_to()
                ),
            );
            String::from_utf8_lossy(block)
        }
    };
    if text.is_empty() {
        problem(&mut out, "an empty header block".into());
        return out;
    }
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    match lines.next() {
        Some(version) if version.starts_with("NATS/1.0") => {
            let rest = version["NATS/1.0".len()..].trim();
            if !rest.is_empty() {
                let (code, description) = rest.split_once(' ').unwrap_or((rest, ""));
                match code.parse::<u16>() {
                    Ok(code) => {
                        out.status = Some(code);
                        out.description = description.trim().to_owned();
                    }
                    Err(_) => problem(&mut out, format!("a version line {}", shorten(version))),
                }
            }
        }
        Some(other) => problem(
            &mut out,
            format!("no NATS/1.0 version line but {}", shorten(other)),
        ),
        None => problem(&mut out, "an empty header block".into()),
    }
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match out.entries.last_mut() {
                Some((_, value)) => {
                    let more = line.trim();
                    if !more.is_empty() {
                        if !value.is_empty() {
                            value.push(' ');
                        }
                        value.push_str(more);
                    }
                }
                None => problem(
                    &mut out,
                    format!(
                        "a continuation line {} with no header before it",
                        shorten(line)
                    ),
                ),
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            problem(
                &mut out,
                format!("a header line without a colon: {}", shorten(line)),
            );
            continue;
        };
        if name.trim().is_empty() {
            problem(
                &mut out,
                format!("a header line with an empty name: {}", shorten(line)),
            );
            continue;
        }
        out.entries
            .push((name.trim().to_owned(), value.trim().to_owned()));
    }
    out
}

/// `s` quoted, cut to 64 characters: for a reason that names a bad line.
fn shorten(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// What a JetStream ack subject says of the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckInfo {
    /// Which delivery of the message this is, from 1.
    pub(crate) delivered: u64,
    /// The message's sequence in its stream.
    pub(crate) stream_seq: u64,
}

/// Reads `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or the longer form with a domain and an account hash before the stream (ADR-15).
pub(crate) fn ack_info(reply: &str) -> Option<AckInfo> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let first = match tokens.len() {
        7 => 2,
        n if n >= 9 => 4,
        _ => return None,
    };
    Some(AckInfo {
        delivered: tokens[first].parse().ok()?,
        stream_seq: tokens[first + 1].parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(input: &[u8]) -> Vec<ServerOp> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(op) = parse_op(&mut buf, 1 << 20).unwrap() {
            out.push(op);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    #[test]
    fn control_operations() {
        assert_eq!(
            ops(b"PING\r\nPONG\r\n+OK\r\n-ERR 'Authorization Violation'\r\nINFO {\"a\":1}\r\n"),
            [
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Err("Authorization Violation".into()),
                ServerOp::Info(Bytes::from_static(b"{\"a\":1}")),
            ]
        );
    }

    #[test]
    fn messages_with_and_without_headers_and_reply() {
        let got = ops(
            b"MSG a.b 7 5\r\nhello\r\nHMSG in 1 $JS.ACK.S.C.1.2.3.4.0 18 21\r\nNATS/1.0\r\nK: v\r\n\r\nabc\r\n",
        );
        assert_eq!(
            got[0],
            ServerOp::Msg(Msg {
                subject: "a.b".into(),
                sid: 7,
                reply: None,
                headers: None,
                payload: Bytes::from_static(b"hello"),
            })
        );
        let ServerOp::Msg(m) = &got[1] else { panic!() };
        assert_eq!(m.reply.as_deref(), Some("$JS.ACK.S.C.1.2.3.4.0"));
        assert_eq!(m.headers.as_deref(), Some(&b"NATS/1.0\r\nK: v\r\n\r\n"[..]));
        assert_eq!(m.payload, "abc");
    }

    #[test]
    fn a_message_split_across_reads_waits_for_the_rest() {
        let whole = b"HMSG in 1 12 15\r\nNATS/1.0\r\n\r\nxyz\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(parse_op(&mut buf, 100).unwrap(), None, "cut at {cut}");
            buf.extend_from_slice(&whole[cut..]);
            assert!(matches!(
                parse_op(&mut buf, 100).unwrap(),
                Some(ServerOp::Msg(_))
            ));
        }
    }

    #[test]
    fn what_the_server_cannot_send_ends_the_connection() {
        for bad in [
            &b"BOGUS\r\n"[..],
            b"MSG a\r\n",
            b"MSG a b 3\r\n",
            b"HMSG a 1 9 3\r\n",
            b"MSG a 1 99999\r\n",
            b"MSG a 1 3\r\nabcXX",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                parse_op(&mut buf, 1000).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = BytesMut::from(&vec![b'x'; MAX_LINE + 1][..]);
        assert!(parse_op(&mut long, 1000).is_err());
    }

    #[test]
    fn headers_keep_wire_order_across_cases() {
        let block = parse_headers(
            b"NATS/1.0\r\nx-multi: 1\r\nX-MULTI: 2\r\nX-Multi:3\r\nOther:  spaced  \r\n\r\n",
        );
        assert_eq!(block.problem, None);
        assert_eq!(
            block.entries,
            [
                ("x-multi".into(), "1".into()),
                ("X-MULTI".into(), "2".into()),
                ("X-Multi".into(), "3".into()),
                ("Other".into(), "spaced".into()),
            ]
        );
    }

    #[test]
    fn status_lines_are_read() {
        let block =
            parse_headers(b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 5\r\n\r\n");
        assert_eq!(block.status, Some(408));
        assert_eq!(block.description, "Request Timeout");
        assert_eq!(block.get("nats-pending-messages"), Some("5"));
        assert_eq!(parse_headers(b"NATS/1.0 100\r\n\r\n").status, Some(100));
    }

    #[test]
    fn a_block_the_protocol_does_not_allow_is_a_problem_not_an_error() {
        for (block, says) in [
            (&b"NATS/1.0\r\nK: \xff\xfe\r\n\r\n"[..], "not UTF-8"),
            (
                b"NATS/1.0\r\nno colon here\r\nK: v\r\n\r\n",
                "without a colon",
            ),
            (b"HTTP/1.1\r\nK: v\r\n\r\n", "version line"),
            (b"NATS/1.0\r\n: v\r\n\r\n", "empty name"),
            (b"", "empty header block"),
        ] {
            let parsed = parse_headers(block);
            let problem = parsed.problem.clone().unwrap_or_default();
            assert!(problem.contains(says), "{problem:?} should say {says}");
        }
        // What could be read is kept.
        let parsed = parse_headers(b"NATS/1.0\r\nno colon\r\nK: v\r\n\r\n");
        assert_eq!(parsed.entries, [("K".into(), "v".into())]);
    }

    #[test]
    fn continuation_lines_join_the_value_before() {
        let block = parse_headers(b"NATS/1.0\r\nK: a\r\n  b\r\n\tc\r\n\r\n");
        assert_eq!(block.entries, [("K".into(), "a b c".into())]);
        assert_eq!(block.problem, None);
    }

    #[test]
    fn ack_subjects_in_both_forms() {
        assert_eq!(
            ack_info("$JS.ACK.ORDERS.billing.3.42.40.1700000000000000000.7"),
            Some(AckInfo {
                delivered: 3,
                stream_seq: 42
            })
        );
        assert_eq!(
            ack_info("$JS.ACK.dom.ACCHASH.ORDERS.billing.2.9.8.1700000000000000000.0.tok"),
            Some(AckInfo {
                delivered: 2,
                stream_seq: 9
            })
        );
        assert_eq!(ack_info("$JS.ACK.a.b"), None);
        assert_eq!(ack_info("_INBOX.x"), None);
        assert_eq!(ack_info("$JS.ACK.S.C.x.42.40.1.7"), None);
    }
}

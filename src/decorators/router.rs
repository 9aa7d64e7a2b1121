//! Routing on an attribute's value.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::Either;

use crate::attributes::same_bytes;
use crate::{BoxReceiver, Context, Error, Message, Receiver, canonical_key};

/// Dispatches each message to a receiver chosen by one attribute's value: an exact value or
/// a glob (`*` any run of characters, `?` one character), tried in the order added, then a
/// fallback. A message no route takes is rejected with a reason naming the value. Clones
/// share the routes.
///
/// ```
/// use msgio::decorators::Router;
/// use msgio::{Context, Message, Receiver, ReceiverFunc};
///
/// # futures::executor::block_on(async {
/// let router = Router::new("Type")
///     .route("order.created", ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
///     .route("order.*", ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }));
///
/// let mut msg = Message::new("{}");
/// msg.attributes.set("Type", "invoice.paid");
/// let err = router.receive(Context::background(), msg).await.unwrap_err();
/// assert!(err.is_reject());
/// assert!(err.to_string().contains("\"invoice.paid\""));
/// # });
/// ```
#[derive(Clone)]
pub struct Router {
    inner: Arc<Routes>,
}

#[derive(Clone)]
struct Routes {
    key: String,
    routes: Vec<(Pattern, BoxReceiver)>,
    fallback: Option<BoxReceiver>,
}

/// A route's pattern, sorted out once when the route is added: most are a plain value or a
/// prefix and a final `*` (`order.*`), matched without the general glob.
#[derive(Clone)]
struct Pattern {
    text: String,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// No wildcard.
    Exact,
    /// The first `n` bytes, then a `*` that ends the pattern (the only wildcard).
    Prefix(usize),
    Glob,
}

impl Pattern {
    fn new(text: String) -> Self {
        let kind = match text.find(['*', '?']) {
            None => Kind::Exact,
            Some(n) if n + 1 == text.len() && text.ends_with('*') => Kind::Prefix(n),
            Some(_) => Kind::Glob,
        };
        Pattern { text, kind }
    }

    /// Whether the value's bytes match: a plain value or a prefix compares bytes, so that
    /// only a glob needs the value as text.
    fn matches(&self, value: &[u8]) -> bool {
        match self.kind {
            Kind::Exact => same_bytes(self.text.as_bytes(), value),
            Kind::Prefix(n) => match (value.get(..n), self.text.as_bytes().get(..n)) {
                (Some(start), Some(prefix)) => same_bytes(start, prefix),
                _ => false,
            },
            Kind::Glob => std::str::from_utf8(value).is_ok_and(|v| glob_match(&self.text, v)),
        }
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("key", &self.inner.key)
            .field(
                "routes",
                &self
                    .inner
                    .routes
                    .iter()
                    .map(|(p, _)| &p.text)
                    .collect::<Vec<_>>(),
            )
            .field("fallback", &self.inner.fallback.is_some())
            .finish()
    }
}

impl Router {
    /// A router on the attribute `key`, with no routes yet.
    pub fn new(key: impl AsRef<str>) -> Self {
        Router {
            inner: Arc::new(Routes {
                key: canonical_key(key.as_ref()).into_owned(),
                routes: Vec::new(),
                fallback: None,
            }),
        }
    }

    fn routes_mut(&mut self) -> &mut Routes {
        // A clone keeps the routes it had; this router gets its own copy.
        Arc::make_mut(&mut self.inner)
    }

    /// Sends messages whose attribute matches `pattern` to `receiver`.
    pub fn route<R: Receiver + 'static>(mut self, pattern: impl Into<String>, receiver: R) -> Self {
        self.routes_mut()
            .routes
            .push((Pattern::new(pattern.into()), BoxReceiver::new(receiver)));
        self
    }

    /// Sends messages no route takes (including those without the attribute) to
    /// `receiver`.
    pub fn fallback<R: Receiver + 'static>(mut self, receiver: R) -> Self {
        self.routes_mut().fallback = Some(BoxReceiver::new(receiver));
        self
    }

    fn pick(&self, value: Option<&[u8]>) -> Option<&BoxReceiver> {
        let routes = &*self.inner;
        value
            .and_then(|v| {
                routes
                    .routes
                    .iter()
                    .find(|(pattern, _)| pattern.matches(v))
                    .map(|(_, r)| r)
            })
            .or(routes.fallback.as_ref())
    }
}

impl Receiver for Router {
    /// The chosen receiver's (boxed) future itself, not an `async fn` around it: the
    /// message and context move once, into that future.
    fn receive(
        &self,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let value = msg.attributes.get_canonical_bytes(&self.inner.key);
        match self.pick(value) {
            Some(receiver) => Either::Left(receiver.receive(ctx, msg)),
            None => Either::Right(std::future::ready(Err(Error::reject(
                match value.map(String::from_utf8_lossy) {
                    Some(v) => format!("no route for {} {v:?}", self.inner.key),
                    None => format!("no route: the message has no {} attribute", self.inner.key),
                },
            )))),
        }
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (also none)
/// and `?` exactly one.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return pattern == text;
    }
    if pattern.contains('?') && !text.is_ascii() {
        // `?` is one character: compare characters, not bytes.
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        return glob(&p, &t, '*', '?');
    }
    glob(pattern.as_bytes(), text.as_bytes(), b'*', b'?')
}

/// Wildcard matching with one backtrack point (the last `*`), linear in practice.
fn glob<T: PartialEq + Copy>(p: &[T], t: &[T], star: T, one: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in the text it started matching.
    let mut last_star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star {
            last_star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = last_star {
            // Let the last `*` take one more item.
            pi = sp + 1;
            ti = st + 1;
            last_star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == star)
}

#[cfg(test)]
mod tests {
    use super::{Pattern, glob_match};

    /// A pattern sorted out as a plain value or a prefix matches as the glob does.
    #[test]
    fn patterns_match_as_their_glob() {
        let patterns = [
            "order.*",
            "order.created",
            "*",
            "",
            "a*",
            "a**",
            "*a",
            "a?*",
            "é*",
            "a*b",
        ];
        let texts = [
            "",
            "a",
            "ab",
            "order.",
            "order.created",
            "orders",
            "é",
            "éa",
            "a*",
        ];
        for p in patterns {
            for t in texts {
                assert_eq!(
                    Pattern::new(p.to_owned()).matches(t.as_bytes()),
                    glob_match(p, t),
                    "pattern {p:?} on {t:?}"
                );
            }
        }
    }

    #[test]
    fn globs() {
        for (p, t) in [
            ("order.*", "order.created"),
            ("order.*", "order."),
            ("*", ""),
            ("*.created", "order.created"),
            ("o?der.*", "order.x"),
            ("a*b*c", "a-b-b-c"),
            ("exact", "exact"),
            ("**", "x"),
            ("caf?.*", "café.menu"),
            ("*é", "café"),
        ] {
            assert!(glob_match(p, t), "{p} should match {t}");
        }
        for (p, t) in [
            ("order.*", "orders.created"),
            ("order.*", "order"),
            ("exact", "exactly"),
            ("?", ""),
            ("a*b*c", "a-b-b-d"),
        ] {
            assert!(!glob_match(p, t), "{p} should not match {t}");
        }
    }
}

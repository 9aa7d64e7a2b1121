//! A transport URL taken apart: scheme, host, path and query parameters, with its
//! credentials kept out of everything it shows.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;
use crate::redact::{self, percent_decode};

/// A URL naming a transport and a destination on it:
/// `scheme://[user[:password]@]host[:port][/path][?name=value&...]`.
///
/// `Display` and `Debug` show it with its credentials replaced by `***`; only
/// [`connection_url`](Url::connection_url) gives them back, for handing to a client.
///
/// ```
/// use msgio::url::Url;
///
/// let url = Url::parse("redis://app:s3cret@127.0.0.1:6379/orders?group=billing")?;
/// assert_eq!(url.scheme(), "redis");
/// assert_eq!(url.host(), "127.0.0.1:6379");
/// assert_eq!(url.path(), "orders");
/// assert_eq!(url.to_string(), "redis://app:***@127.0.0.1:6379/orders?group=billing");
///
/// let mut query = url.query();
/// assert_eq!(query.take("group")?, Some("billing"));
/// query.finish()?; // every parameter was understood
/// # Ok::<(), msgio::Error>(())
/// ```
#[derive(Clone)]
pub struct Url {
    shown: String,
    scheme: String,
    /// `user[:password]@`, as written.
    userinfo: Option<String>,
    host: String,
    path: String,
    query: Vec<(String, String)>,
}

impl Url {
    /// Takes `url` apart. The scheme is lower-cased; the path (without its leading `/`)
    /// and the query's names and values are percent-decoded.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (field `url`) when it is not `scheme://...`, when the user
    /// part has an unencoded `/`, `?`, `#` or `@`, or when an escape is not valid UTF-8.
    pub fn parse(url: &str) -> Result<Url, Error> {
        let shown = redact::url(url);
        let bad = |why: &str| Error::invalid_config("url", format!("{shown}: {why}"));
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(bad("not a URL of the form scheme://host/path"));
        };
        if !valid_scheme(scheme) {
            return Err(bad("the scheme is not a URL scheme"));
        }
        // The user part comes off as the transports take it off (an '@' after the host is
        // refused); what is left has none.
        let credentials = redact::Credentials::split("url", url)?;
        let rest = &credentials.bare[scheme.len() + 3..];
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (host, rest) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let decode = |part: &str, what: &str| {
            percent_decode(&part.replace('+', " "))
                .ok_or_else(|| bad(&format!("{what} is not valid percent-encoded UTF-8")))
        };
        let path = percent_decode(path.strip_prefix('/').unwrap_or(path))
            .ok_or_else(|| bad("the path is not valid percent-encoded UTF-8"))?;
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name, "a parameter name")?;
            let value = decode(value, &format!("the value of {name:?}"))?;
            pairs.push((name, value));
        }
        Ok(Url {
            shown,
            scheme: scheme.to_ascii_lowercase(),
            userinfo: credentials.user_part().map(str::to_owned),
            host: host.to_owned(),
            path,
            query: pairs,
        })
    }

    /// The scheme, lower-cased (`redis`).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host and port as written, without credentials (`127.0.0.1:6379`; for `mem`, the
    /// queue's name).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The path without its leading `/`, percent-decoded (`orders`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query parameters, to take one by one and [`finish`](Query::finish).
    pub fn query(&self) -> Query<'_> {
        Query {
            url: self,
            taken: vec![false; self.query.len()],
        }
    }

    /// `scheme://[user[:password]@]host[/path]`: the URL a client connects with, credentials
    /// included and no query. Hand it to the client's connect, never to an error or a log
    /// line.
    pub fn connection_url(&self, path: &str) -> String {
        let mut url = format!("{}://", self.scheme);
        if let Some(userinfo) = &self.userinfo {
            url.push_str(userinfo);
            url.push('@');
        }
        url.push_str(&self.host);
        if !path.is_empty() {
            url.push('/');
            url.push_str(path);
        }
        url
    }

    /// An [`Error::InvalidConfig`] for `field` whose reason names this URL (without its
    /// credentials): for an opener refusing what it was given.
    pub fn invalid(&self, field: &'static str, reason: impl fmt::Display) -> Error {
        Error::invalid_config(field, format!("{}: {reason}", self.shown))
    }
}

/// Whether `scheme` is a URL scheme: a letter, then letters, digits, `+`, `-` or `.`.
pub(super) fn valid_scheme(scheme: &str) -> bool {
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Url").field(&self.shown).finish()
    }
}

impl FromStr for Url {
    type Err = Error;

    fn from_str(s: &str) -> Result<Url, Error> {
        Url::parse(s)
    }
}

/// A URL's query parameters, taken by name: what is left untaken at
/// [`finish`](Query::finish) is an unknown parameter, and an error.
#[derive(Debug)]
pub struct Query<'a> {
    url: &'a Url,
    taken: Vec<bool>,
}

impl<'a> Query<'a> {
    /// The value of `name`, when the URL has it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming `name` when it is given more than once.
    pub fn take(&mut self, name: &'static str) -> Result<Option<&'a str>, Error> {
        let mut values = self.take_all(name).into_iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(self.url.invalid(name, "given more than once"));
        }
        Ok(first)
    }

    /// Every value of `name`, in order (for a parameter that may repeat).
    pub fn take_all(&mut self, name: &'static str) -> Vec<&'a str> {
        let url = self.url;
        let mut values = Vec::new();
        for (i, (key, value)) in url.query.iter().enumerate() {
            if key == name {
                self.taken[i] = true;
                values.push(value.as_str());
            }
        }
        values
    }

    /// The value of `name` parsed as a `T` (a number, say).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming `name` when it is repeated or does not parse.
    pub fn parse<T>(&mut self, name: &'static str) -> Result<Option<T>, Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.take(name)? {
            None => Ok(None),
            Some(value) => value
                .parse()
                .map(Some)
                .map_err(|e| self.url.invalid(name, format!("{value:?}: {e}"))),
        }
    }

    /// The value of `name` as a flag: `true` or `false` (`1`, `0`, `yes`, `no` too), and a
    /// bare `name` as `true`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming `name` for any other value.
    pub fn flag(&mut self, name: &'static str) -> Result<Option<bool>, Error> {
        match self.take(name)? {
            None => Ok(None),
            Some("" | "true" | "1" | "yes") => Ok(Some(true)),
            Some("false" | "0" | "no") => Ok(Some(false)),
            Some(other) => Err(self
                .url
                .invalid(name, format!("{other:?} is not true or false"))),
        }
    }

    /// The value of `name` as a duration: a whole number followed by `ms`, `s`, `m` or
    /// `h` (`500ms`, `30s`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming `name` for any other value.
    pub fn duration(&mut self, name: &'static str) -> Result<Option<Duration>, Error> {
        let Some(value) = self.take(name)? else {
            return Ok(None);
        };
        let split = value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len());
        let (number, unit) = value.split_at(split);
        let scale = match unit {
            "ms" => Some(1),
            "s" => Some(1_000),
            "m" => Some(60_000),
            "h" => Some(3_600_000),
            _ => None,
        };
        let millis = number
            .parse::<u64>()
            .ok()
            .zip(scale)
            .and_then(|(n, scale)| n.checked_mul(scale));
        match millis {
            Some(ms) => Ok(Some(Duration::from_millis(ms))),
            None => Err(self.url.invalid(
                name,
                format!("{value:?} is not a duration such as 500ms, 30s, 5m or 1h"),
            )),
        }
    }

    /// Succeeds when every parameter was taken.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (field `url`) naming the first parameter nobody took, and
    /// the parameters `known` to the opener.
    pub fn finish_known(self, known: &[&str]) -> Result<(), Error> {
        let url = self.url;
        match self.taken.iter().position(|taken| !taken) {
            None => Ok(()),
            Some(i) => {
                let name = &url.query[i].0;
                let known = if known.is_empty() {
                    "it takes none".to_owned()
                } else {
                    format!("it knows {}", known.join(", "))
                };
                Err(url.invalid(
                    "url",
                    format!(
                        "unknown parameter {name:?} for a {}:// URL here ({known})",
                        url.scheme
                    ),
                ))
            }
        }
    }

    /// Succeeds when every parameter was taken.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (field `url`) naming the first parameter nobody took.
    pub fn finish(self) -> Result<(), Error> {
        self.finish_known(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn parts_come_apart_and_decode() {
        let url =
            Url::parse("AMQP://u:p%40ss@host:5672/%2f?queue=a%20b&bind=x:k&bind=y:z").unwrap();
        assert_eq!(url.scheme(), "amqp");
        assert_eq!(url.host(), "host:5672");
        assert_eq!(url.path(), "/");
        assert_eq!(url.connection_url("%2f"), "amqp://u:p%40ss@host:5672/%2f");
        let mut q = url.query();
        assert_eq!(q.take("queue").unwrap(), Some("a b"));
        assert_eq!(q.take_all("bind"), ["x:k", "y:z"]);
        q.finish().unwrap();
        assert!(!format!("{url} {url:?}").contains("p%40ss"));
    }

    #[test]
    fn unknown_repeated_and_bad_parameters_are_named() {
        let url = Url::parse("redis://:hunter2@h/s?grop=g&block=2x&n=1&n=2").unwrap();
        let mut q = url.query();
        let e = reason(q.duration("block").unwrap_err());
        assert!(e.contains("block") && e.contains("2x"), "{e}");
        let e = reason(q.take("n").unwrap_err());
        assert!(e.contains("n: ") && e.contains("more than once"), "{e}");
        let e = reason(q.finish_known(&["group"]).unwrap_err());
        assert!(e.contains("\"grop\"") && e.contains("group"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn durations_flags_and_numbers() {
        let url = Url::parse("x://h?a=500ms&b=30s&c=5m&d=1h&e&f=no&g=12&h=-1").unwrap();
        let mut q = url.query();
        assert_eq!(q.duration("a").unwrap(), Some(Duration::from_millis(500)));
        assert_eq!(q.duration("b").unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(q.duration("c").unwrap(), Some(Duration::from_secs(300)));
        assert_eq!(q.duration("d").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(q.flag("e").unwrap(), Some(true));
        assert_eq!(q.flag("f").unwrap(), Some(false));
        assert_eq!(q.parse::<usize>("g").unwrap(), Some(12));
        assert!(q.parse::<usize>("h").is_err());
        assert_eq!(q.take("missing").unwrap(), None);
    }

    #[test]
    fn what_is_not_a_url_is_refused_without_its_secret() {
        for bad in ["no-scheme", "1x://h", "x://u:pa/ss@h", "x://h/%ff"] {
            let e = reason(Url::parse(bad).unwrap_err());
            assert!(!e.contains("pa/ss"), "{e}");
        }
    }
}

//! Broker URLs and their secrets: a URL without them for `Debug`, `Display`, errors and
//! logs, and the credentials taken out of it so that a transport hands them to its client
//! through the client's options, never inside a URL a dependency may log.
#![cfg_attr(not(any(feature = "_broker", feature = "testing")), allow(dead_code))]

use std::borrow::Cow;
use std::fmt;

use crate::Error;

/// `url` with whatever may be a secret replaced by `***`: the password
/// (`redis://user:***@host:6379/0`), or the whole user part when it has no password (it
/// may be a token: `nats://***@host`).
///
/// A password may hold `/`, `?`, `#` or `@` that were not percent-encoded, so everything
/// up to the last `@` after the scheme is taken as the user part: a URL with an `@` in its
/// path or query shows less than it could, never a secret.
pub(crate) fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // Not `scheme://...`: whatever comes before an `@` may be a password.
        return match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_owned(),
        };
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.split_once(':') {
        Some((user, _)) if !user.contains(['/', '?', '#', '@']) => {
            format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        _ => format!("{}***{}", &url[..scheme_end], &rest[at..]),
    }
}

/// A broker URL split into the URL without its credentials and the credentials, both
/// percent-decoded. `Debug` hides the password.
#[derive(Clone)]
#[cfg_attr(not(feature = "_broker"), allow(dead_code))]
pub(crate) struct Credentials {
    /// The URL without its user part (`scheme://host:port/path?query`).
    pub(crate) bare: String,
    /// The URL as it may be shown (see [`url`]).
    pub(crate) shown: String,
    /// The user name, when the URL names one (with or without a password).
    pub(crate) user: Option<String>,
    /// The password, when the URL has one (`user:password@`).
    pub(crate) password: Option<String>,
    /// The user part as written, for [`scrub`](Credentials::scrub).
    raw_secret: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.shown)
            .field("user", &self.user.as_ref().map(|_| "***"))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

#[cfg_attr(not(feature = "_broker"), allow(dead_code))]
impl Credentials {
    /// Splits `url` (`scheme://[user[:password]@]host...`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming `field` when `url` is not `scheme://...`, when its
    /// user part is not valid percent-encoding of UTF-8, or when an `@` comes after the
    /// host (a password holding `/`, `?` or `#` that was not percent-encoded); the error
    /// shows the URL without its secrets.
    pub(crate) fn split(field: &'static str, url: &str) -> Result<Self, Error> {
        let shown = self::url(url);
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return Err(Error::invalid_config(
                field,
                format!("{shown} is not a URL of the form scheme://host"),
            ));
        };
        let rest = &url[scheme_end..];
        // As a URL parser reads it: the authority ends at the first `/`, `?` or `#`, and
        // its last `@` ends the user part.
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let at = authority.rfind('@');
        let after_host = &rest[at.map_or(0, |at| at + 1)..];
        if after_host.contains('@') {
            return Err(Error::invalid_config(
                field,
                format!(
                    "{shown} has an '@' after its host: percent-encode a '/', '?', '#' or '@' in the user name or password (%2F, %3F, %23, %40)"
                ),
            ));
        }
        let Some(at) = at else {
            return Ok(Credentials {
                bare: url.to_owned(),
                shown,
                user: None,
                password: None,
                raw_secret: None,
            });
        };
        let userinfo = &rest[..at];
        let decode = |part: &str, what: &str| {
            percent_decode(part).ok_or_else(|| {
                Error::invalid_config(
                    field,
                    format!("{shown}: the {what} is not valid percent-encoded UTF-8"),
                )
            })
        };
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (
                decode(user, "user name")?,
                Some(decode(password, "password")?),
            ),
            None => (decode(userinfo, "user name")?, None),
        };
        Ok(Credentials {
            bare: format!("{}{}", &url[..scheme_end], &rest[at + 1..]),
            shown,
            user: (!user.is_empty() || password.is_some()).then_some(user),
            password,
            raw_secret: Some(userinfo.to_owned()),
        })
    }

    /// The user part as written (`user:password`, still percent-encoded), to put back
    /// into a URL handed to a client.
    pub(crate) fn user_part(&self) -> Option<&str> {
        self.raw_secret.as_deref()
    }

    /// `text` (an error a client gave) with every form of the secrets replaced by `***`:
    /// the user part as written, and the password and the user name (which may be a
    /// token) as decoded.
    #[cfg_attr(
        not(any(
            feature = "redis",
            feature = "nats",
            feature = "amqp",
            feature = "postgres"
        )),
        allow(dead_code)
    )]
    pub(crate) fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let secrets = [
            self.raw_secret.as_deref(),
            self.password.as_deref(),
            self.user.as_deref().filter(|_| self.password.is_none()),
        ];
        let mut text = Cow::Borrowed(text);
        for secret in secrets.into_iter().flatten().filter(|s| !s.is_empty()) {
            if text.contains(secret) {
                text = Cow::Owned(text.replace(secret, "***"));
            }
        }
        text
    }
}

/// `s` with its `%XX` escapes decoded, when that is UTF-8 and every escape is whole.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_hidden() {
        for (given, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            ("nats://T0KEN@host", "nats://***@host"),
            ("amqp:guest:s3cret@host", "***@host"),
            ("no-url-at-all", "no-url-at-all"),
            ("redis://u:p@ss@host/x", "redis://u:***@host/x"),
            // An unencoded '/', '?' or '#' in a password: still hidden.
            ("redis://u:pa/ss@host:6379", "redis://u:***@host:6379"),
            ("nats://u:pa?ss@host:4222", "nats://u:***@host:4222"),
            ("amqp://u:pa#ss@host/%2f", "amqp://u:***@host/%2f"),
            ("nats://to/ken@host", "nats://***@host"),
            // An '@' in a query hides more than it needs to, never less.
            ("redis://host/0?x=@y", "redis://***@y"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn credentials_come_out_decoded_and_the_rest_stays() {
        let c =
            Credentials::split("url", "amqp://guest:p%2F%3F%23%40ss@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(c.bare, "amqp://127.0.0.1:5672/%2f");
        assert_eq!(c.user.as_deref(), Some("guest"));
        assert_eq!(c.password.as_deref(), Some("p/?#@ss"));
        assert_eq!(c.shown, "amqp://guest:***@127.0.0.1:5672/%2f");
        assert!(!format!("{c:?}").contains("p/?#@ss"), "{c:?}");

        let token = Credentials::split("url", "nats://s3cr3t@127.0.0.1:4222").unwrap();
        assert_eq!(token.bare, "nats://127.0.0.1:4222");
        assert_eq!(token.user.as_deref(), Some("s3cr3t"));
        assert_eq!(token.password, None);
        assert_eq!(token.scrub("bad token s3cr3t"), "bad token ***");

        let none = Credentials::split("url", "redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(none.bare, "redis://127.0.0.1:6379/2");
        assert_eq!((none.user, none.password), (None, None));

        let only_password = Credentials::split("url", "redis://:pw@h").unwrap();
        assert_eq!(only_password.user.as_deref(), Some(""));
        assert_eq!(only_password.password.as_deref(), Some("pw"));
    }

    #[test]
    fn an_unencoded_password_is_refused_without_showing_it() {
        for (url, secret) in [
            ("redis://u:pa/ss@host:6379", "pa/ss"),
            ("amqp://u:pa?ss@host/%2f", "pa?ss"),
            ("nats://u:pa#ss@host", "pa#ss"),
            ("redis://u:p@ss@host/x?y=@z", "p@ss"),
        ] {
            let err = Credentials::split("url", url).unwrap_err().to_string();
            assert!(!err.contains(secret), "{err}");
            assert!(err.contains("percent-encode"), "{err}");
        }
        let err = Credentials::split("url", "redis://u:%ff@host")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("percent-encoded UTF-8") && !err.contains("%ff"),
            "{err}"
        );
        let err = Credentials::split("url", "localhost:6379")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheme://host"), "{err}");
    }

    #[test]
    fn scrub_hides_every_form_of_the_password() {
        let c = Credentials::split("url", "amqp://guest:p%40ss@host/%2f").unwrap();
        let text = "failed guest:p%40ss@host, password p@ss";
        assert_eq!(c.scrub(text), "failed ***@host, password ***");
    }
}

//! Broker URLs without their secrets, for `Debug`, `Display` and logs.

/// `url` with any password replaced by `***` (`redis://user:***@host:6379/0`).
#[cfg_attr(
    not(any(
        feature = "redis",
        feature = "nats",
        feature = "amqp",
        feature = "testing"
    )),
    allow(dead_code)
)]
pub(crate) fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // Not `scheme://...`: whatever comes before an `@` may be a password.
        return match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_owned(),
        };
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    if !userinfo.contains(':') {
        return url.to_owned();
    }
    format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_hidden() {
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
            ("nats://user@host", "nats://user@host"),
            ("amqp:guest:s3cret@host", "***@host"),
            ("no-url-at-all", "no-url-at-all"),
            ("redis://u:p@ss@host/x?y=@z", "redis://u:***@host/x?y=@z"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(super::url(given), shown);
        }
    }
}

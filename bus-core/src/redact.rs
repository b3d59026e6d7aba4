//! Keeping credentials out of what the bus and its transports print: broker URLs in logs,
//! `Debug` output and error messages. Every transport redacts with these two functions, so a
//! URL form one of them learns to hide is hidden by all.

/// Schemes whose URL user, when it comes without a password, is a secret token
/// (`nats://token@host:4222`).
const TOKEN_SCHEMES: &[&str] = &["nats", "tls"];

/// A transport URL with its password (or NATS token) replaced by `***`.
///
/// Works on text that does not parse as a URL too: with `://`, the password of the user info
/// is hidden; without it, everything before an `@` is. Lists of servers
/// (`nats://u:p@a:4222,nats://u:p@b:4222`) lose every password.
///
/// ```
/// use bus_core::redact_url;
///
/// assert_eq!(
///     redact_url("amqp://app:s3cret@rabbit:5672/%2f"),
///     "amqp://app:***@rabbit:5672/%2f"
/// );
/// assert_eq!(redact_url("nats://t0ken@nats:4222"), "nats://***@nats:4222");
/// assert_eq!(redact_url("redis://redis:6379/0"), "redis://redis:6379/0");
/// ```
pub fn redact_url(url: &str) -> String {
    if url.contains("://") {
        return scrub_urls(url);
    }
    match url.rfind('@') {
        Some(at) => format!("***{}", &url[at..]),
        None => url.to_string(),
    }
}

/// `text` with the password of every `scheme://user:password@host` in it replaced by `***`,
/// and the token of every `nats://token@host` (or `tls://`).
///
/// For texts that may quote a URL, such as a client library's error message.
///
/// ```
/// use bus_core::scrub_urls;
///
/// assert_eq!(
///     scrub_urls("could not reach redis://:pw@redis:6379 (refused)"),
///     "could not reach redis://:***@redis:6379 (refused)"
/// );
/// ```
pub fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        let scheme = scheme_before(&head[..i]);
        out.push_str(head);
        let mut end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        // In a list of servers (`nats://a:4222,nats://b:4222`) the search stops inside the next
        // URL's `://`: the authority ends at the comma before that URL's scheme.
        if tail[end..].starts_with("//") && tail[..end].ends_with(':') {
            if let Some(comma) = tail[..end].rfind(',') {
                end = comma;
            }
        }
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None if TOKEN_SCHEMES.contains(&scheme.as_str()) && !userinfo.is_empty() => {
                        out.push_str("***")
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The scheme that ends `text` (what precedes a `://`), lower case.
fn scheme_before(text: &str) -> String {
    let start = text
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .map_or(0, |i| i + 1);
    text[start..].to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("amqp://app:s3cret@rabbit:5672/%2f"),
            "amqp://app:***@rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://app:p@ss@rabbit/vh"),
            "amqps://app:***@rabbit/vh"
        );
        assert_eq!(redact_url("amqp://rabbit:5672"), "amqp://rabbit:5672");
        assert_eq!(redact_url("amqp://user@rabbit"), "amqp://user@rabbit");
        assert_eq!(redact_url("app:s3cret@rabbit"), "***@rabbit");
        assert_eq!(redact_url("memory"), "memory");
    }

    #[test]
    fn every_url_in_a_text_is_scrubbed() {
        let text = r#"found string "amqp://a:one@h/v", and 'amqps://b:two@h2:1' too"#;
        let out = scrub_urls(text);
        assert!(!out.contains("one") && !out.contains("two"), "{out}");
        assert!(out.contains("amqp://a:***@h/v") && out.contains("amqps://b:***@h2:1"));
    }

    #[test]
    fn nats_and_redis_urls_lose_their_secrets() {
        assert_eq!(
            redact_url("nats://app:s3cret@nats:4222"),
            "nats://app:***@nats:4222"
        );
        assert_eq!(
            redact_url("tls://app:s3cret@nats:4222"),
            "tls://app:***@nats:4222"
        );
        // A user without a password is a token on NATS.
        assert_eq!(redact_url("nats://t0ken@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact_url("NATS://t0ken@nats:4222"), "NATS://***@nats:4222");
        assert_eq!(redact_url("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(
            redact_url("nats://a:one@n1:4222,nats://b:two@n2:4222, tls://t0ken@n3:4222"),
            "nats://a:***@n1:4222,nats://b:***@n2:4222, tls://***@n3:4222"
        );
        assert_eq!(
            redact_url("nats://a:o,ne@n1:4222,nats://n2:4222"),
            "nats://a:***@n1:4222,nats://n2:4222"
        );
        assert_eq!(
            redact_url("redis://:s3cret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            redact_url("redis://app:s3cret@redis:6379"),
            "redis://app:***@redis:6379"
        );
        assert_eq!(
            redact_url("rediss://:s3cret@redis:6380"),
            "rediss://:***@redis:6380"
        );
        assert_eq!(redact_url("redis://redis:6379/2"), "redis://redis:6379/2");
        // Only NATS reads a lone user as a token.
        assert_eq!(redact_url("redis://app@redis"), "redis://app@redis");
    }
}

//! Keeping credentials out of everything this crate prints: URLs, `Debug` output and errors.

/// A transport URL with its password replaced by `***`.
///
/// Works on text that does not parse as a URL too: with `://`, the password of the user info
/// is hidden; without it, everything before an `@` is.
pub(crate) fn redact_url(url: &str) -> String {
    if url.contains("://") {
        return scrub_urls(url);
    }
    match url.rfind('@') {
        Some(at) => format!("***{}", &url[at..]),
        None => url.to_string(),
    }
}

/// `text` with the password of every `scheme://user:password@host` in it replaced by `***`.
pub(crate) fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
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

/// A configuration error's text made safe to show: URL passwords and the given secrets
/// replaced by `***`, and source excerpts (the `  |` lines a TOML parse error quotes from the
/// file) dropped, since the quoted line may hold a password.
pub(crate) fn scrub_error(text: &str, secrets: &[String]) -> String {
    let kept: Vec<&str> = text.lines().filter(|line| !is_excerpt(line)).collect();
    let mut out = scrub_urls(&kept.join("\n"));
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// Whether a line of an error text quotes the source (`  |` or `12 | ...`).
pub(crate) fn is_excerpt(line: &str) -> bool {
    line.trim_start()
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start()
        .starts_with('|')
}

/// The password of a URL, percent-decoded, if it has one.
pub(crate) fn url_password(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url.trim()).ok()?;
    let password = parsed.password()?;
    let decoded = percent_decode(password);
    Some(decoded)
}

fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn error_excerpts_are_dropped() {
        let text = "TOML parse error at line 2, column 10\n  |\n2 | url = \"amqp://u:pw\n  |          ^\ninvalid basic string";
        let out = scrub_error(text, &["hunter2".into()]);
        assert_eq!(
            out,
            "TOML parse error at line 2, column 10\ninvalid basic string"
        );
        assert_eq!(
            scrub_error("it was hunter2", &["hunter2".into()]),
            "it was ***"
        );
    }

    #[test]
    fn passwords_are_decoded() {
        assert_eq!(url_password("amqp://u:p%40ss@h/").as_deref(), Some("p@ss"));
        assert_eq!(url_password("amqp://u@h/"), None);
    }
}

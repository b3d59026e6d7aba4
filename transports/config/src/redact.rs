//! Keeping credentials out of everything this crate prints: URLs, `Debug` output and errors.
//! URLs are redacted by [`bus_core::redact_url`] and [`bus_core::scrub_urls`], as in every
//! transport; what is here is particular to configuration sources.

use bus_core::scrub_urls;

/// Schemes whose URL user, when it comes without a password, is a secret token
/// (`nats://token@host:4222`), as [`bus_core::redact_url`] reads them.
const TOKEN_SCHEMES: &[&str] = &["nats", "tls"];

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

/// The secrets of a transport URL, or of each URL of a comma-separated list: passwords, and
/// NATS tokens, both as written and percent-decoded.
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let url = url.trim();
    let mut candidates = vec![url];
    if url.contains(',') {
        candidates.extend(url.split(',').map(str::trim));
    }
    let mut secrets = Vec::new();
    for candidate in candidates {
        let Ok(parsed) = url::Url::parse(candidate) else {
            continue;
        };
        let secret = match parsed.password() {
            Some(password) => password,
            None if TOKEN_SCHEMES.contains(&parsed.scheme()) => parsed.username(),
            None => continue,
        };
        for s in [percent_decode(secret), secret.to_string()] {
            if !s.is_empty() && !secrets.contains(&s) {
                secrets.push(s);
            }
        }
    }
    secrets
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
    fn secrets_are_found_decoded_and_as_written() {
        assert_eq!(url_secrets("amqp://u:p%40ss@h/"), ["p@ss", "p%40ss"]);
        assert!(url_secrets("amqp://u@h/").is_empty());
        assert_eq!(url_secrets("amqp://u:pa,ss@h/"), ["pa,ss"]);
        assert_eq!(url_secrets("redis://:pw@h:6379/1"), ["pw"]);
        assert_eq!(url_secrets("nats://t0ken@h:4222"), ["t0ken"]);
        assert_eq!(
            url_secrets("nats://a:one@n1:4222,nats://b:two@n2:4222"),
            ["one", "two"]
        );
        assert!(url_secrets("redis://app@h").is_empty());
        assert!(url_secrets("memory").is_empty());
    }
}

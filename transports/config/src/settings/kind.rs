//! [`TransportKind`]: which transport a [`TransportSettings::url`] names, and the checks that
//! the URL is well formed for it, made without connecting.

use bus_core::redact_url;

use super::TransportSettings;
use crate::error::{ConfigError, NOT_YET};

/// The kind of transport a [`TransportSettings::url`] names.
///
/// ```
/// use bus_transport_config::{TransportKind, TransportSettings};
/// assert_eq!(TransportSettings::default().kind().unwrap(), TransportKind::Memory);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// The embedded in-memory transport (one process only).
    Memory,
    /// RabbitMQ over AMQP 0-9-1 (`amqp://`).
    Amqp,
    /// RabbitMQ over AMQP 0-9-1 with TLS (`amqps://`).
    Amqps,
    /// NATS JetStream (`nats://`).
    Nats,
    /// NATS JetStream with TLS required (`tls://`, or a list of servers with one `tls://`).
    NatsTls,
    /// Redis Streams (`redis://`).
    Redis,
    /// Redis Streams over TLS (`rediss://`).
    RedisTls,
}

impl TransportSettings {
    /// The kind of transport [`TransportSettings::url`] names; an error for unknown or not yet
    /// supported schemes and malformed URLs.
    ///
    /// ```
    /// use bus_transport_config::{ConfigError, TransportKind, TransportSettings};
    ///
    /// let with = |url: &str| TransportSettings { url: url.into(), ..TransportSettings::default() };
    /// assert_eq!(with("memory").kind()?, TransportKind::Memory);
    /// assert_eq!(with("amqps://u:p@rabbit/vh").kind()?, TransportKind::Amqps);
    /// assert_eq!(with("nats://n1:4222,nats://n2:4222").kind()?, TransportKind::Nats);
    /// assert_eq!(with("tls://app:pw@nats.internal:4222").kind()?, TransportKind::NatsTls);
    /// assert_eq!(with("redis://:pw@127.0.0.1:6379/0").kind()?, TransportKind::Redis);
    /// assert_eq!(with("rediss://:pw@redis.internal:6380").kind()?, TransportKind::RedisTls);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn kind(&self) -> Result<TransportKind, ConfigError> {
        let url = self.url.trim();
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: redact_url(url),
            reason: reason.to_string(),
        };
        if url.is_empty() {
            return Err(invalid(
                "it is empty; use `memory` or a URL such as amqp://user:password@host:5672/vhost",
            ));
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None if url
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.')) =>
            {
                (url.to_ascii_lowercase(), "")
            }
            None => {
                return Err(invalid(
                    "expected `memory` or a URL such as amqp://user:password@host:5672/vhost",
                ))
            }
        };
        match scheme.as_str() {
            "memory" if rest.is_empty() => Ok(TransportKind::Memory),
            "memory" => Err(invalid(
                "the in-memory transport takes no address; use `memory`",
            )),
            "amqp" | "amqps" => {
                if !url.contains("://") {
                    return Err(invalid(
                        "expected a URL such as amqp://user:password@host:5672/vhost",
                    ));
                }
                parse_with_host(url).map_err(|reason| invalid(&reason))?;
                Ok(if scheme == "amqps" {
                    TransportKind::Amqps
                } else {
                    TransportKind::Amqp
                })
            }
            "nats" | "tls" => {
                if !url.contains("://") {
                    return Err(invalid("expected a URL such as nats://host:4222"));
                }
                // One server, or a comma-separated list; one `tls://` asks TLS of them all.
                let mut tls = false;
                for server in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let parsed = parse_with_host(server).map_err(|reason| invalid(&reason))?;
                    match parsed.scheme() {
                        "nats" => {}
                        "tls" => tls = true,
                        other => {
                            return Err(invalid(&format!(
                                "`{other}://` in a list of NATS servers; use nats:// or tls://"
                            )))
                        }
                    }
                }
                Ok(if tls {
                    TransportKind::NatsTls
                } else {
                    TransportKind::Nats
                })
            }
            "redis" | "rediss" => {
                if !url.contains("://") {
                    return Err(invalid("expected a URL such as redis://host:6379/0"));
                }
                let parsed = parse_with_host(url).map_err(|reason| invalid(&reason))?;
                let database = parsed.path().trim_start_matches('/');
                if !database.is_empty() && database.parse::<u32>().is_err() {
                    return Err(invalid(
                        "the path must be a database number, as in redis://host:6379/0",
                    ));
                }
                Ok(if scheme == "rediss" {
                    TransportKind::RedisTls
                } else {
                    TransportKind::Redis
                })
            }
            s if NOT_YET.iter().any(|(not_yet, _)| *not_yet == s) => {
                Err(ConfigError::NotSupportedYet { scheme })
            }
            _ => Err(ConfigError::UnknownScheme {
                scheme,
                url: redact_url(url),
            }),
        }
    }

    /// Whether the settings name the in-memory transport, which cannot connect processes.
    ///
    /// ```
    /// use bus_transport_config::TransportSettings;
    /// assert!(TransportSettings::default().is_memory());
    /// ```
    pub fn is_memory(&self) -> bool {
        matches!(self.kind(), Ok(TransportKind::Memory))
    }
}

/// A URL that parses and names a host; otherwise why not (texts without the URL, so without
/// its password).
fn parse_with_host(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL names no host".into());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use crate::tests::{with_url, SECRET};
    use crate::{ConfigError, TransportKind};

    #[test]
    fn unknown_schemes_list_the_supported_ones() {
        let e = with_url("kafka://broker:9092").kind().unwrap_err();
        assert!(
            matches!(e, ConfigError::UnknownScheme { ref scheme, .. } if scheme == "kafka"),
            "{e}"
        );
        let e = with_url("mqtt://u:secret@broker").kind().unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ConfigError::UnknownScheme { .. }), "{text}");
        assert!(
            text.contains("supported: memory, amqp, amqps, nats, tls, redis"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");

        for url in ["rediss://r:6380", "REDISS://:secret@r:6380/0"] {
            assert_eq!(
                with_url(url).kind().map_err(|e| e.to_string()),
                Ok(TransportKind::RedisTls)
            );
        }

        let e = with_url("rabbitmq").kind().unwrap_err();
        assert!(e
            .to_string()
            .contains("unknown transport scheme `rabbitmq`"));
    }

    #[test]
    fn memory_and_amqp_spellings() {
        for url in ["memory", " MEMORY ", "memory://"] {
            assert_eq!(
                with_url(url).kind().unwrap(),
                TransportKind::Memory,
                "{url}"
            );
        }
        assert!(with_url("memory://somewhere").kind().is_err());
        assert!(with_url("").kind().is_err());
        assert_eq!(
            with_url("AMQP://guest:guest@localhost").kind().unwrap(),
            TransportKind::Amqp
        );
        let e = with_url("amqp://").kind().unwrap_err();
        assert!(matches!(e, ConfigError::InvalidUrl { .. }), "{e}");
        let e = with_url("guest:hunter2@localhost:5672").kind().unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn nats_and_redis_spellings() {
        for (url, kind) in [
            ("nats://127.0.0.1:4222", TransportKind::Nats),
            (" NATS://app:pw@nats.internal ", TransportKind::Nats),
            ("nats://t0ken@nats.internal:4222", TransportKind::Nats),
            ("nats://n1:4222,nats://n2:4222", TransportKind::Nats),
            ("nats://n1:4222, nats://n2:4222,", TransportKind::Nats),
            ("tls://nats.internal:4222", TransportKind::NatsTls),
            ("nats://n1:4222,tls://n2:4222", TransportKind::NatsTls),
            ("redis://127.0.0.1:6379", TransportKind::Redis),
            ("redis://127.0.0.1:6379/", TransportKind::Redis),
            ("redis://:pw@127.0.0.1:6379/3", TransportKind::Redis),
            ("Redis://user:pw@redis.internal", TransportKind::Redis),
        ] {
            assert_eq!(with_url(url).kind().unwrap(), kind, "{url}");
        }
        for url in [
            "nats",
            "nats://",
            "tls://:4222",
            "nats://n1:4222,redis://n2:6379",
            "nats://n1:port",
            "redis",
            "redis://",
            "redis://127.0.0.1:6379/zero",
            "redis://127.0.0.1:6379/0/1",
        ] {
            let e = with_url(url).kind().unwrap_err();
            assert!(matches!(e, ConfigError::InvalidUrl { .. }), "{url}: {e}");
        }
        let e = with_url(&format!("redis://:{SECRET}@127.0.0.1:6379/zero"))
            .kind()
            .unwrap_err();
        assert!(!format!("{e} {e:?}").contains(SECRET), "{e}");
        assert!(e.to_string().contains("database number"), "{e}");
    }
}

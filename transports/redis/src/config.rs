//! Settings of the Redis transport, and the names of the keys it uses.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::RedisError;

/// How the keys of the transport are named. Every key starts with the prefix, so several
/// systems (or test runs) can share one Redis. The defaults, for prefix `bus`:
///
/// | what | key | type |
/// |---|---|---|
/// | declared endpoints (routing registry for commands) | `bus:endpoints` | set |
/// | subscribers of event `W` (fan-out registry) | `bus:subs:W` | set |
/// | input stream of endpoint `E` (consumer group `E`) | `bus:ep:E` | stream |
/// | error stream of `E` | `bus:ep:E:error` | stream |
/// | delayed messages of `E`, scored by due time (ms) | `bus:delayed:E` | sorted set |
///
/// For Redis Cluster every key of one system must live in one slot: use a hash tag as the
/// prefix, e.g. `{bus}`.
///
/// ```
/// use bus_transport_redis::Keys;
///
/// let keys = Keys::new("shop");
/// assert_eq!(keys.stream("billing"), "shop:ep:billing");
/// assert_eq!(keys.error_stream("billing"), "shop:ep:billing:error");
/// assert_eq!(keys.subscribers("sales.OrderPlaced"), "shop:subs:sales.OrderPlaced");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// The first part of every key.
    pub prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new("bus")
    }
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The set of declared endpoint names: a command to an endpoint missing here is unroutable.
    pub fn endpoints(&self) -> String {
        format!("{}:endpoints", self.prefix)
    }

    /// The set of endpoints subscribed to an event wire name.
    pub fn subscribers(&self, event: &str) -> String {
        format!("{}:subs:{event}", self.prefix)
    }

    /// The input stream of an endpoint.
    pub fn stream(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.stream_prefix())
    }

    /// What every input stream key starts with (the publish script appends endpoint names).
    pub(crate) fn stream_prefix(&self) -> String {
        format!("{}:ep:", self.prefix)
    }

    /// The error stream of an endpoint.
    pub fn error_stream(&self, endpoint: &str) -> String {
        format!("{}:ep:{endpoint}:error", self.prefix)
    }

    /// The sorted set holding an endpoint's delayed messages until they are due.
    pub fn delayed(&self, endpoint: &str) -> String {
        format!("{}:delayed:{endpoint}", self.prefix)
    }

    /// The consumer group reading an endpoint's stream: the endpoint's name.
    pub fn group(&self, endpoint: &str) -> String {
        endpoint.to_string()
    }
}

/// Configuration of [`crate::RedisTransport`].
///
/// The URL is `redis://[user][:password@]host[:port][/db]`. The password never appears in
/// `Debug` output, logs or errors.
///
/// ```
/// use std::time::Duration;
/// use bus_transport_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://app:s3cret@redis.internal:6379/0")
///     .consumer_name("billing")
///     .reclaim_idle(Duration::from_secs(60));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert_eq!(config.redacted_url(), "redis://app:***@redis.internal:6379/0");
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    /// Key names.
    pub keys: Keys,
    /// First part of the consumer names of this process (each subscription adds a unique
    /// suffix); shows in `XINFO CONSUMERS`. Helps tell services apart.
    pub consumer_name: String,
    /// Longest wait for one operation (send, ack, declare...), reconnecting included.
    pub operation_timeout: Duration,
    /// Longest wait to connect.
    pub connect_timeout: Duration,
    /// How long one `XREADGROUP` waits for new entries (`BLOCK`). Also bounds how late a due
    /// delayed message is moved to its stream, and how long a subscription takes to stop.
    pub block_timeout: Duration,
    /// A delivery unsettled for this long is taken over by another consumer (`XAUTOCLAIM`):
    /// how long the messages of a crashed instance wait. Live consumers renew their
    /// deliveries well within it, so slow handlers are not taken over.
    pub reclaim_idle: Duration,
    /// How often a subscription looks for deliveries to take over (nacked ones, or those of
    /// dead consumers). A nack by this process triggers a look at once.
    pub claim_interval: Duration,
    /// With a `rediss://` URL: a CA certificate file (PEM) to trust instead of the system's.
    pub tls_ca_file: Option<PathBuf>,
}

impl RedisConfig {
    /// Settings for a Redis URL, with defaults for the rest: prefix `bus`, 5 s operation and
    /// connect timeouts, 1 s block, 30 s reclaim idle, 1 s claim interval.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            keys: Keys::default(),
            consumer_name: "bus".into(),
            operation_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            block_timeout: Duration::from_secs(1),
            reclaim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(1),
            tls_ca_file: None,
        }
    }

    /// Trust this CA file (PEM) for TLS (`rediss://`), instead of the system's certificates.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.url
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("rediss://")
    }

    /// From the environment: the URL from `BUS_REDIS_URL`, else `BUS_TRANSPORT` when it is a
    /// `redis://` URL; the key prefix from `BUS_REDIS_PREFIX` when set.
    pub fn from_env() -> Result<Self, RedisError> {
        let url = std::env::var("BUS_REDIS_URL")
            .ok()
            .or_else(|| {
                std::env::var("BUS_TRANSPORT")
                    .ok()
                    .filter(|t| t.starts_with("redis"))
            })
            .ok_or(RedisError::Config(
                "set BUS_REDIS_URL (or BUS_TRANSPORT) to a redis:// URL".into(),
            ))?;
        let mut config = RedisConfig::new(url);
        if let Ok(prefix) = std::env::var("BUS_REDIS_PREFIX") {
            config = config.key_prefix(prefix);
        }
        Ok(config)
    }

    /// Set the key prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.keys = Keys::new(prefix);
        self
    }

    /// Set the consumer name prefix.
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer_name = name.into();
        self
    }

    /// Set the operation timeout.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Set the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Set the `XREADGROUP` block timeout.
    pub fn block_timeout(mut self, timeout: Duration) -> Self {
        self.block_timeout = timeout;
        self
    }

    /// Set the idle time after which another consumer takes a delivery over.
    pub fn reclaim_idle(mut self, idle: Duration) -> Self {
        self.reclaim_idle = idle;
        self
    }

    /// Set how often subscriptions look for deliveries to take over.
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval;
        self
    }

    /// The URL to connect to, checked.
    pub(crate) fn checked_url(&self) -> Result<&str, RedisError> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| RedisError::Config(format!("invalid Redis URL: {e}")))?;
        match url.scheme() {
            "redis" | "rediss" => Ok(&self.url),
            other => Err(RedisError::Config(format!(
                "unsupported scheme `{other}`: use redis:// or rediss:// (TLS)"
            ))),
        }
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        bus_core::redact_url(&self.url)
    }

    /// The password in the URL, if any (to scrub it from error texts).
    fn secret(&self) -> Option<String> {
        let url = url::Url::parse(&self.url).ok()?;
        let p = url.password()?;
        Some(
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned(),
        )
    }

    /// Remove the password from a text (error messages of the client library).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = bus_core::scrub_urls(text);
        if let Some(secret) = self.secret().filter(|s| !s.is_empty()) {
            text = text.replace(&secret, "***");
        }
        text
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("keys", &self.keys)
            .field("consumer_name", &self.consumer_name)
            .field("operation_timeout", &self.operation_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("block_timeout", &self.block_timeout)
            .field("reclaim_idle", &self.reclaim_idle)
            .field("claim_interval", &self.claim_interval)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_redacted_everywhere() {
        let c = RedisConfig::new("redis://:canary%2Fpw@127.0.0.1:6379/2");
        assert_eq!(c.redacted_url(), "redis://:***@127.0.0.1:6379/2");
        assert!(!format!("{c:?}").contains("canary"));
        assert_eq!(
            c.scrub("failed for redis://:canary%2Fpw@127.0.0.1:6379/2: canary/pw"),
            "failed for redis://:***@127.0.0.1:6379/2: ***"
        );
    }

    #[test]
    fn only_redis_urls_are_accepted() {
        assert!(RedisConfig::new("redis://127.0.0.1").checked_url().is_ok());
        let tls = RedisConfig::new("rediss://127.0.0.1");
        assert!(tls.checked_url().is_ok() && tls.is_tls());
        assert!(!RedisConfig::new("redis://127.0.0.1").is_tls());
        assert!(RedisConfig::new("amqp://127.0.0.1").checked_url().is_err());
        assert!(RedisConfig::new("not a url").checked_url().is_err());
    }
}

//! Settings of the Redis transport, and the names of the keys it uses.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::RedisError;

/// How the keys of the transport are named. Every key starts with the root: the prefix, under
/// the namespace when there is one (`<namespace>:<prefix>`). Buses with different roots on one
/// Redis never see each other's commands or events; several systems (or test runs) can share
/// one Redis that way. The keys, for the default prefix `bus` and no namespace:
///
/// | what | key | type |
/// |---|---|---|
/// | declared endpoints (routing registry for commands) | `bus:endpoints` | set |
/// | subscribers of event `W` (fan-out registry) | `bus:subs:W` | set |
/// | input stream of endpoint `E` (consumer group `E`) | `bus:ep:E` | stream |
/// | error stream of `E` | `bus:ep:E:error` | stream |
/// | delayed messages of `E`, scored by due time (ms) | `bus:delayed:E` | sorted set |
/// | replies to bus instance `I` (expires unless renewed) | `bus:reply:I` | stream |
/// | scheduled messages waiting, scored by due time (ms) | `bus:scheduled` | sorted set |
/// | scheduled messages handed out, scored by lease end (ms) | `bus:scheduled:claimed` | sorted set |
/// | scheduled messages by message id | `bus:scheduled:messages` | hash |
/// | a short stream poked when a message is scheduled | `bus:scheduled:wake` | stream |
///
/// With namespace `shop`, every one of them starts with `shop:` instead: `shop:bus:endpoints`,
/// `shop:bus:ep:E`, and so on. Without one, the keys are exactly the ones above.
///
/// For Redis Cluster every key of one system must live in one slot: put a hash tag in the
/// root, e.g. the prefix `{bus}` (or the namespace `{shop}`; Redis hashes the first `{...}`).
///
/// ```
/// use bus_transport_redis::Keys;
///
/// let keys = Keys::new("shop");
/// assert_eq!(keys.stream("billing"), "shop:ep:billing");
/// assert_eq!(keys.error_stream("billing"), "shop:ep:billing:error");
/// assert_eq!(keys.subscribers("sales.OrderPlaced"), "shop:subs:sales.OrderPlaced");
///
/// let keys = Keys::default().namespace("tenant-a");
/// assert_eq!(keys.root(), "tenant-a:bus");
/// assert_eq!(keys.stream("billing"), "tenant-a:bus:ep:billing");
/// assert_eq!(keys.endpoints(), "tenant-a:bus:endpoints");
/// assert_eq!(keys.delayed("billing"), "tenant-a:bus:delayed:billing");
/// assert_eq!(keys.reply("42"), "tenant-a:bus:reply:42");
/// assert_eq!(keys.scheduled(), "tenant-a:bus:scheduled");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// The part of every key after the namespace (`bus` by default).
    pub prefix: String,
    /// The first part of every key, before the prefix, when set. `None` (or empty) leaves the
    /// keys as they are without one.
    pub namespace: Option<String>,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new("bus")
    }
}

impl Keys {
    /// Keys under `prefix`, with no namespace.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            namespace: None,
        }
    }

    /// The same keys under namespace `ns`: `<ns>:<prefix>:...`. An empty `ns` means none.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        let ns = ns.into();
        self.namespace = (!ns.is_empty()).then_some(ns);
        self
    }

    /// What every key starts with: `<namespace>:<prefix>`, or the prefix alone.
    pub fn root(&self) -> String {
        match self.namespace.as_deref().filter(|ns| !ns.is_empty()) {
            Some(ns) => format!("{ns}:{}", self.prefix),
            None => self.prefix.clone(),
        }
    }

    /// The set of declared endpoint names: a command to an endpoint missing here is unroutable.
    pub fn endpoints(&self) -> String {
        format!("{}:endpoints", self.root())
    }

    /// The set of endpoints subscribed to an event wire name.
    pub fn subscribers(&self, event: &str) -> String {
        format!("{}{event}", self.subscribers_prefix())
    }

    /// What every subscriber set key starts with.
    pub(crate) fn subscribers_prefix(&self) -> String {
        format!("{}:subs:", self.root())
    }

    /// The input stream of an endpoint.
    pub fn stream(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.stream_prefix())
    }

    /// What every input stream key starts with (the publish script appends endpoint names).
    pub(crate) fn stream_prefix(&self) -> String {
        format!("{}:ep:", self.root())
    }

    /// The error stream of an endpoint.
    pub fn error_stream(&self, endpoint: &str) -> String {
        format!("{}:ep:{endpoint}:error", self.root())
    }

    /// The sorted set holding an endpoint's delayed messages until they are due.
    pub fn delayed(&self, endpoint: &str) -> String {
        format!("{}:delayed:{endpoint}", self.root())
    }

    /// The reply stream of one bus instance (its reply address is `instance`).
    pub fn reply(&self, instance: &str) -> String {
        format!("{}:reply:{instance}", self.root())
    }

    /// The sorted set of scheduled messages waiting to be due, by message id, scored by due
    /// time (ms since the Unix epoch).
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.root())
    }

    /// The sorted set of scheduled messages handed out to a bus and not settled yet, scored
    /// by the end of the lease (ms), after which they are due again.
    pub fn scheduled_claimed(&self) -> String {
        format!("{}:scheduled:claimed", self.root())
    }

    /// The hash of scheduled messages (waiting or handed out): message id to stored message.
    pub fn scheduled_messages(&self) -> String {
        format!("{}:scheduled:messages", self.root())
    }

    /// A short stream appended to whenever a message is scheduled, so that the buses taking
    /// due messages look again at once (one may be due before they planned to look).
    pub fn scheduled_wake(&self) -> String {
        format!("{}:scheduled:wake", self.root())
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
    /// Settings for a Redis URL, with defaults for the rest: prefix `bus`, no namespace, 5 s
    /// operation and connect timeouts, 1 s block, 30 s reclaim idle, 1 s claim interval.
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
    /// `redis://` URL; the key prefix from `BUS_REDIS_PREFIX` when set. (A namespace comes
    /// from the configuration crate's `prefix` setting, `BUS_PREFIX`, for every transport.)
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

    /// Set the key prefix (`bus` by default); the namespace, if any, stays.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.keys.prefix = prefix.into();
        self
    }

    /// Put every key under namespace `ns`: `<ns>:bus:endpoints`, `<ns>:bus:ep:E`, and so on
    /// (see [`Keys`]). Two buses with different namespaces on one Redis never see each other's
    /// commands or events; without a namespace (or with an empty one) the keys are the plain
    /// ones. The key prefix, set before or after, stays.
    ///
    /// ```
    /// use bus_transport_redis::RedisConfig;
    ///
    /// let config = RedisConfig::new("redis://127.0.0.1:6379").namespace("tenant-a");
    /// assert_eq!(config.keys.stream("billing"), "tenant-a:bus:ep:billing");
    /// let plain = RedisConfig::new("redis://127.0.0.1:6379");
    /// assert_eq!(plain.keys.stream("billing"), "bus:ep:billing");
    /// ```
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.keys = self.keys.namespace(ns);
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

    /// `host:port` of the server, for asking what answers there (port 6379 when the URL has
    /// none); `None` when the URL names no host.
    pub(crate) fn address(&self) -> Option<String> {
        let url = url::Url::parse(&self.url).ok()?;
        let host = url.host_str().filter(|h| !h.is_empty())?;
        Some(format!("{host}:{}", url.port().unwrap_or(6379)))
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
    fn without_a_namespace_the_keys_are_the_plain_ones() {
        let keys = RedisConfig::new("redis://h").keys;
        assert_eq!(keys.root(), "bus");
        assert_eq!(keys.endpoints(), "bus:endpoints");
        assert_eq!(keys.subscribers("e.W"), "bus:subs:e.W");
        assert_eq!(keys.stream("a"), "bus:ep:a");
        assert_eq!(keys.error_stream("a"), "bus:ep:a:error");
        assert_eq!(keys.delayed("a"), "bus:delayed:a");
        assert_eq!(keys.group("a"), "a");
        assert_eq!(RedisConfig::new("redis://h").namespace("").keys, keys);
    }

    #[test]
    fn a_namespace_goes_before_every_key_whatever_the_order_of_the_calls() {
        let a = RedisConfig::new("redis://h")
            .namespace("ns")
            .key_prefix("p");
        let b = RedisConfig::new("redis://h")
            .key_prefix("p")
            .namespace("ns");
        assert_eq!(a.keys, b.keys);
        let k = a.keys;
        assert_eq!(k.root(), "ns:p");
        assert_eq!(k.endpoints(), "ns:p:endpoints");
        assert_eq!(k.subscribers("e.W"), "ns:p:subs:e.W");
        assert_eq!(k.stream("a"), "ns:p:ep:a");
        assert_eq!(k.stream_prefix(), "ns:p:ep:");
        assert_eq!(k.error_stream("a"), "ns:p:ep:a:error");
        assert_eq!(k.delayed("a"), "ns:p:delayed:a");
        assert_eq!(k.reply("i-1"), "ns:p:reply:i-1");
        assert_eq!(k.scheduled(), "ns:p:scheduled");
        assert_eq!(k.scheduled_claimed(), "ns:p:scheduled:claimed");
        assert_eq!(k.scheduled_messages(), "ns:p:scheduled:messages");
        assert_eq!(k.scheduled_wake(), "ns:p:scheduled:wake");
    }

    #[test]
    fn the_address_to_probe_has_no_password_and_a_port() {
        let c = RedisConfig::new("redis://:pw@127.0.0.1:5672/0");
        assert_eq!(c.address().as_deref(), Some("127.0.0.1:5672"));
        let c = RedisConfig::new("rediss://user:pw@redis.internal");
        assert_eq!(c.address().as_deref(), Some("redis.internal:6379"));
        let c = RedisConfig::new("redis://[::1]:7000");
        assert_eq!(c.address().as_deref(), Some("[::1]:7000"));
        assert_eq!(RedisConfig::new("not a url").address(), None);
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

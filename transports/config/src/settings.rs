//! [`TransportSettings`]: what the configuration says, where it comes from, and how it opens a
//! transport.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bus_core::{redact_url, Transport};
use bus_transport_amqp::{AmqpConfig, AmqpTransport};
use bus_transport_memory::MemoryTransport;
use bus_transport_nats::{NatsConfig, NatsTransport};
use bus_transport_redis::{RedisConfig, RedisTransport};
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::env::{BusEnv, ENV_SOURCE, TABLE};
use crate::error::{ConfigError, ConnectCause, NOT_YET};
use crate::redact::{is_excerpt, scrub_error, url_secrets};
use crate::transport::ConfiguredTransport;

/// The configuration file read when `BUS_CONFIG` is not set (in the working directory; a
/// missing one is fine).
pub const DEFAULT_CONFIG_FILE: &str = "bus.toml";

/// The quorum-queue delivery limit used when `queue_type = "quorum"` names none (RabbitMQ's
/// own default since 4.0).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// The queue type of endpoint queues on AMQP.
///
/// ```
/// use bus_transport_config::QueueKind;
/// assert_eq!(QueueKind::default(), QueueKind::Classic);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// Classic durable queues.
    #[default]
    Classic,
    /// Quorum (replicated) queues, with a delivery limit as a crash-loop guard.
    Quorum,
}

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

/// Which transport to run on, and its settings.
///
/// Read from the `[transport]` table of `bus.toml` (or the file `BUS_CONFIG` names), then from
/// `BUS_*` environment variables, which win:
///
/// | `bus.toml` key | environment | meaning | default |
/// |---|---|---|---|
/// | `url` | `BUS_TRANSPORT` | the transport: see the schemes below | `memory` |
/// | `connection_name` | `BUS_CONNECTION_NAME` | name shown by the broker (Redis: first part of the consumer names) | the program's name |
/// | `publish_timeout` | `BUS_PUBLISH_TIMEOUT` | longest wait for a send to be accepted (`10s`, `500ms`, or seconds); on Redis it bounds every call | transport's (AMQP and NATS 10 s, Redis 5 s, memory 30 s) |
/// | `connect_timeout` | `BUS_CONNECT_TIMEOUT` | longest wait to connect (AMQP, NATS: also to declare) | transport's (AMQP and NATS 10 s, Redis 5 s) |
/// | `queue_type` | `BUS_QUEUE_TYPE` | `classic` or `quorum` (AMQP) | `classic` |
/// | `delivery_limit` | `BUS_DELIVERY_LIMIT` | deliveries of one message before a quorum queue dead-letters it (AMQP) | 20 |
/// | `memory_capacity` | `BUS_MEMORY_CAPACITY` | messages per in-memory queue | 10,000 |
/// | `batched_acks` | `BUS_BATCHED_ACKS` | one `basic.ack` with `multiple` for a run of handled deliveries (AMQP; see `AmqpTransport::with_batched_acks`) | `false` |
/// | `confirm_acks` | `BUS_CONFIRM_ACKS` | wait for the server to confirm each ack (NATS; see `NatsConfig::confirm_acks`) | `true` |
/// | `tls_ca_file` | `BUS_TLS_CA_FILE` | a CA certificate file (PEM) to trust for `amqps://`, `tls://` and `rediss://` (a private CA): on AMQP besides the public roots, on NATS and Redis instead of the system's; plain URLs ignore it | |
/// | `amqp_user` | `BUS_AMQP_USER` | AMQP user, instead of the URL's (set with `amqp_password`) | |
/// | `amqp_password` | `BUS_AMQP_PASSWORD` | AMQP password, instead of the URL's | |
///
/// The schemes of `url`:
///
/// | scheme | transport | example |
/// |---|---|---|
/// | `memory` | in-memory, one process only ([`TransportKind::Memory`]) | `memory` |
/// | `amqp`, `amqps` | RabbitMQ; `amqps` with TLS | `amqp://user:password@host:5672/vhost` |
/// | `nats`, `tls` | NATS JetStream; `tls` requires TLS; a comma-separated list names several servers | `nats://user:password@host:4222`, `nats://token@host:4222` |
/// | `redis`, `rediss` | Redis Streams; `rediss` with TLS | `redis://:password@host:6379/0`, `redis://user:password@host:6379` |
///
/// Settings a transport has no use for are ignored (`queue_type` on NATS, say).
///
/// An empty environment variable counts as unset. Environment values are taken verbatim
/// (a password `0042` stays `0042`). Unknown keys in the `[transport]` table are errors, so a
/// typo does not go unnoticed; other tables of the file are left alone.
///
/// `Debug` output never shows the password (nor a NATS token):
///
/// ```
/// use bus_transport_config::TransportSettings;
///
/// let settings = TransportSettings {
///     url: "amqp://shop:s3cret@rabbit.internal:5672/%2f".into(),
///     ..TransportSettings::default()
/// };
/// let shown = format!("{settings:?}");
/// assert!(shown.contains("amqp://shop:***@rabbit.internal:5672/%2f"));
/// assert!(!shown.contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSettings {
    /// `memory`, or the broker URL (`amqp://`, `amqps://`, `nats://`, `tls://`, `redis://`),
    /// credentials included.
    pub url: String,
    /// The connection name the broker shows (on Redis, the first part of the consumer names);
    /// when unset, the name the program passes to [`TransportSettings::connect`].
    pub connection_name: Option<String>,
    /// Longest wait for a send to be accepted; the transport's default when unset. On Redis,
    /// the operation timeout, which bounds every call (send, ack, declare).
    #[serde(deserialize_with = "de::duration")]
    pub publish_timeout: Option<Duration>,
    /// Longest wait to connect (AMQP and NATS: also to declare); the transport's default
    /// (AMQP and NATS 10 s, Redis 5 s) when unset.
    #[serde(deserialize_with = "de::duration")]
    pub connect_timeout: Option<Duration>,
    /// Queue type of endpoint queues (AMQP).
    pub queue_type: QueueKind,
    /// Deliveries of one message before a quorum queue dead-letters it to the error queue;
    /// [`DEFAULT_DELIVERY_LIMIT`] when unset. Ignored for classic queues.
    #[serde(deserialize_with = "de::number")]
    pub delivery_limit: Option<u32>,
    /// Messages each in-memory queue holds before senders wait; 10,000 when unset.
    #[serde(deserialize_with = "de::number")]
    pub memory_capacity: Option<usize>,
    /// AMQP: ack a run of handled deliveries with one `basic.ack` (`multiple`); off when unset.
    #[serde(deserialize_with = "de::flag")]
    pub batched_acks: Option<bool>,
    /// NATS: wait for the server to confirm each ack; on when unset.
    #[serde(deserialize_with = "de::flag")]
    pub confirm_acks: Option<bool>,
    /// A CA certificate file (PEM) to trust for TLS connections (`amqps://`, `tls://`,
    /// `rediss://`), e.g. a company's private CA: on AMQP in addition to the public roots, on
    /// NATS and Redis instead of the system's roots (their clients trust the given CA alone).
    /// Plain (`amqp://`, `nats://`, `redis://`) URLs ignore it. Read when the transport
    /// configuration is built; a file that cannot be read is an error then. A relative path
    /// is taken from the working directory.
    pub tls_ca_file: Option<PathBuf>,
    /// The AMQP user, overriding the URL's. Set together with `amqp_password`.
    pub amqp_user: Option<String>,
    /// The AMQP password, overriding the URL's. Never shown by `Debug`.
    #[serde(deserialize_with = "de::secret")]
    pub amqp_password: Option<String>,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            url: "memory".into(),
            connection_name: None,
            publish_timeout: None,
            connect_timeout: None,
            queue_type: QueueKind::Classic,
            delivery_limit: None,
            memory_capacity: None,
            batched_acks: None,
            confirm_acks: None,
            tls_ca_file: None,
            amqp_user: None,
            amqp_password: None,
        }
    }
}

impl fmt::Debug for TransportSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportSettings")
            .field("url", &self.redacted_url())
            .field("connection_name", &self.connection_name)
            .field("publish_timeout", &self.publish_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .field("memory_capacity", &self.memory_capacity)
            .field("batched_acks", &self.batched_acks)
            .field("confirm_acks", &self.confirm_acks)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("amqp_user", &self.amqp_user)
            .field("amqp_password", &self.amqp_password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl TransportSettings {
    /// The configuration sources, lowest priority first: the `[transport]` table of
    /// `bus.toml` in the working directory (or of the file named by `BUS_CONFIG`, which must
    /// exist), then the `BUS_*` environment variables.
    ///
    /// Add or replace sources before [`TransportSettings::load_from`]:
    ///
    /// ```
    /// use bus_transport_config::TransportSettings;
    /// use figment::providers::{Format, Toml};
    ///
    /// let figment = TransportSettings::figment()?
    ///     .join(Toml::string("[transport]\nconnection_name = \"fallback\""));
    /// let settings = TransportSettings::load_from(&figment)?;
    /// # drop(settings);
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// ```
    pub fn figment() -> Result<Figment, ConfigError> {
        let file = match std::env::var_os("BUS_CONFIG").filter(|p| !p.is_empty()) {
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(ConfigError::MissingFile(path));
                }
                path
            }
            None => PathBuf::from(DEFAULT_CONFIG_FILE),
        };
        let mut figment = Figment::new();
        if file.is_file() {
            figment = figment.merge(Toml::file_exact(file));
        }
        Ok(figment.merge(BusEnv))
    }

    /// Load the settings from `bus.toml` and the environment (see the type's docs).
    ///
    /// ```no_run
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings::load()?;
    /// println!("transport: {}", settings.redacted_url());
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// ```
    pub fn load() -> Result<Self, ConfigError> {
        TransportSettings::load_from(&TransportSettings::figment()?)
    }

    /// Load the settings from the `[transport]` table of any figment (tests, other sources).
    /// A figment without that table gives the defaults.
    ///
    /// ```
    /// use bus_transport_config::{QueueKind, TransportSettings};
    /// use figment::providers::{Format, Toml};
    /// use figment::Figment;
    ///
    /// let figment = Figment::from(Toml::string(r#"
    ///     [transport]
    ///     url = "amqp://guest:guest@127.0.0.1:5672/%2f"
    ///     publish_timeout = "5s"
    ///     queue_type = "quorum"
    ///     delivery_limit = 5
    /// "#));
    /// let settings = TransportSettings::load_from(&figment)?;
    /// assert_eq!(settings.publish_timeout, Some(std::time::Duration::from_secs(5)));
    /// assert_eq!(settings.queue_type, QueueKind::Quorum);
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// ```
    pub fn load_from(figment: &Figment) -> Result<Self, ConfigError> {
        /// The file's root: only the `[transport]` table is ours; other tables are left alone.
        #[derive(Deserialize)]
        struct Root {
            #[serde(default)]
            transport: TransportSettings,
        }
        let settings = figment
            .extract::<Root>()
            .map_err(|e| ConfigError::Invalid(scrub_error(&describe(e), &known_secrets(figment))))?
            .transport;
        settings.validate()?;
        Ok(settings)
    }

    /// Check the settings without connecting: a known transport, a well-formed URL, usable
    /// values.
    fn validate(&self) -> Result<(), ConfigError> {
        self.kind()?;
        if self.memory_capacity == Some(0) {
            return Err(ConfigError::InvalidSetting {
                setting: "memory_capacity",
                reason: "must be at least 1".into(),
            });
        }
        if self.delivery_limit == Some(0) {
            return Err(ConfigError::InvalidSetting {
                setting: "delivery_limit",
                reason: "must be at least 1".into(),
            });
        }
        if self.amqp_user.is_some() != self.amqp_password.is_some() {
            return Err(ConfigError::InvalidSetting {
                setting: if self.amqp_user.is_some() {
                    "amqp_password"
                } else {
                    "amqp_user"
                },
                reason: "set amqp_user and amqp_password (BUS_AMQP_USER, BUS_AMQP_PASSWORD) together, or neither".into(),
            });
        }
        Ok(())
    }

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

    /// The transport URL with its password replaced by `***`, for logs.
    ///
    /// ```
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings { url: "amqp://app:pw@rabbit/%2f".into(), ..Default::default() };
    /// assert_eq!(settings.redacted_url(), "amqp://app:***@rabbit/%2f");
    /// ```
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.trim())
    }

    /// A new in-memory transport with these settings (capacity, send timeout).
    ///
    /// ```
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings { memory_capacity: Some(100), ..Default::default() };
    /// let transport = settings.memory_transport();
    /// # drop(transport);
    /// ```
    pub fn memory_transport(&self) -> MemoryTransport {
        let mut transport = MemoryTransport::new();
        if let Some(capacity) = self.memory_capacity {
            transport = transport.capacity(capacity);
        }
        if let Some(timeout) = self.publish_timeout {
            transport = transport.send_timeout(timeout);
        }
        transport
    }

    /// The AMQP transport configuration these settings describe, to adjust further (naming,
    /// TLS) before [`AmqpTransport::connect`]. `connection_name` is used unless the settings
    /// name one.
    ///
    /// ```
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings { url: "amqp://app:pw@rabbit/%2f".into(), ..Default::default() };
    /// let config = settings.amqp_config("billing")?;
    /// assert_eq!(config.connection_name, "billing");
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// ```
    pub fn amqp_config(&self, connection_name: &str) -> Result<AmqpConfig, ConfigError> {
        match self.kind()? {
            TransportKind::Amqp | TransportKind::Amqps => {}
            _ => {
                return Err(ConfigError::InvalidUrl {
                    url: self.redacted_url(),
                    reason: "an AMQP configuration needs an amqp:// or amqps:// URL".into(),
                })
            }
        }
        self.validate()?;
        let mut config = AmqpConfig::new(self.url.trim()).connection_name(
            self.connection_name
                .clone()
                .unwrap_or_else(|| connection_name.to_string()),
        );
        if let Some(timeout) = self.publish_timeout {
            config = config.publish_timeout(timeout);
        }
        if let Some(timeout) = self.connect_timeout {
            config = config.connect_timeout(timeout);
        }
        if self.queue_type == QueueKind::Quorum {
            config = config.quorum_queues(self.delivery_limit.unwrap_or(DEFAULT_DELIVERY_LIMIT));
        }
        if let (Some(user), Some(password)) = (&self.amqp_user, &self.amqp_password) {
            config = config.credentials(user, password);
        }
        if let Some(path) = self.readable_ca_file()? {
            let pem = std::fs::read_to_string(path).map_err(|e| unreadable_ca_file(path, &e))?;
            config = config.tls_ca_pem(pem);
        }
        Ok(config)
    }

    /// The NATS transport configuration these settings describe, to adjust further (naming,
    /// limits, a CA file) before [`NatsTransport::connect`]: `connection_name` (used unless
    /// the settings name one), `publish_timeout`, `connect_timeout` and `confirm_acks`. Credentials come from
    /// the URL (`nats://user:password@host` or `nats://token@host`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings {
    ///     url: "nats://app:pw@nats.internal:4222".into(),
    ///     publish_timeout: Some(Duration::from_secs(3)),
    ///     ..Default::default()
    /// };
    /// let config = settings.nats_config("billing")?;
    /// assert_eq!(config.connection_name, "billing");
    /// assert_eq!(config.publish_timeout, Duration::from_secs(3));
    /// assert_eq!(config.redacted_url(), "nats://app:***@nats.internal:4222");
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// ```
    pub fn nats_config(&self, connection_name: &str) -> Result<NatsConfig, ConfigError> {
        match self.kind()? {
            TransportKind::Nats | TransportKind::NatsTls => {}
            _ => {
                return Err(ConfigError::InvalidUrl {
                    url: self.redacted_url(),
                    reason: "a NATS configuration needs a nats:// or tls:// URL".into(),
                })
            }
        }
        self.validate()?;
        let mut config = NatsConfig::new(self.url.trim()).connection_name(
            self.connection_name
                .clone()
                .unwrap_or_else(|| connection_name.to_string()),
        );
        if let Some(timeout) = self.publish_timeout {
            config = config.publish_timeout(timeout);
        }
        if let Some(timeout) = self.connect_timeout {
            config = config.connect_timeout(timeout);
        }
        if let Some(confirm) = self.confirm_acks {
            config = config.confirm_acks(confirm);
        }
        if let Some(path) = self.readable_ca_file()? {
            config = config.tls_ca_file(path);
        }
        Ok(config)
    }

    /// The Redis transport configuration these settings describe, to adjust further (key
    /// prefix, reclaim settings) before [`RedisTransport::connect`]: `connection_name` (used
    /// unless the settings name one) is the first part of the consumer names,
    /// `publish_timeout` the operation timeout (it bounds every call: send, ack, declare),
    /// `connect_timeout` the connect timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings {
    ///     url: "redis://:pw@redis.internal:6379/0".into(),
    ///     publish_timeout: Some(Duration::from_secs(3)),
    ///     ..Default::default()
    /// };
    /// let config = settings.redis_config("billing")?;
    /// assert_eq!(config.consumer_name, "billing");
    /// assert_eq!(config.operation_timeout, Duration::from_secs(3));
    /// assert_eq!(config.redacted_url(), "redis://:***@redis.internal:6379/0");
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// ```
    pub fn redis_config(&self, connection_name: &str) -> Result<RedisConfig, ConfigError> {
        match self.kind()? {
            TransportKind::Redis | TransportKind::RedisTls => {}
            _ => {
                return Err(ConfigError::InvalidUrl {
                    url: self.redacted_url(),
                    reason: "a Redis configuration needs a redis:// or rediss:// URL".into(),
                })
            }
        }
        self.validate()?;
        let mut config = RedisConfig::new(self.url.trim()).consumer_name(
            self.connection_name
                .clone()
                .unwrap_or_else(|| connection_name.to_string()),
        );
        if let Some(timeout) = self.publish_timeout {
            config = config.operation_timeout(timeout);
        }
        if let Some(timeout) = self.connect_timeout {
            config = config.connect_timeout(timeout);
        }
        if let Some(path) = self.readable_ca_file()? {
            config = config.tls_ca_file(path);
        }
        Ok(config)
    }

    /// The `tls_ca_file` setting when the URL asks for TLS, checked readable now, so a wrong
    /// path is a configuration error naming the setting rather than a TLS failure at connect
    /// time.
    fn readable_ca_file(&self) -> Result<Option<&Path>, ConfigError> {
        let tls = matches!(
            self.kind()?,
            TransportKind::Amqps | TransportKind::NatsTls | TransportKind::RedisTls
        );
        let Some(path) = self.tls_ca_file.as_deref().filter(|_| tls) else {
            return Ok(None);
        };
        std::fs::File::open(path).map_err(|e| unreadable_ca_file(path, &e))?;
        Ok(Some(path))
    }

    /// Open the configured transport: a new in-memory transport, or a connection to the
    /// broker (RabbitMQ, NATS or Redis). `connection_name` names the connection unless the
    /// settings name one. Use it to reach transport-specific features
    /// ([`ConfiguredTransport::as_memory`], [`ConfiguredTransport::as_nats`], ...), else prefer
    /// [`TransportSettings::connect`].
    ///
    /// ```
    /// use bus_transport_config::TransportSettings;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let transport = TransportSettings::default().open("shop").await?;
    /// assert!(transport.as_memory().is_some());
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub async fn open(&self, connection_name: &str) -> Result<ConfiguredTransport, ConfigError> {
        match self.kind()? {
            TransportKind::Memory => {
                self.validate()?;
                Ok(ConfiguredTransport::Memory(self.memory_transport()))
            }
            TransportKind::Amqp | TransportKind::Amqps => {
                let config = self.amqp_config(connection_name)?;
                let batched = self.batched_acks.unwrap_or(false);
                AmqpTransport::connect(config)
                    .await
                    .map(|t| ConfiguredTransport::Amqp(t.with_batched_acks(batched)))
                    .map_err(|cause| self.connect_error(cause.into()))
            }
            TransportKind::Nats | TransportKind::NatsTls => {
                let config = self.nats_config(connection_name)?;
                NatsTransport::connect(config)
                    .await
                    .map(ConfiguredTransport::Nats)
                    .map_err(|cause| self.connect_error(cause.into()))
            }
            TransportKind::Redis | TransportKind::RedisTls => {
                let config = self.redis_config(connection_name)?;
                RedisTransport::connect(config)
                    .await
                    .map(ConfiguredTransport::Redis)
                    .map_err(|cause| self.connect_error(cause.into()))
            }
        }
    }

    fn connect_error(&self, cause: ConnectCause) -> ConfigError {
        ConfigError::Connect {
            url: self.redacted_url(),
            cause,
        }
    }

    /// Open the configured transport, ready for [`bus_core::BusBuilder::transport_arc`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use bus_transport_config::TransportSettings;
    ///
    /// let transport = TransportSettings::load()?.connect("billing").await?;
    /// let bus = bus_core::Bus::builder()
    ///     .transport_arc(transport)
    ///     .host(["billing"])
    ///     .start()
    ///     .await?;
    /// # drop(bus); Ok(()) }
    /// ```
    pub async fn connect(&self, connection_name: &str) -> Result<Arc<dyn Transport>, ConfigError> {
        Ok(self.open(connection_name).await?.shared())
    }
}

/// [`TransportSettings::load`] then [`TransportSettings::connect`]: the transport that
/// `bus.toml` and the `BUS_*` environment variables choose.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = bus_transport_config::transport_from_env("order-service").await?;
/// let bus = bus_core::Bus::builder().transport_arc(transport).start().await?;
/// # drop(bus); Ok(()) }
/// ```
pub async fn transport_from_env(connection_name: &str) -> Result<Arc<dyn Transport>, ConfigError> {
    TransportSettings::load()?.connect(connection_name).await
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

/// A figment error as one readable text per problem: where (the environment variable, or the
/// file and key), then what.
fn describe(error: figment::Error) -> String {
    use figment::error::Kind;
    let mut problems = Vec::new();
    for e in error {
        let key = e.path.join(".");
        let setting = e.path.last().map(String::as_str).unwrap_or_default();
        let from_env = e.metadata.as_ref().is_some_and(|md| md.name == ENV_SOURCE);
        let place = if from_env {
            crate::env::VARIABLES
                .iter()
                .find(|(_, k)| *k == setting)
                .map(|(var, _)| (*var).to_string())
                .unwrap_or_else(|| ENV_SOURCE.to_string())
        } else {
            let file = match e.metadata.as_ref() {
                Some(md) => match &md.source {
                    Some(source) => source.to_string(),
                    None => md.name.to_string(),
                },
                None => "the configuration".to_string(),
            };
            if key.is_empty() {
                file
            } else {
                format!("{file}, `{key}`")
            }
        };
        let what = match &e.kind {
            Kind::UnknownField(found, expected) => format!(
                "unknown setting `{found}`; the settings are {}",
                expected.join(", ")
            ),
            Kind::UnknownVariant(found, expected) => format!(
                "unknown value `{found}`; expected {}",
                expected.join(" or ")
            ),
            other => other
                .to_string()
                .lines()
                .filter(|line| !is_excerpt(line))
                .collect::<Vec<_>>()
                .join(": "),
        };
        problems.push(format!("{place}: {what}"));
    }
    problems.join("; ")
}

/// Passwords the configuration holds, found as well as can be, to scrub from error texts.
fn known_secrets(figment: &Figment) -> Vec<String> {
    let mut secrets = Vec::new();
    let mut add_url = |url: &str| secrets.extend(url_secrets(url));
    if let Ok(url) = std::env::var("BUS_TRANSPORT") {
        add_url(&url);
    }
    if let Ok(value) = figment.find_value(&format!("{TABLE}.url")) {
        if let Some(url) = value.as_str() {
            add_url(url);
        }
    }
    secrets.extend(std::env::var("BUS_AMQP_PASSWORD").ok());
    if let Ok(value) = figment.find_value(&format!("{TABLE}.amqp_password")) {
        secrets.extend(value.as_str().map(str::to_string));
    }
    secrets
}

/// Deserializers that accept both TOML values and the verbatim strings of the environment.
mod de {
    use std::fmt;
    use std::str::FromStr;
    use std::time::Duration;

    use figment::value::Value;
    use serde::de::{self, Deserializer, Visitor};
    use serde::Deserialize;

    /// A duration: `"10s"`, `"1m 30s"`, `"500ms"`, or a whole number of seconds.
    pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or \"500ms\", or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Self::Value, E> {
                Ok(Some(Duration::from_secs(secs)))
            }
            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Self::Value, E> {
                u64::try_from(secs)
                    .map(|s| Some(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                let text = text.trim();
                if let Ok(secs) = text.parse::<u64>() {
                    return Ok(Some(Duration::from_secs(secs)));
                }
                humantime::parse_duration(text).map(Some).map_err(|e| {
                    E::custom(format!(
                        "invalid duration `{text}` ({e}); use e.g. \"10s\" or \"500ms\""
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }

    /// Yes or no: a TOML boolean, or `true` / `false` (also `1` / `0`, `yes` / `no`, `on` /
    /// `off`) as text.
    pub(super) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Option<bool>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Some(b))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                match text.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => Ok(Some(true)),
                    "false" | "0" | "no" | "off" => Ok(Some(false)),
                    other => Err(E::custom(format!(
                        "invalid value `{other}`; expected true or false"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }

    /// A whole number, written as a number or as a string of digits.
    pub(super) fn number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr + TryFrom<u64>,
    {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: FromStr + TryFrom<u64>> Visitor<'_> for V<T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                T::try_from(n)
                    .map(Some)
                    .map_err(|_| E::custom(format!("{n} is too large")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "{n} is negative; expected a whole number"
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                text.trim()
                    .parse::<T>()
                    .map(Some)
                    .map_err(|_| E::custom(format!("`{text}` is not a whole number")))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }

    /// A secret: a string, and an error that never repeats the value when it is not one.
    pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match <Value as Deserialize>::deserialize(d)? {
            Value::String(_, s) => Ok(Some(s)),
            _ => Err(de::Error::custom(
                "expected a string (in bus.toml, put the value in quotes)",
            )),
        }
    }
}

fn unreadable_ca_file(path: &Path, error: &std::io::Error) -> ConfigError {
    ConfigError::InvalidSetting {
        setting: "tls_ca_file",
        reason: format!("cannot read `{}`: {error}", path.display()),
    }
}

//! [`TransportSettings`]: what the configuration says and the values it may hold.
//!
//! The type is declared here; its methods live beside the concept they serve:
//! - `kind`: [`TransportKind`], which transport a URL names, and the URL checks.
//! - `sources`: where the settings are read from (`bus.toml`, `BUS_*`), and error texts.
//! - `de`: the serde deserializers for durations, flags, numbers and secrets.
//! - `configs`: each transport's own configuration built from the settings.
//! - `open`: opening the transport ([`TransportSettings::open`], [`transport_from_env`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bus_core::redact_url;
use serde::Deserialize;

use crate::error::ConfigError;

mod configs;
mod de;
mod kind;
mod open;
mod sources;

pub use kind::TransportKind;
pub use open::transport_from_env;
pub use sources::DEFAULT_CONFIG_FILE;

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
/// | `metrics_addr` | `BUS_METRICS_ADDR` | where a service serves `/metrics`, `/healthz` and `/readyz` over HTTP (`127.0.0.1:9464`, `0.0.0.0:9464`, `[::1]:9464`) | nothing served |
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
    /// A namespace for every name the bus declares on the broker (queues, exchanges, streams,
    /// subjects, keys), so environments, tenants or test runs share one broker without
    /// seeing each other's messages: `staging` puts the AMQP queue `billing` at
    /// `staging.billing`. Letters, digits, `-` and `_`; none when unset (the plain names). The
    /// in-memory transport needs none: each one is a namespace of its own.
    pub prefix: Option<String>,
    /// In-memory transport: serialize every message to bytes as a broker would, so body
    /// limits and serialization errors show in memory too; off when unset (typed values are
    /// handed over as they are, which is faster).
    #[serde(deserialize_with = "de::flag")]
    pub memory_serialize: Option<bool>,
    /// The address (IP and port, e.g. `127.0.0.1:9464`) on which a service serves its
    /// operational HTTP endpoints: Prometheus metrics, liveness and readiness. Nothing is
    /// served when unset. The transport itself ignores it; it lives here so that one file and
    /// one set of `BUS_*` variables configure a service.
    #[serde(deserialize_with = "de::socket_addr")]
    pub metrics_addr: Option<SocketAddr>,
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
            prefix: None,
            memory_serialize: None,
            metrics_addr: None,
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
            .field("prefix", &self.prefix)
            .field("memory_serialize", &self.memory_serialize)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

impl TransportSettings {
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
        if let Some(prefix) = &self.prefix {
            let ok = !prefix.is_empty()
                && prefix.len() <= 64
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(ConfigError::InvalidSetting {
                    setting: "prefix",
                    reason: format!(
                        "`{prefix}` is not a usable namespace: use 1 to 64 letters, digits, `-` or `_` (every broker accepts those in its names)"
                    ),
                });
            }
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
}

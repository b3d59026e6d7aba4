//! [`ConfigError`]: everything that can go wrong choosing and opening a transport.

use std::path::PathBuf;

use bus_transport_amqp::AmqpError;
use bus_transport_nats::NatsError;
use bus_transport_redis::RedisError;

/// The transport schemes this crate can open, as listed in error messages.
pub const SUPPORTED_SCHEMES: &str = "memory, amqp, amqps, nats, tls, redis, rediss";

/// Schemes of transports that are recognised but cannot be opened (yet), and why. None at
/// present: a scheme added here is answered with [`ConfigError::NotSupportedYet`].
pub(crate) const NOT_YET: &[(&str, &str)] = &[];

/// An error loading transport settings or opening the transport they name.
///
/// No text of it ever contains a password: URLs are shown with `***` in place of the
/// password (or of a NATS token), and errors about the configuration sources are scrubbed the
/// same way.
///
/// ```
/// use bus_transport_config::{ConfigError, TransportSettings};
///
/// let settings = TransportSettings {
///     url: "kafka://broker:9092".into(),
///     ..TransportSettings::default()
/// };
/// let error = settings.kind().unwrap_err();
/// assert!(matches!(error, ConfigError::UnknownScheme { .. }));
/// assert_eq!(
///     error.to_string(),
///     "unknown transport scheme `kafka` in `kafka://broker:9092`; supported: memory, amqp, amqps, nats, tls, redis, rediss"
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A configuration source could not be read or a value has the wrong form.
    #[error("invalid bus configuration: {0}")]
    Invalid(String),
    /// `BUS_CONFIG` names a file that does not exist.
    #[error("the configuration file `{}` named by BUS_CONFIG does not exist", .0.display())]
    MissingFile(PathBuf),
    /// The transport URL is not a URL of a known transport.
    #[error("unknown transport scheme `{scheme}` in `{url}`; supported: {SUPPORTED_SCHEMES}")]
    UnknownScheme {
        /// The scheme found.
        scheme: String,
        /// The transport setting, password redacted.
        url: String,
    },
    /// The transport is a known kind that this crate cannot open yet (none at present).
    #[error("the `{scheme}` transport is not supported yet{}; supported: {SUPPORTED_SCHEMES}", why_not_yet(.scheme))]
    NotSupportedYet {
        /// The scheme found.
        scheme: String,
    },
    /// The transport setting is malformed.
    #[error("invalid transport `{url}`: {reason}")]
    InvalidUrl {
        /// The transport setting, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting has a value that cannot be used.
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The setting's name in `bus.toml` (the environment variable is `BUS_` + its upper case).
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The broker could not be reached, or refused the connection.
    #[error("could not connect to {url}: {}", describe(.cause))]
    Connect {
        /// The broker URL, password redacted.
        url: String,
        /// What the transport reported (its texts never hold the password either).
        cause: ConnectCause,
    },
}

/// What the transport reported when it could not connect, by transport.
///
/// ```
/// use bus_transport_config::{ConfigError, ConnectCause, TransportSettings};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// // Nothing listens on port 1 of the loopback: the connection is refused at once.
/// let settings = TransportSettings {
///     url: "redis://:s3cret@127.0.0.1:1".into(),
///     ..TransportSettings::default()
/// };
/// match settings.open("demo").await {
///     Err(ConfigError::Connect { url, cause: ConnectCause::Redis(_) }) => {
///         assert_eq!(url, "redis://:***@127.0.0.1:1");
///     }
///     other => panic!("expected a Redis connection error, got {other:?}"),
/// }
/// # });
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectCause {
    /// From the AMQP transport.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// From the NATS transport.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// From the Redis transport.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// The reason a recognised scheme cannot be opened, as the tail of the error message.
fn why_not_yet(scheme: &str) -> String {
    NOT_YET
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, why)| format!(": {why}"))
        .unwrap_or_default()
}

/// The transport's error without repeating the URL the `Connect` message already shows.
fn describe(cause: &ConnectCause) -> String {
    match cause {
        ConnectCause::Amqp(AmqpError::Connection { reason, .. }) => reason.clone(),
        ConnectCause::Amqp(AmqpError::WrongProtocol { context, .. }) => context.clone(),
        ConnectCause::Amqp(AmqpError::Authentication { reason, .. }) => {
            format!("the broker refused the login ({reason}); check the user, password and vhost")
        }
        ConnectCause::Nats(NatsError::Connection { reason, .. }) => reason.clone(),
        ConnectCause::Nats(NatsError::Authentication { reason, .. }) => {
            format!("the server refused the login ({reason}); check the user and password or token")
        }
        ConnectCause::Nats(NatsError::JetStreamUnavailable { reason, .. }) => {
            format!("JetStream is not available ({reason}); start nats-server with `-js`")
        }
        ConnectCause::Redis(RedisError::Connection { reason, .. }) => reason.clone(),
        ConnectCause::Redis(RedisError::Authentication { reason, .. }) => {
            format!("Redis refused the login ({reason}); check the user and password in the URL")
        }
        other => other.to_string(),
    }
}

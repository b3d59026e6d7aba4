//! [`ConfigError`]: everything that can go wrong choosing and opening a transport.

use std::path::PathBuf;

use bus_transport_amqp::AmqpError;

/// The transport schemes this crate can open, as listed in error messages.
pub const SUPPORTED_SCHEMES: &str = "memory, amqp, amqps";

/// An error loading transport settings or opening the transport they name.
///
/// No text of it ever contains a password: URLs are shown with `***` in place of the
/// password, and errors about the configuration sources are scrubbed the same way.
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
///     "unknown transport scheme `kafka` in `kafka://broker:9092`; supported: memory, amqp, amqps"
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
    /// The transport is a known kind that this crate cannot open yet.
    #[error("the `{scheme}` transport is not supported yet; supported: {SUPPORTED_SCHEMES}")]
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
        /// What the AMQP transport reported (its texts never hold the password either).
        cause: AmqpError,
    },
}

/// The AMQP error without repeating the URL the `Connect` message already shows.
fn describe(cause: &AmqpError) -> String {
    match cause {
        AmqpError::Connection { reason, .. } => reason.clone(),
        AmqpError::Authentication { reason, .. } => {
            format!("the broker refused the login ({reason}); check the user, password and vhost")
        }
        other => other.to_string(),
    }
}

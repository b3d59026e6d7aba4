//! [`CliError`]: what an operation on endpoints and failed messages can fail with.

use bus_core::{MessageId, TransportError};
use bus_transport_config::ConfigError;

/// Why an operation failed; each message says what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The transport could not be opened from the configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport refused or failed the operation.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// No message with this id is in the error queue.
    #[error("no message `{id}` in the error queue of `{endpoint}`; `bus errors list {endpoint}` shows what is there")]
    NotFound {
        /// The endpoint.
        endpoint: String,
        /// The id looked for.
        id: MessageId,
    },
    /// Input that cannot be used: a body that is not JSON, a bad line in an import file.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a file.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

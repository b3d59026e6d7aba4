//! The `BUS_*` environment variables as a figment provider.
//!
//! Values are taken verbatim. figment's own `Env` provider parses values (`0042` becomes the
//! number 42, `true` a boolean, `"..."` is unquoted), which would silently change a password;
//! here every value stays the string it was, and the settings parse numbers and durations.

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// Environment variable, and the setting (key of the `[transport]` table) it sets.
pub(crate) const VARIABLES: &[(&str, &str)] = &[
    ("BUS_TRANSPORT", "url"),
    ("BUS_CONNECTION_NAME", "connection_name"),
    ("BUS_PUBLISH_TIMEOUT", "publish_timeout"),
    ("BUS_CONNECT_TIMEOUT", "connect_timeout"),
    ("BUS_QUEUE_TYPE", "queue_type"),
    ("BUS_DELIVERY_LIMIT", "delivery_limit"),
    ("BUS_MEMORY_CAPACITY", "memory_capacity"),
    ("BUS_BATCHED_ACKS", "batched_acks"),
    ("BUS_CONFIRM_ACKS", "confirm_acks"),
    ("BUS_TLS_CA_FILE", "tls_ca_file"),
    ("BUS_AMQP_USER", "amqp_user"),
    ("BUS_AMQP_PASSWORD", "amqp_password"),
    ("BUS_PREFIX", "prefix"),
    ("BUS_MEMORY_SERIALIZE", "memory_serialize"),
    ("BUS_METRICS_ADDR", "metrics_addr"),
];

/// The table every setting lives in, in `bus.toml` and in the merged configuration.
pub(crate) const TABLE: &str = "transport";

/// The name of this source in figment's metadata.
pub(crate) const ENV_SOURCE: &str = "environment variable";

/// Provides the `[transport]` table from the `BUS_*` variables that are set and not empty.
pub(crate) struct BusEnv;

impl Provider for BusEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE).interpolater(|_profile, keys| {
            VARIABLES
                .iter()
                .find(|(_, key)| keys.contains(key))
                .map(|(var, _)| (*var).to_string())
                .unwrap_or_else(|| keys.join("."))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut table = Dict::new();
        for (var, key) in VARIABLES {
            match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => {
                    table.insert((*key).to_string(), Value::from(value));
                }
                Ok(_) | Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(Error::from(format!("{var} is not valid UTF-8")));
                }
            }
        }
        let mut root = Dict::new();
        if !table.is_empty() {
            root.insert(TABLE.to_string(), Value::from(table));
        }
        Ok(Profile::Default.collect(root))
    }
}

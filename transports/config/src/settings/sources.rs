//! Where [`TransportSettings`] are read from: the `[transport]` table of `bus.toml` (or of
//! the file `BUS_CONFIG` names), then the `BUS_*` environment variables; and the texts of the
//! errors those sources give, scrubbed of secrets.

use std::path::PathBuf;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use super::TransportSettings;
use crate::env::{BusEnv, ENV_SOURCE, TABLE, VARIABLES};
use crate::error::ConfigError;
use crate::redact::{is_excerpt, scrub_error, url_secrets};

/// The configuration file read when `BUS_CONFIG` is not set (in the working directory; a
/// missing one is fine).
pub const DEFAULT_CONFIG_FILE: &str = "bus.toml";

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
            VARIABLES
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

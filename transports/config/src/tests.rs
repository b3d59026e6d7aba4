//! Tests through the public surface of [`TransportSettings`], by theme; those that read files
//! or the environment run inside `figment::Jail`, which gives each test its own working
//! directory and environment:
//! - `sources`: loading from `bus.toml`, `BUS_CONFIG` and `BUS_*`, and what errors say.
//! - `transports`: each transport's configuration built from the settings, and opening one.
//! - `redaction`: passwords and tokens never shown, in `Debug` output or in any error.
//!
//! The fixtures here are shared with the unit tests beside the code (`settings/kind.rs`).

// `Jail` closures must return `figment::Error`, which is large; that is figment's API.
#![allow(clippy::result_large_err)]

use crate::{ConfigError, TransportSettings};

mod redaction;
mod sources;
mod transports;

/// A password to look for in everything shown: it must never appear.
pub(crate) const SECRET: &str = "pa55-Secret";

/// A [`ConfigError`] as the error a `Jail` closure returns.
fn err(e: ConfigError) -> figment::Error {
    figment::Error::from(e.to_string())
}

/// Default settings with this transport URL.
pub(crate) fn with_url(url: &str) -> TransportSettings {
    TransportSettings {
        url: url.into(),
        ..TransportSettings::default()
    }
}

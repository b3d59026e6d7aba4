//! [`HarnessError`]: what harness calls return when they fail, a wait that timed out included.

use std::fmt;
use std::time::Duration;

use bus_core::{BusError, TransportError};
use bus_transport_config::ConfigError;

use crate::records::Seen;

/// An error from the harness: the bus, the transport or the configuration failed, or a wait
/// ran out of time.
#[derive(Debug)]
#[non_exhaustive]
pub enum HarnessError {
    /// Building, starting or using the bus failed.
    Bus(BusError),
    /// The transport failed (browsing a queue, tearing down, closing).
    Transport(TransportError),
    /// The transport settings could not be loaded, or their transport not opened.
    Config(ConfigError),
    /// A wait reached its deadline; says what it waited for and what it saw.
    TimedOut(Box<TimedOut>),
}

/// A wait that reached its deadline.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TimedOut {
    /// What it waited for, e.g. `a handled shop.sales.PlaceOrder`.
    pub what: String,
    /// How long it waited.
    pub after: Duration,
    /// What the harness had seen by then.
    pub seen: Seen,
}

impl HarnessError {
    /// The timeout, when that is what this is.
    pub fn as_timeout(&self) -> Option<&TimedOut> {
        match self {
            HarnessError::TimedOut(t) => Some(t),
            _ => None,
        }
    }

    pub(crate) fn timed_out(what: String, after: Duration, seen: Seen) -> Self {
        HarnessError::TimedOut(Box::new(TimedOut { what, after, seen }))
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Bus(e) => write!(f, "bus error: {e}"),
            HarnessError::Transport(e) => write!(f, "transport error: {e}"),
            HarnessError::Config(e) => write!(f, "transport configuration: {e}"),
            HarnessError::TimedOut(t) => fmt::Display::fmt(t, f),
        }
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}; seen: {}",
            self.after, self.what, self.seen
        )
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HarnessError::Bus(e) => Some(e),
            HarnessError::Transport(e) => Some(e),
            HarnessError::Config(e) => Some(e),
            HarnessError::TimedOut(_) => None,
        }
    }
}

impl From<BusError> for HarnessError {
    fn from(e: BusError) -> Self {
        HarnessError::Bus(e)
    }
}

impl From<TransportError> for HarnessError {
    fn from(e: TransportError) -> Self {
        HarnessError::Transport(e)
    }
}

impl From<ConfigError> for HarnessError {
    fn from(e: ConfigError) -> Self {
        HarnessError::Config(e)
    }
}

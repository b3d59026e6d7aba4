//! The audit endpoint's one handler.

use bus_core::{Event, HandlerError};
use serde::{Deserialize, Serialize};

/// Something worth an audit line.
#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "t.discovery.Audited")]
pub struct Audited {
    /// What happened.
    pub what: String,
}

#[bus_core::handler(endpoint = "t-audit")]
async fn record(evt: Audited) -> Result<(), HandlerError> {
    let _ = evt.what;
    Ok(())
}

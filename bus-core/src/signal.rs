//! The process signals that ask a service to stop: Ctrl-C everywhere, SIGTERM on Unix (what
//! `kill`, systemd and Kubernetes send). [`crate::Bus::run_until_stop_signal`] uses them.

use std::fmt;

/// A signal asking the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopSignal {
    /// Ctrl-C (SIGINT).
    CtrlC,
    /// SIGTERM.
    Terminate,
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopSignal::CtrlC => "Ctrl-C",
            StopSignal::Terminate => "SIGTERM",
        })
    }
}

/// Completes when the process receives Ctrl-C or, on Unix, SIGTERM; says which.
///
/// If the process cannot listen for SIGTERM it logs why and waits for Ctrl-C alone; if it
/// cannot listen for Ctrl-C either, it never completes (the process is then stopped the
/// hard way, and the broker redelivers what was in flight).
pub async fn stop_signal() -> StopSignal {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => StopSignal::CtrlC,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for Ctrl-C");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                stop = ctrl_c => stop,
                _ = term.recv() => StopSignal::Terminate,
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                ctrl_c.await
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c.await
    }
}

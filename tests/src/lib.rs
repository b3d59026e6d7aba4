//! Test kit shared by the cross-crate tests: a ledger of what handlers saw, and waiting with a
//! deadline (a hang is a failure, never a stuck CI job).

pub mod broker;
pub mod conformance;
pub mod fault_run;
pub mod faulty;
pub mod messages;
pub mod nats_broker;
pub mod nats_server;
pub mod outbox_run;
pub mod proxy;
pub mod python;
pub mod redis_broker;
pub mod redis_server;
pub mod reliability;
pub mod server_process;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records how many times each key (usually a message id or a payload id) was handled, and by
/// which instance.
#[derive(Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<LedgerInner>>,
}

#[derive(Default)]
struct LedgerInner {
    counts: HashMap<String, u32>,
    by_instance: HashMap<String, u64>,
    notes: Vec<String>,
}

impl Ledger {
    /// A new, empty ledger.
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Record one handling of `key` by `instance`.
    pub fn record(&self, key: impl Into<String>, instance: &str) {
        let mut inner = self.inner.lock().unwrap();
        *inner.counts.entry(key.into()).or_default() += 1;
        *inner.by_instance.entry(instance.to_string()).or_default() += 1;
    }

    /// Keep a free-form note (ordering, headers seen, ...).
    pub fn note(&self, note: impl Into<String>) {
        self.inner.lock().unwrap().notes.push(note.into());
    }

    /// The notes, in order.
    pub fn notes(&self) -> Vec<String> {
        self.inner.lock().unwrap().notes.clone()
    }

    /// Total handlings.
    pub fn total(&self) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .counts
            .values()
            .map(|&c| u64::from(c))
            .sum()
    }

    /// Distinct keys handled.
    pub fn distinct(&self) -> usize {
        self.inner.lock().unwrap().counts.len()
    }

    /// How many times `key` was handled.
    pub fn count(&self, key: &str) -> u32 {
        self.inner
            .lock()
            .unwrap()
            .counts
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Handlings per instance.
    pub fn by_instance(&self) -> HashMap<String, u64> {
        self.inner.lock().unwrap().by_instance.clone()
    }

    /// Keys handled more than once.
    pub fn duplicates(&self) -> usize {
        self.inner
            .lock()
            .unwrap()
            .counts
            .values()
            .filter(|&&c| c > 1)
            .count()
    }
}

/// Poll `done` every few milliseconds until it holds or `deadline` passes; returns whether it
/// held. Works with paused tokio time too (the sleeps auto-advance the clock).
pub async fn eventually(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Run a test's `body` as a task of its own, then `cleanup`, also when the body panicked; its
/// panic is raised again once the broker is clean.
pub async fn then_clean(
    body: impl std::future::Future<Output = ()> + Send + 'static,
    cleanup: impl std::future::Future<Output = ()>,
) {
    let result = tokio::spawn(body).await;
    cleanup.await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The handler of `Work` the broker tests host: fails its first `fail_first` attempts, then
/// records the message's number in the [`Ledger`] under its endpoint, with a note of the
/// attempt that succeeded.
pub async fn record(
    cmd: messages::Work,
    ctx: bus_core::MessageContext,
    bus_core::State(ledger): bus_core::State<Ledger>,
) -> Result<(), bus_core::HandlerError> {
    if ctx.attempt() <= cmd.fail_first {
        return Err(bus_core::HandlerError::new(format!(
            "work {} failing on attempt {}",
            cmd.n,
            ctx.attempt()
        )));
    }
    ledger.record(cmd.n.to_string(), ctx.endpoint());
    ledger.note(format!("{} attempt {}", cmd.n, ctx.attempt()));
    Ok(())
}

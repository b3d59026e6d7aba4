//! The runtime core at the bottom of the crate: what every part of a running bus shares (the
//! transport, routes, codecs, state, counters and telemetry) and the one-way signals that stop it. Nothing
//! here knows about the builder, the facade or the receive path, which all build on it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::codec::Codecs;
use crate::error::BusError;
use crate::state::StateMap;
use crate::telemetry::Telemetry;
use crate::telemetry::{in_span, send_failed};
use crate::transport::Outgoing;
use crate::transport::Transport;

/// A map keyed by a message or endpoint name, looked up on every send and every delivery:
/// Fx hashes a word at a time, where FNV took a byte at a time.
pub(crate) type NameMap<V> = rustc_hash::FxHashMap<String, V>;

/// What every part of a running bus shares: the bus's own handles, the sending side and the
/// receiving side alike.
pub(crate) struct Runtime {
    pub(crate) transport: Arc<dyn Transport>,
    /// Owning endpoint of each command, by wire name.
    pub(crate) routes: NameMap<Arc<str>>,
    /// The wire name of every message type in the binary, shared by its sends.
    pub(crate) names: NameMap<Arc<str>>,
    pub(crate) codecs: Codecs,
    /// The transport carries typed bodies (in process): nothing is encoded.
    pub(crate) typed: bool,
    pub(crate) state: StateMap,
    pub(crate) max_body_size: usize,
    pub(crate) counters: Counters,
    /// Spans, trace context and metrics.
    pub(crate) telemetry: Telemetry,
    /// This instance's reply address and the requests waiting on it.
    pub(crate) replies: crate::request::Replies,
    /// Where units of work outside handlers commit, and whose relay the bus runs.
    pub(crate) storage: Option<Arc<dyn crate::storage::Storage>>,
    /// What is sent as CloudEvents, and the binding of the transport; `None` when nothing is.
    pub(crate) cloudevents: Option<Box<(crate::cloudevents::Rules, crate::cloudevents::Binding)>>,
    /// MassTransit and NServiceBus mappings; `None` when none is configured.
    pub(crate) masstransit: Option<Box<crate::masstransit::Rules>>,
    pub(crate) nservicebus: Option<Box<crate::nservicebus::Rules>>,
}

impl Runtime {
    /// Send one message under its producer span, entered by hand around the call that does
    /// not wait (all an in-process send does), so that no future wraps the common case.
    pub(crate) async fn dispatch(&self, mut out: Outgoing) -> Result<(), BusError> {
        let telemetry = &self.telemetry;
        let span = telemetry.send_span(&mut out);
        let sent = telemetry.sending(&out);
        let transport = &self.transport;
        let now = {
            let _entered = span.enter();
            transport.send_now(out)
        };
        let result = match now {
            Ok(Ok(())) => {
                // Nothing waited: count the send against the task's cooperative budget, as
                // tokio's own channels do, so a task that sends in a loop still yields now and
                // then (to the consumers it woke, among others) while the queue has room.
                tokio::task::coop::consume_budget().await;
                Ok(())
            }
            Ok(Err(error)) => Err(error.into()),
            Err(out) => in_span(&span, std::pin::pin!(transport.send(out)))
                .await
                .map_err(BusError::from),
        };
        match &result {
            Ok(()) => sent.done(1),
            Err(error) => send_failed(&span, error),
        }
        result
    }
}

/// What the bus did so far; read as [`crate::BusStats`].
///
/// On cache lines of their own: receive workers write them on every message, and a line
/// shared with what senders read on every send (the transport, the routes, the codecs)
/// would move between cores with each message.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub(crate) handled: AtomicU64,
    pub(crate) failed_attempts: AtomicU64,
    pub(crate) delayed_retries: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) duplicates_skipped: AtomicU64,
}

impl Counters {
    /// Count one.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A one-way signal (stop taking messages, abandon handlers) checked with one atomic load.
/// Waiting for it goes through a `CancellationToken`, whose own check takes a lock that every
/// worker thread and every sender would share.
#[derive(Clone, Default)]
pub(crate) struct Signal {
    fired: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Signal {
    /// Fire it; idempotent.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether it fired.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once it fired.
    pub(crate) fn fired(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Run `work` unless the signal fires first (or already did); `None` then, and `work` is
    /// dropped.
    ///
    /// Like a biased `select!` on the signal, without registering a waiter on it for work that
    /// is ready at once (the common case on a busy endpoint): that registration takes a lock.
    pub(crate) async fn unless<F: Future>(&self, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        let mut cancelled = std::pin::pin!(self.fired());
        std::future::poll_fn(|cx| {
            if self.is_fired() {
                return std::task::Poll::Ready(None);
            }
            if let std::task::Poll::Ready(out) = work.as_mut().poll(cx) {
                return std::task::Poll::Ready(Some(out));
            }
            cancelled.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

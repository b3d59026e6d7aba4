//! The telemetry stage: a `process <endpoint>` span around each attempt at a delivery (the
//! handlers run inside it, so everything they log carries the message's id, type, endpoint
//! and correlation id), made a child of the producer span whose trace context the message
//! carries, and with how the delivery was settled recorded on it. With the `opentelemetry`
//! feature it records the consumer-side metrics too.
//!
//! It is not a [`Layer`](crate::Layer): the runtime calls it around the stages, so an
//! endpoint without layers keeps its straight-line path, and with nobody listening the stage
//! costs a few branches and one atomic load per attempt.

use std::future::Future;
use std::pin::Pin;

use tracing::field::Empty;
use tracing::Span;

use super::{EndpointRuntime, Handlers};
use crate::envelope::Envelope;
use crate::failure::Failure;
use crate::telemetry::{body_size, in_span, InSpan};

#[cfg(feature = "opentelemetry")]
use crate::telemetry::Metrics;
#[cfg(feature = "opentelemetry")]
use std::time::SystemTime;

/// How a delivery was settled (or, for `Retry`, how a failed attempt at it was), as the
/// `messaging.bus.settle` attribute records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settle {
    /// Handled (or a duplicate the inbox knew): acked.
    Ack,
    /// The attempt failed and the next one follows at once.
    Retry,
    /// Sent back to the endpoint's queue for a later attempt.
    DelayedRetry,
    /// Moved to the endpoint's error queue.
    ErrorQueue,
    /// Returned to its queue, to be delivered again (what was to be sent could not be).
    Requeue,
}

impl Settle {
    fn as_str(self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Retry => "retry",
            Settle::DelayedRetry => "delayed-retry",
            Settle::ErrorQueue => "error-queue",
            Settle::Requeue => "requeue",
        }
    }
}

/// The telemetry of one delivery: the span of its current attempt, and, with metrics, its
/// attribute set and when the current attempt began.
pub(super) struct Observer<'e> {
    ep: &'e EndpointRuntime,
    span: Span,
    #[cfg(feature = "opentelemetry")]
    measure: Option<Measure<'e>>,
}

/// What the metrics of a delivery need.
#[cfg(feature = "opentelemetry")]
struct Measure<'e> {
    metrics: &'e Metrics,
    attributes: &'e [opentelemetry::KeyValue],
    /// When the delivery was taken, kept as the first attempt's start: one reading of the
    /// clock serves both.
    taken: Option<SystemTime>,
    /// When the attempt in flight began.
    started: Option<SystemTime>,
}

impl<'e> Observer<'e> {
    /// Watch a delivery just taken, of a type `found` handles (or of one the endpoint does
    /// not know): counted as consumed, its time in the queue recorded.
    #[inline]
    pub(super) fn new(
        ep: &'e EndpointRuntime,
        envelope: &Envelope,
        found: Option<&'e Handlers>,
    ) -> Self {
        #[cfg(not(feature = "opentelemetry"))]
        let _ = (envelope, found);
        Observer {
            ep,
            span: Span::none(),
            #[cfg(feature = "opentelemetry")]
            measure: measure(ep, envelope, found),
        }
    }

    /// Attempt `number` begins: its span (the previous attempt's ends), and it counts as in
    /// flight.
    #[inline]
    pub(super) fn begin(&mut self, envelope: &Envelope, number: u32) {
        self.span = match self.ep.runtime.telemetry.spans_wanted() {
            true => process_span(self.ep, envelope, number),
            false => Span::none(),
        };
        #[cfg(feature = "opentelemetry")]
        {
            if let Some(m) = &mut self.measure {
                m.metrics.in_flight.add(1, m.attributes);
                m.started = Some(m.taken.take().unwrap_or_else(SystemTime::now));
            }
        }
    }

    /// Run `work` inside the current attempt's span.
    #[inline]
    pub(super) fn run<'a, F: Future>(&'a self, work: Pin<&'a mut F>) -> InSpan<'a, F> {
        in_span(&self.span, work)
    }

    /// Run `f` inside the current attempt's span, for what it logs.
    pub(super) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        self.span.in_scope(f)
    }

    /// The current attempt ended, failed with `failure` or not.
    #[inline]
    pub(super) fn ended(&mut self, failure: Option<&Failure>) {
        if let Some(failure) = failure {
            if !self.span.is_disabled() {
                self.span.record("error.type", failure.error_type());
                self.span.record("otel.status_code", "error");
            }
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(m) = &mut self.measure {
            if let Some(started) = m.started.take() {
                m.metrics.in_flight.add(-1, m.attributes);
                let took = started.elapsed().unwrap_or_default().as_secs_f64();
                m.metrics.duration.record(took, m.attributes);
            }
        }
    }

    /// The delivery (or, with [`Settle::Retry`], its current attempt) was settled so.
    #[inline]
    pub(super) fn settled(&self, settle: Settle) {
        if !self.span.is_disabled() {
            self.span.record("messaging.bus.settle", settle.as_str());
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(m) = &self.measure {
            match settle {
                Settle::Retry | Settle::DelayedRetry => m.metrics.retries.add(1, m.attributes),
                Settle::ErrorQueue => m.metrics.dead_lettered.add(1, m.attributes),
                Settle::Ack | Settle::Requeue => {}
            }
        }
    }
}

#[cfg(feature = "opentelemetry")]
impl Drop for Observer<'_> {
    /// A delivery abandoned in the middle of an attempt (the shutdown's abort) leaves the
    /// in-flight count too.
    fn drop(&mut self) {
        if let Some(m) = &self.measure {
            if m.started.is_some() {
                m.metrics.in_flight.add(-1, m.attributes);
            }
        }
    }
}

/// Count a delivery as consumed and record its age; what its attempts are measured with.
#[cfg(feature = "opentelemetry")]
fn measure<'e>(
    ep: &'e EndpointRuntime,
    envelope: &Envelope,
    found: Option<&'e Handlers>,
) -> Option<Measure<'e>> {
    let metrics = ep.runtime.telemetry.metrics()?;
    let attributes = match found {
        Some(handlers) => handlers.attributes.as_deref()?,
        None => ep.other_attributes.as_deref()?,
    };
    metrics.consumed.add(1, attributes);
    // One reading of the clock for the age and the first attempt's start: the wall clock, which
    // the age needs, serves for durations too (a reading is what a message costs most here).
    let now = SystemTime::now();
    if let Some(sent_at) = envelope.headers.sent_at {
        // A sender's clock ahead of ours makes no negative age.
        let age = now.duration_since(sent_at).unwrap_or_default();
        metrics.age.record(age.as_secs_f64(), attributes);
    }
    Some(Measure {
        metrics,
        attributes,
        taken: Some(now),
        started: None,
    })
}

/// The span of attempt `attempt` at a delivery. A root of its own (not a child of whatever
/// span the worker runs in): its parent, if any, is the one its headers name.
#[cold]
#[inline(never)]
fn process_span(ep: &EndpointRuntime, envelope: &Envelope, attempt: u32) -> Span {
    let headers = &envelope.headers;
    let endpoint = &*ep.name;
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = %format_args!("process {endpoint}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = ep.runtime.telemetry.system(),
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = endpoint,
        messaging.consumer.group.name = endpoint,
        messaging.message.id = headers.message_id.as_str(),
        messaging.message.conversation_id = headers.conversation_id(),
        messaging.message.body.size = body_size(&envelope.body),
        messaging.bus.message.type = &*headers.message_type,
        messaging.bus.correlation_id = headers.correlation_id(),
        messaging.bus.attempt = attempt,
        messaging.bus.settle = Empty,
        error.type = Empty,
    );
    #[cfg(feature = "opentelemetry")]
    crate::telemetry::adopt_parent(&span, headers);
    span
}

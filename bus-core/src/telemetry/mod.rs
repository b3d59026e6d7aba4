//! Telemetry: the spans the bus makes around what it sends and handles, and, with the
//! `opentelemetry` feature, the W3C trace context it carries in message headers and the metrics
//! it records. The names follow OpenTelemetry's messaging semantic conventions;
//! `docs/architecture.md` lists them all.
//!
//! Spans are plain `tracing` spans, made whatever the features: whoever listens (a log
//! formatter, `tracing-opentelemetry`) gets them, and with nobody listening a span costs one
//! atomic load. A producer span, `send <destination>` (or `publish <event>`), is made for
//! each message the bus sends, and for each one a handler stages through its context (inside
//! the handler's span, so the trace goes on); a consumer span, `process <endpoint>`, wraps each
//! handler attempt, so every event a handler logs carries the message's id, type, endpoint and
//! correlation id.
//!
//! With the feature, the producer span's trace context travels in the
//! [`traceparent`](crate::header::TRACEPARENT) and [`tracestate`](crate::header::TRACESTATE)
//! headers, and the consumer span becomes its child on the receiving side, whichever process
//! (or language) that is. The metrics are recorded with the global meter provider's meter
//! [`METER_NAME`]; install the provider before building the bus, whose instruments are made
//! once, when it is built.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::field::Empty;
use tracing::Span;

use crate::envelope::{Body, Headers};
use crate::error::{BusError, TransportError};
use crate::transport::{Destination, Outgoing};

#[cfg(feature = "opentelemetry")]
mod metrics;
#[cfg(feature = "opentelemetry")]
mod propagation;

#[cfg(feature = "opentelemetry")]
pub(crate) use metrics::{consumer_attributes, Metrics, Sent};
#[cfg(feature = "opentelemetry")]
pub(crate) use propagation::{adopt_parent, TraceHeaders};

/// The name of the meter the bus records its metrics with.
pub const METER_NAME: &str = "bus";

/// The names of the metrics the bus records (with the `opentelemetry` feature).
pub mod metric {
    /// Counter: messages the transport accepted from this bus, by destination and type.
    pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
    /// Counter: deliveries taken from an endpoint's queue.
    pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
    /// Histogram, seconds: how long each handler attempt took.
    pub const PROCESS_DURATION: &str = "messaging.process.duration";
    /// Counter: failed attempts retried, at once or after a delay.
    pub const RETRIES: &str = "messaging.bus.retries";
    /// Counter: messages moved to an error queue.
    pub const DEAD_LETTERED: &str = "messaging.bus.dead_lettered";
    /// Up-down counter: handler attempts running now.
    pub const HANDLERS_IN_FLIGHT: &str = "messaging.bus.handlers.in_flight";
    /// Histogram, seconds: how long a delivery waited, from its send time to its receipt.
    pub const MESSAGE_AGE: &str = "messaging.bus.message.age";
}

/// The `messaging.system` attribute of a transport, from its
/// [`Transport::name`](crate::Transport::name): the broker's name where it differs from the
/// transport's (`amqp` is `rabbitmq`), the transport's own otherwise (`nats`, `redis`,
/// `memory`).
///
/// ```
/// assert_eq!(bus_core::telemetry::messaging_system("amqp"), "rabbitmq");
/// assert_eq!(bus_core::telemetry::messaging_system("nats"), "nats");
/// ```
pub fn messaging_system(transport: &str) -> &str {
    match transport {
        "amqp" => "rabbitmq",
        other => other,
    }
}

/// A bus's telemetry: whether it is on, its `messaging.system`, and its instruments.
pub(crate) struct Telemetry {
    on: bool,
    system: Arc<str>,
    #[cfg(feature = "opentelemetry")]
    metrics: Option<Metrics>,
}

impl Telemetry {
    /// Telemetry of a bus on the transport named `transport`. `destinations` are the message
    /// types the bus knows, each with where it goes: the attribute sets of what it sends are
    /// made from them once, here.
    pub(crate) fn new<'a>(
        on: bool,
        transport: &str,
        destinations: impl Iterator<Item = (&'static str, &'a str)>,
    ) -> Self {
        let system: Arc<str> = Arc::from(messaging_system(transport));
        #[cfg(not(feature = "opentelemetry"))]
        let _ = destinations;
        Telemetry {
            on,
            #[cfg(feature = "opentelemetry")]
            metrics: on.then(|| Metrics::new(&system, destinations)),
            system,
        }
    }

    /// No telemetry at all.
    pub(crate) fn off() -> Self {
        Telemetry {
            on: false,
            system: Arc::from(""),
            #[cfg(feature = "opentelemetry")]
            metrics: None,
        }
    }

    /// The `messaging.system` attribute.
    pub(crate) fn system(&self) -> &str {
        &self.system
    }

    /// The instruments, when telemetry is on.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    /// Whether a span made now could be listened to: telemetry on, and a subscriber interested
    /// in `INFO` (one atomic load). Checked before a span is made, so that with nobody
    /// listening the making, out of line, is skipped outright.
    #[inline]
    pub(crate) fn spans_wanted(&self) -> bool {
        self.on && tracing::level_enabled!(tracing::Level::INFO)
    }

    /// The producer span of one message, with its trace context written into the message's
    /// headers, so that the message's handling becomes its child.
    #[inline]
    pub(crate) fn send_span(&self, out: &mut Outgoing) -> Span {
        if !self.spans_wanted() {
            return Span::none();
        }
        self.traced_send(out)
    }

    #[cold]
    #[inline(never)]
    fn traced_send(&self, out: &mut Outgoing) -> Span {
        let envelope = &out.envelope;
        let span = producer_span(
            &self.system,
            &out.destination,
            Some(&envelope.headers),
            body_size(&envelope.body),
        );
        #[cfg(feature = "opentelemetry")]
        if let Some(trace) = TraceHeaders::of(&span) {
            trace.write(&mut out.envelope.headers);
        }
        span
    }

    /// One producer span around a batch of messages to `destination`, whose trace context
    /// each message of the batch gets ([`Producing::stamp`]): a span per message would cost
    /// more than sending it.
    pub(crate) fn batch_span(&self, destination: &Destination) -> Producing {
        if !self.spans_wanted() {
            return Producing {
                span: Span::none(),
                #[cfg(feature = "opentelemetry")]
                trace: None,
            };
        }
        let span = producer_span(&self.system, destination, None, None);
        Producing {
            #[cfg(feature = "opentelemetry")]
            trace: TraceHeaders::of(&span),
            span,
        }
    }

    /// What `out` counts as in the sent-messages counter once the transport took it.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn sending(&self, out: &Outgoing) -> Sent<'_> {
        match &self.metrics {
            Some(metrics) => metrics.sending(out),
            None => Sent::nothing(),
        }
    }

    /// What `out` counts as once the transport took it: nothing, without the feature.
    #[cfg(not(feature = "opentelemetry"))]
    pub(crate) fn sending(&self, _out: &Outgoing) -> Sent<'_> {
        Sent(std::marker::PhantomData)
    }

    /// Whether sends are counted, so that a caller can skip preparing the count.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn counts_sends(&self) -> bool {
        self.metrics.is_some()
    }

    /// Whether sends are counted: never, without the feature.
    #[cfg(not(feature = "opentelemetry"))]
    pub(crate) fn counts_sends(&self) -> bool {
        false
    }
}

/// A send to count once the transport took it: nothing to count without the feature.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) struct Sent<'a>(std::marker::PhantomData<&'a ()>);

#[cfg(not(feature = "opentelemetry"))]
impl Sent<'_> {
    /// `count` messages were sent.
    pub(crate) fn done(self, _count: usize) {}
}

/// The producer span of a batch and the trace context its messages carry.
pub(crate) struct Producing {
    pub(crate) span: Span,
    #[cfg(feature = "opentelemetry")]
    trace: Option<TraceHeaders>,
}

impl Producing {
    /// Write the batch's trace context into `out`'s headers.
    pub(crate) fn stamp(&self, out: &mut Outgoing) {
        #[cfg(feature = "opentelemetry")]
        if let Some(trace) = &self.trace {
            trace.write(&mut out.envelope.headers);
        }
        #[cfg(not(feature = "opentelemetry"))]
        let _ = out;
    }

    /// The batch holds `count` messages.
    pub(crate) fn count(&self, count: usize) {
        if !self.span.is_disabled() {
            self.span.record("messaging.batch.message_count", count);
        }
    }
}

/// The body's size in bytes, when it is bytes (a typed body in process has none).
pub(crate) fn body_size(body: &Body) -> Option<usize> {
    match body {
        Body::Bytes(bytes) => Some(bytes.len()),
        Body::Message(_) => None,
    }
}

/// `work`, run inside `span`: entered around each poll, so that what `work` logs or spans
/// nests under it. A future of its own rather than an `async fn`, so that with nobody
/// listening (a disabled span) it adds one branch to each poll and nothing else.
#[inline]
pub(crate) fn in_span<'a, F: Future>(span: &'a Span, work: Pin<&'a mut F>) -> InSpan<'a, F> {
    InSpan { span, work }
}

/// What [`in_span`] returns.
pub(crate) struct InSpan<'a, F> {
    span: &'a Span,
    work: Pin<&'a mut F>,
}

impl<F: Future> Future for InSpan<'_, F> {
    type Output = F::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if this.span.is_disabled() {
            return this.work.as_mut().poll(cx);
        }
        let _entered = this.span.enter();
        this.work.as_mut().poll(cx)
    }
}

/// Record on a producer span that its send failed.
pub(crate) fn send_failed(span: &Span, error: &BusError) {
    if !span.is_disabled() {
        span.record("error.type", send_error_type(error));
        span.record("otel.status_code", "error");
    }
}

/// A send error's `error.type`: a few words, so that the attribute keeps few values.
fn send_error_type(error: &BusError) -> &'static str {
    match error {
        BusError::Transport(error) => match error {
            TransportError::Unroutable(_) => "unroutable",
            TransportError::Timeout { .. } => "timeout",
            TransportError::Connection { .. } => "connection",
            TransportError::Refused { .. } => "refused",
            TransportError::Closed => "closed",
            _ => "transport",
        },
        BusError::Batch { error, .. } => send_error_type(error),
        BusError::Codec(_) => "codec",
        BusError::ShutDown => "shut_down",
        BusError::ContextClosed => "context_closed",
        _ => "bus",
    }
}

/// A producer span: `send <endpoint>` for a command, `publish <event>` for an event. Without
/// `headers` it covers a batch, whose size is recorded later.
fn producer_span(
    system: &str,
    destination: &Destination,
    headers: Option<&Headers>,
    body_size: Option<usize>,
) -> Span {
    let (operation, name) = match destination {
        Destination::Endpoint(endpoint) | Destination::ErrorQueue(endpoint) => ("send", endpoint),
        Destination::Event(event) => ("publish", event),
        Destination::Reply(address) => ("reply", address),
    };
    tracing::info_span!(
        "send",
        otel.name = %format_args!("{operation} {name}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = operation,
        messaging.destination.name = &**name,
        messaging.message.id = headers.map(|h| h.message_id.as_str()),
        messaging.message.conversation_id = headers.and_then(Headers::conversation_id),
        messaging.message.body.size = body_size,
        messaging.bus.message.type = headers.map(|h| &*h.message_type),
        messaging.bus.correlation_id = headers.and_then(Headers::correlation_id),
        messaging.batch.message_count = Empty,
        error.type = Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_are_named_as_the_conventions_name_them() {
        assert_eq!(messaging_system("amqp"), "rabbitmq");
        assert_eq!(messaging_system("nats"), "nats");
        assert_eq!(messaging_system("redis"), "redis");
        assert_eq!(messaging_system("memory"), "memory");
        assert_eq!(messaging_system("kafka"), "kafka");
    }
}

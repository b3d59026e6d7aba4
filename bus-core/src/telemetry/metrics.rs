//! The bus's metrics: instruments made once per bus from the global meter provider, and the
//! attribute sets they are recorded with, made once per message type (what a bus sends) and
//! per endpoint and message type (what an endpoint handles), so that recording a measurement
//! allocates nothing.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use opentelemetry::KeyValue;
use rustc_hash::FxHashMap;

use super::{metric, METER_NAME};
use crate::transport::{Destination, Outgoing};

/// Bucket boundaries, in seconds, of the duration histograms: OpenTelemetry's advice for
/// messaging durations.
const SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A bus's instruments.
pub(crate) struct Metrics {
    sent: Counter<u64>,
    pub(crate) consumed: Counter<u64>,
    pub(crate) duration: Histogram<f64>,
    pub(crate) retries: Counter<u64>,
    pub(crate) dead_lettered: Counter<u64>,
    pub(crate) in_flight: UpDownCounter<i64>,
    pub(crate) age: Histogram<f64>,
    system: Arc<str>,
    /// What a message of each type the bus knows is counted with when sent.
    sent_attributes: FxHashMap<&'static str, Box<[KeyValue]>>,
}

impl Metrics {
    /// The instruments, from the global meter provider as it is now.
    pub(crate) fn new<'a>(
        system: &Arc<str>,
        destinations: impl Iterator<Item = (&'static str, &'a str)>,
    ) -> Self {
        let meter = opentelemetry::global::meter(METER_NAME);
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS.to_vec())
                .build()
        };
        let messages = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit("{message}")
                .with_description(description)
                .build()
        };
        Metrics {
            sent: messages(
                metric::SENT_MESSAGES,
                "Messages the transport accepted from this bus",
            ),
            consumed: messages(
                metric::CONSUMED_MESSAGES,
                "Messages delivered to an endpoint",
            ),
            duration: seconds(metric::PROCESS_DURATION, "Duration of each handler attempt"),
            retries: messages(metric::RETRIES, "Failed handler attempts retried"),
            dead_lettered: messages(metric::DEAD_LETTERED, "Messages moved to an error queue"),
            in_flight: meter
                .i64_up_down_counter(metric::HANDLERS_IN_FLIGHT)
                .with_unit("{attempt}")
                .with_description("Handler attempts running now")
                .build(),
            age: seconds(
                metric::MESSAGE_AGE,
                "Time from a message's send to its delivery",
            ),
            sent_attributes: destinations
                .map(|(message_type, to)| (message_type, sent_attributes(system, to, message_type)))
                .collect(),
            system: system.clone(),
        }
    }

    /// What `out` counts as once sent: the attribute set of its type, made here only for a
    /// type the bus did not know when it was built.
    pub(crate) fn sending(&self, out: &Outgoing) -> Sent<'_> {
        let message_type = &*out.envelope.headers.message_type;
        let attributes = match self.sent_attributes.get(message_type) {
            Some(known) => Cow::Borrowed(&**known),
            None => {
                let to = match &out.destination {
                    Destination::Endpoint(name)
                    | Destination::ErrorQueue(name)
                    | Destination::Event(name)
                    | Destination::Reply(name) => name,
                };
                Cow::Owned(sent_attributes(&self.system, to, message_type).into_vec())
            }
        };
        Sent(Some((&self.sent, attributes)))
    }
}

/// A send to count once the transport took it.
#[must_use = "counted only by `done`"]
pub(crate) struct Sent<'a>(Option<(&'a Counter<u64>, Cow<'a, [KeyValue]>)>);

impl Sent<'_> {
    /// Nothing to count: metrics are off.
    pub(crate) fn nothing() -> Self {
        Sent(None)
    }

    /// `count` messages were sent.
    pub(crate) fn done(self, count: usize) {
        if let Some((counter, attributes)) = self.0 {
            counter.add(count as u64, &attributes);
        }
    }
}

/// The attributes of a message sent to `destination`.
fn sent_attributes(system: &str, destination: &str, message_type: &str) -> Box<[KeyValue]> {
    Box::new([
        KeyValue::new("messaging.system", system.to_string()),
        KeyValue::new("messaging.destination.name", destination.to_string()),
        KeyValue::new("messaging.bus.message.type", message_type.to_string()),
    ])
}

/// The attributes of what endpoint `endpoint` handles: of messages of type `message_type`, or
/// without a type, for messages of a type the endpoint has no handler for (their type comes
/// from the wire and could take any value).
pub(crate) fn consumer_attributes(
    system: &str,
    endpoint: &str,
    message_type: Option<&str>,
) -> Box<[KeyValue]> {
    let mut set = vec![
        KeyValue::new("messaging.system", system.to_string()),
        KeyValue::new("messaging.destination.name", endpoint.to_string()),
        KeyValue::new("messaging.consumer.group.name", endpoint.to_string()),
    ];
    if let Some(message_type) = message_type {
        set.push(KeyValue::new(
            "messaging.bus.message.type",
            message_type.to_string(),
        ));
    }
    set.into_boxed_slice()
}

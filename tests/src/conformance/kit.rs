//! The suite's kit: the small steps its tests are written in (declare, send, subscribe, wait
//! for a delivery or for quiet, settle) and the hard deadline every test runs under. Each step
//! fails the test with a message that names what it was doing, so a test body reads as the
//! scenario it checks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{
    Body, Delivery, Destination, EndpointTopology, Envelope, Headers, Outgoing, SubscribeOptions,
    Subscription, Topology, Transport,
};
use tokio::task::JoinHandle;

use super::factory::TransportFactory;
use super::tally::Tally;
use crate::eventually;

/// Print why a test is skipped on this transport.
pub(super) fn skip(test: &str, f: &dyn TransportFactory, reason: &str) {
    println!("conformance {test:<27} [{}] skipped: {reason}", f.name());
}

/// Run a test body under a hard deadline: a hang is a failure.
pub(super) async fn within<T>(
    test: &str,
    f: &dyn TransportFactory,
    limit: Duration,
    body: impl Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(value) => value,
        Err(_) => {
            println!(
                "conformance {test:<27} [{}] FAILED: no result within {limit:?}",
                f.name()
            );
            panic!(
                "{test} [{}]: did not finish within {limit:?}; a hang is a failure",
                f.name()
            )
        }
    }
}

/// The message type of the raw envelopes the tests send.
pub(super) const RAW_TYPE: &str = "conformance.Raw";

/// A topology of endpoints, each with the events it subscribes to.
pub(super) fn topology(endpoints: &[(&str, &[&str])]) -> Topology {
    Topology {
        endpoints: endpoints
            .iter()
            .map(|(name, events)| EndpointTopology {
                name: name.to_string(),
                events: events.iter().map(|e| e.to_string()).collect(),
                commands: Vec::new(),
            })
            .collect(),
    }
}

/// Declare `endpoints` (with their event subscriptions) on `t`.
pub(super) async fn declare(t: &dyn Transport, endpoints: &[(&str, &[&str])]) {
    t.declare(&topology(endpoints))
        .await
        .unwrap_or_else(|e| panic!("declaring {endpoints:?} failed: {e}"));
}

/// Bare headers: an id, a type and an opaque content type.
pub(super) fn raw_headers(id: &str, message_type: &str) -> Headers {
    Headers {
        message_id: id.into(),
        message_type: message_type.to_string().into(),
        content_type: "application/octet-stream".into(),
        ..Headers::default()
    }
}

/// A raw envelope whose body names its id.
pub(super) fn raw(id: &str) -> Envelope {
    Envelope::from_bytes(
        raw_headers(id, RAW_TYPE),
        format!("{{\"id\":\"{id}\"}}").into_bytes(),
    )
}

/// `envelope` addressed to `endpoint`'s queue, without delay.
pub(super) fn to_endpoint(endpoint: &str, envelope: Envelope) -> Outgoing {
    Outgoing::new(Destination::Endpoint(endpoint.into()), envelope)
}

/// Send [`raw`]`(id)` to `endpoint`, recording it as sent, then as confirmed once `send`
/// returned `Ok`.
pub(super) async fn send_raw(t: &dyn Transport, endpoint: &str, id: &str, tally: &Tally) {
    tally.sent(id);
    t.send(to_endpoint(endpoint, raw(id)))
        .await
        .unwrap_or_else(|e| panic!("sending {id} to {endpoint} failed: {e}"));
    tally.confirmed(id);
}

/// Send `{prefix}-{n}` for each `n`, one after another, in a task.
pub(super) fn produce(
    t: Arc<dyn Transport>,
    endpoint: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    tally: &Tally,
) -> JoinHandle<()> {
    produce_paced(t, endpoint, prefix, range, tally, Duration::ZERO)
}

/// [`produce`], pausing `pace` after each send.
pub(super) fn produce_paced(
    t: Arc<dyn Transport>,
    endpoint: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    tally: &Tally,
    pace: Duration,
) -> JoinHandle<()> {
    let endpoint = endpoint.to_string();
    let prefix = prefix.to_string();
    let tally = tally.clone();
    tokio::spawn(async move {
        for n in range {
            send_raw(&*t, &endpoint, &format!("{prefix}-{n}"), &tally).await;
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    })
}

/// Await a task, passing its panic on.
pub(super) async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a task of the test was cancelled: {e}"),
    }
}

/// Subscribe to `endpoint` with `prefetch`.
pub(super) async fn subscribe(
    t: &dyn Transport,
    endpoint: &str,
    prefetch: usize,
) -> Box<dyn Subscription> {
    t.subscribe(endpoint, SubscribeOptions { prefetch })
        .await
        .unwrap_or_else(|e| panic!("subscribing to {endpoint} failed: {e}"))
}

/// The next delivery, or `None` if none came within `limit`. A failed or ended subscription
/// is a test failure.
pub(super) async fn next_within(
    sub: &mut Box<dyn Subscription>,
    limit: Duration,
) -> Option<Delivery> {
    match tokio::time::timeout(limit, sub.next()).await {
        Err(_) => None,
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("the subscription failed: {e}"),
        Ok(None) => panic!("the subscription ended while the test still consumed from it"),
    }
}

/// No delivery arrives within the quiet period.
pub(super) async fn expect_quiet(
    f: &dyn TransportFactory,
    sub: &mut Box<dyn Subscription>,
    what: &str,
) {
    if let Some(d) = next_within(sub, f.quiet_period()).await {
        let id = d.envelope().headers.message_id.clone();
        let redelivered = d.redelivered();
        drop(d);
        panic!(
            "[{}] {what}: unexpected delivery of `{id}` (redelivered: {redelivered})",
            f.name()
        );
    }
}

/// The queue of an endpoint is empty (where the transport can tell).
pub(super) async fn expect_empty(f: &dyn TransportFactory, endpoint: &str) {
    let mut depth = f.queue_depth(endpoint).await;
    // Settlements may still be on their way to the broker.
    for _ in 0..20 {
        if depth.is_none_or(|d| d == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        depth = f.queue_depth(endpoint).await;
    }
    panic!(
        "[{}] queue `{endpoint}` should be empty, holds {depth:?}",
        f.name()
    );
}

/// The message id of a delivery.
pub(super) fn id_of(d: &Delivery) -> String {
    d.envelope().headers.message_id.to_string()
}

/// The body of an envelope, which must be bytes.
pub(super) fn bytes_of(envelope: &Envelope) -> &[u8] {
    match &envelope.body {
        Body::Bytes(b) => b.as_ref(),
        Body::Message(m) => panic!(
            "expected a body of bytes, got the typed message {}",
            m.message_name()
        ),
    }
}

/// Ack a delivery; a failed ack fails the test.
pub(super) async fn ack(d: Delivery) {
    let id = id_of(&d);
    d.ack()
        .await
        .unwrap_or_else(|e| panic!("ack of {id} failed: {e}"));
}

/// Spin until `done` holds, up to `limit`; fails the test with `what` otherwise.
pub(super) async fn wait_for(limit: Duration, what: &str, done: impl FnMut() -> bool) {
    assert!(eventually(limit, done).await, "{what} (waited {limit:?})");
}

//! The operations every transport offers beside moving messages: looking into a queue
//! ([`Transport::browse`](bus_core::Transport::browse)), taking chosen messages out of it
//! ([`Transport::remove`](bus_core::Transport::remove)), listing the endpoints
//! ([`Transport::endpoints`](bus_core::Transport::endpoints)), removing what a bus declared
//! ([`Transport::teardown`](bus_core::Transport::teardown)), and sending many messages with
//! few round trips ([`Bus::send_all`](bus_core::Bus::send_all)).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{
    header, Bus, EndpointInfo, Envelope, HandlerError, MessageId, QueueKind, Transport,
    TransportError,
};

use super::bus_kit::{send_work, sender, work_instance, Flaky, Work};
use super::factory::TransportFactory;
use super::kit::{
    declare, expect_quiet, id_of, next_within, raw, send_raw, skip, subscribe, to_endpoint,
    topology, wait_for, within,
};
use super::tally::{assert_clean, report, Tally};

/// Browsing: messages that failed for good are listed from the error queue, oldest first, with
/// their failure headers, and stay there (a second look sees the same); messages waiting in
/// an input queue nobody consumes are listed the same way and are still delivered afterwards.
pub async fn browse_queues(f: &dyn TransportFactory) {
    within("browse_queues", f, Duration::from_secs(60), browse_body(f)).await
}

async fn browse_body(f: &dyn TransportFactory) {
    const TEST: &str = "browse_queues";
    let started = Instant::now();
    let tally = Tally::default();

    // The error queue: three commands whose handler always fails, without retries.
    let endpoint = "conf-browse-errors";
    let t = f.transport("browse-errors").await;
    let bus = failing_endpoint(t.clone(), endpoint, &["bad-0", "bad-1", "bad-2"]).await;
    let first = browse(&*t, endpoint, QueueKind::Errors).await;
    let errors: Vec<String> = first
        .iter()
        .map(|e| {
            e.headers
                .get(header::FAILURE_ERROR)
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        errors,
        ["refusing bad-0", "refusing bad-1", "refusing bad-2"],
        "[{}] the error queue, oldest first, with the failure headers",
        f.name()
    );
    let again = browse(&*t, endpoint, QueueKind::Errors).await;
    assert_eq!(
        again.len(),
        3,
        "[{}] browsing leaves the messages in the error queue",
        f.name()
    );
    let limited = t
        .browse(endpoint, QueueKind::Errors, 2)
        .await
        .expect("browsing with a limit");
    assert_eq!(limited.len(), 2, "[{}] the limit is kept", f.name());

    // The same through the bus, typed.
    let failed = bus
        .failed_messages(endpoint, 10)
        .await
        .unwrap_or_else(|e| panic!("[{}] reading failed messages: {e}", f.name()));
    assert_eq!(failed.len(), 3, "[{}] three failed messages", f.name());
    let last = &failed[2];
    assert_eq!(last.reason(), Some("handler-error"));
    assert_eq!(last.endpoint(), Some(endpoint));
    assert_eq!(last.attempts(), Some(1));
    let cmd: Flaky = last
        .decode(bus.codecs())
        .unwrap_or_else(|e| panic!("[{}] decoding a failed message: {e}", f.name()));
    assert_eq!(cmd.id, "bad-2");

    // The input queue: two messages nobody has consumed yet.
    let input = "conf-browse-input";
    declare(&*t, &[(input, &[])]).await;
    for id in ["in-0", "in-1"] {
        send_raw(&*t, input, id, &tally).await;
    }
    let waiting = browse(&*t, input, QueueKind::Input).await;
    let ids: Vec<&str> = waiting
        .iter()
        .map(|e| e.headers.message_id.as_str())
        .collect();
    assert_eq!(ids, ["in-0", "in-1"], "[{}] the input queue", f.name());
    let mut sub = subscribe(&*t, input, 10).await;
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a browsed message is still delivered")
            .expect("the subscription is open")
            .expect("a delivery");
        tally.handled(&id_of(&d), "consumer");
        d.ack().await.expect("ack");
    }
    sub.cancel().await;
    let fig = report(TEST, f, &tally, started, "");
    assert_clean(TEST, f, &fig, 0);
}

async fn browse(t: &dyn Transport, endpoint: &str, queue: QueueKind) -> Vec<Envelope> {
    t.browse(endpoint, queue, 100)
        .await
        .unwrap_or_else(|e| panic!("browsing the {queue} of {endpoint} failed: {e}"))
}

/// A bus hosting `endpoint` with a handler that always fails, without retries, that has sent
/// it a command for each of `ids` (in that order) and stopped once all of them were in the
/// error queue.
async fn failing_endpoint(t: Arc<dyn Transport>, endpoint: &str, ids: &[&str]) -> Bus {
    let bus = Bus::builder()
        .transport_arc(t)
        .without_discovery()
        .handler(endpoint.to_string(), |cmd: Flaky| async move {
            Err::<(), _>(HandlerError::new(format!("refusing {}", cmd.id)))
        })
        .route::<Flaky>(endpoint)
        .endpoint(endpoint, |e| {
            e.immediate_retries(0)
                .delayed_retries(0, Duration::ZERO)
                .concurrency(1)
        })
        .start()
        .await
        .expect("the failing endpoint starts");
    for id in ids {
        bus.send(Flaky {
            id: id.to_string(),
            fail_times: u32::MAX,
        })
        .await
        .expect("sending a failing command");
    }
    let failed = ids.len() as u64;
    wait_for(Duration::from_secs(30), "every command failed", || {
        bus.stats().dead_lettered == failed
    })
    .await;
    bus.shutdown().await;
    bus
}

/// The message ids of envelopes.
fn ids_of(envelopes: &[Envelope]) -> Vec<MessageId> {
    envelopes
        .iter()
        .map(|e| e.headers.message_id.clone())
        .collect()
}

/// Removing by id: of three failed messages in an error queue (made by a real failing
/// handler), the middle one is removed; browsing then shows the other two, in order, and
/// removing it again (with an id that was never there) removes nothing. The same in an input
/// queue nobody consumes, whose other messages are then still delivered, in order; skipped
/// where the transport refuses to remove from an input queue (AMQP quorum queues).
pub async fn remove_by_id(f: &dyn TransportFactory) {
    within("remove_by_id", f, Duration::from_secs(60), remove_body(f)).await
}

async fn remove_body(f: &dyn TransportFactory) {
    const TEST: &str = "remove_by_id";
    let started = Instant::now();
    let endpoint = "conf-remove-errors";
    let t = f.transport("remove-errors").await;
    failing_endpoint(t.clone(), endpoint, &["rm-0", "rm-1", "rm-2"]).await;
    let failed = ids_of(&browse(&*t, endpoint, QueueKind::Errors).await);
    assert_eq!(failed.len(), 3, "[{}] three failed messages", f.name());
    let middle = failed[1].clone();
    let removed = t
        .remove(endpoint, QueueKind::Errors, std::slice::from_ref(&middle))
        .await
        .unwrap_or_else(|e| panic!("[{}] removing from the error queue failed: {e}", f.name()));
    assert_eq!(
        removed,
        std::slice::from_ref(&middle),
        "[{}] the middle one",
        f.name()
    );
    let left = browse(&*t, endpoint, QueueKind::Errors).await;
    assert_eq!(
        ids_of(&left),
        [failed[0].clone(), failed[2].clone()],
        "[{}] the other two stay, in order",
        f.name()
    );
    let errors: Vec<&str> = left
        .iter()
        .map(|e| e.headers.get(header::FAILURE_ERROR).unwrap_or(""))
        .collect();
    assert_eq!(errors, ["refusing rm-0", "refusing rm-2"], "[{}]", f.name());
    let again = t
        .remove(
            endpoint,
            QueueKind::Errors,
            &[middle, MessageId::from("conf-remove-never-sent")],
        )
        .await
        .unwrap_or_else(|e| panic!("[{}] removing again failed: {e}", f.name()));
    assert!(
        again.is_empty(),
        "[{}] removing again removes nothing: {again:?}",
        f.name()
    );
    assert_eq!(
        browse(&*t, endpoint, QueueKind::Errors).await.len(),
        2,
        "[{}] and leaves the others",
        f.name()
    );

    // An input queue nobody consumes yet.
    let input = "conf-remove-input";
    declare(&*t, &[(input, &[])]).await;
    for id in ["in-0", "in-1", "in-2"] {
        t.send(to_endpoint(input, raw(id)))
            .await
            .unwrap_or_else(|e| panic!("sending {id} failed: {e}"));
    }
    let removed = match t
        .remove(input, QueueKind::Input, &[MessageId::from("in-1")])
        .await
    {
        Err(TransportError::Unsupported { operation, .. }) => {
            skip(TEST, f, &format!("the input queue part: {operation}"));
            return;
        }
        other => other
            .unwrap_or_else(|e| panic!("[{}] removing from the input queue failed: {e}", f.name())),
    };
    assert_eq!(removed, ["in-1"], "[{}] from the input queue", f.name());
    let waiting = ids_of(&browse(&*t, input, QueueKind::Input).await);
    assert_eq!(waiting, ["in-0", "in-2"], "[{}] the input queue", f.name());
    let mut sub = subscribe(&*t, input, 10).await;
    let mut delivered = Vec::new();
    for _ in 0..2 {
        let d = next_within(&mut sub, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("[{}] a message left in the queue is delivered", f.name()));
        delivered.push(id_of(&d));
        d.ack().await.expect("ack");
    }
    assert_eq!(delivered, ["in-0", "in-2"], "[{}] in order", f.name());
    expect_quiet(f, &mut sub, "the removed message is not delivered").await;
    sub.cancel().await;
    println!(
        "conformance {TEST:<27} [{}] removed 1 of 3 failed and 1 of 3 waiting in {}ms",
        f.name(),
        started.elapsed().as_millis()
    );
}

/// Listing endpoints: a bus with two endpoints, one with messages waiting and the other with a
/// failed message in its error queue. Both are listed, in name order, with the depths the
/// transport can tell; a subscription counts as a consumer where the transport counts them.
/// The suite's endpoints share a broker with other tests, so only these two are looked at.
pub async fn endpoints_listed(f: &dyn TransportFactory) {
    within(
        "endpoints_listed",
        f,
        Duration::from_secs(60),
        endpoints_body(f),
    )
    .await
}

async fn endpoints_body(f: &dyn TransportFactory) {
    const TEST: &str = "endpoints_listed";
    let t = f.transport("endpoints").await;
    let waiting = "conf-endpoints-waiting";
    let failing = "conf-endpoints-failing";
    failing_endpoint(t.clone(), failing, &["ep-bad-0"]).await;
    declare(&*t, &[(waiting, &[])]).await;
    for id in ["ep-0", "ep-1"] {
        t.send(to_endpoint(waiting, raw(id)))
            .await
            .unwrap_or_else(|e| panic!("sending {id} failed: {e}"));
    }
    let listed = match t.endpoints().await {
        Err(TransportError::Unsupported { operation, .. }) => {
            skip(TEST, f, operation);
            return;
        }
        // What lists them is not there (RabbitMQ without its management plugin): skipped
        // like an unreachable broker, unless brokers are required.
        Err(e @ TransportError::Connection { .. }) if !crate::broker::brokers_required() => {
            skip(TEST, f, &e.to_string());
            return;
        }
        other => other.unwrap_or_else(|e| panic!("[{}] listing endpoints failed: {e}", f.name())),
    };
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "[{}] sorted by name", f.name());
    let find = |listed: &[EndpointInfo], name: &str| {
        listed
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("[{}] {name} is listed: {listed:?}", f.name()))
    };
    let w = find(&listed, waiting);
    let x = find(&listed, failing);
    let told = |figure: Option<u64>, want: u64| figure.is_none_or(|n| n == want);
    assert!(
        told(w.depth, 2) && told(w.error_depth, 0),
        "[{}] two waiting, none failed: {w:?}",
        f.name()
    );
    assert!(
        told(x.depth, 0) && told(x.error_depth, 1),
        "[{}] none waiting, one failed: {x:?}",
        f.name()
    );
    assert!(
        told(w.consumers, 0),
        "[{}] nobody consumes {waiting}: {w:?}",
        f.name()
    );

    // A consumer of the failing endpoint's (empty) queue, counted where consumers are.
    let mut sub = subscribe(&*t, failing, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let consumers = loop {
        let listed = t.endpoints().await.expect("listing endpoints again");
        let consumers = find(&listed, failing).consumers;
        if consumers.is_none_or(|n| n >= 1) || Instant::now() > deadline {
            break consumers;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sub.cancel().await;
    // At least: a consumer of the stopped bus may still be on its way out.
    assert!(
        consumers.is_none_or(|n| n >= 1),
        "[{}] a subscription is a consumer: {consumers:?}",
        f.name()
    );
    let shown = |n: Option<u64>| n.map_or("?".to_string(), |n| n.to_string());
    println!(
        "conformance {TEST:<27} [{}] {} endpoints listed; {waiting}: depth {} errors {}; {failing}: depth {} errors {} consumers {}",
        f.name(),
        listed.len(),
        shown(w.depth),
        shown(w.error_depth),
        shown(x.depth),
        shown(x.error_depth),
        shown(consumers),
    );
}

/// Teardown: a dry run lists what a bus declared and removes nothing; the real one removes
/// the same things; a second one finds nothing left.
pub async fn teardown_declared(f: &dyn TransportFactory) {
    within(
        "teardown_declared",
        f,
        Duration::from_secs(60),
        teardown_body(f),
    )
    .await
}

async fn teardown_body(f: &dyn TransportFactory) {
    let t = f.transport("teardown").await;
    let endpoints: &[(&str, &[&str])] = &[
        ("conf-teardown-a", &["conformance.TornEvent"]),
        ("conf-teardown-b", &[]),
    ];
    declare(&*t, endpoints).await;
    let topology = topology(endpoints);
    let planned = t
        .teardown(&topology, true)
        .await
        .unwrap_or_else(|e| panic!("[{}] teardown dry run failed: {e}", f.name()));
    for endpoint in ["conf-teardown-a", "conf-teardown-b"] {
        assert!(
            planned.iter().any(|d| d.name.contains(endpoint)),
            "[{}] the dry run names what {endpoint} has: {planned:?}",
            f.name()
        );
    }
    let still = t.teardown(&topology, true).await.expect("a second dry run");
    assert_eq!(planned, still, "[{}] a dry run removes nothing", f.name());
    let removed = t
        .teardown(&topology, false)
        .await
        .unwrap_or_else(|e| panic!("[{}] teardown failed: {e}", f.name()));
    assert_eq!(
        removed,
        planned,
        "[{}] teardown removes what the dry run listed",
        f.name()
    );
    let left = t.teardown(&topology, true).await.expect("a last dry run");
    assert!(
        left.is_empty(),
        "[{}] nothing is left after teardown: {left:?}",
        f.name()
    );
    // A bus that ran, and scheduled a message: what it made for that (shared by the namespace)
    // goes too, once nothing waits in it.
    let endpoint = "conf-teardown-c";
    let handled = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = handled.clone();
    let bus = Bus::builder()
        .transport_arc(f.transport("teardown-bus").await)
        .without_discovery()
        .handler(endpoint, move |_: Work| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok::<(), HandlerError>(())
            }
        })
        .route::<Work>(endpoint)
        .start()
        .await
        .unwrap_or_else(|e| panic!("[{}] the bus starts: {e}", f.name()));
    let later = bus_core::SendOptions::new().deliver_after(Duration::from_millis(200));
    bus.send_with(Work { id: "later".into() }, later)
        .await
        .unwrap_or_else(|e| panic!("[{}] scheduling: {e}", f.name()));
    wait_for(
        Duration::from_secs(20),
        "the scheduled message handled",
        || handled.load(std::sync::atomic::Ordering::Relaxed) == 1,
    )
    .await;
    bus.shutdown().await;
    let removed_with_bus = bus
        .teardown(false)
        .await
        .unwrap_or_else(|e| panic!("[{}] teardown after a bus ran: {e}", f.name()));
    let left = bus.teardown(true).await.expect("a dry run after it");
    assert!(
        left.is_empty(),
        "[{}] nothing is left of a bus that ran and scheduled: {left:?}",
        f.name()
    );
    println!(
        "conformance {:<27} [{}] removed {} things, and {} of a bus that ran",
        "teardown_declared",
        f.name(),
        removed.len(),
        removed_with_bus.len()
    );
}

/// Batch send: 2,500 commands (three windows) with one `send_all` call are each handled once.
pub async fn send_all_batches(f: &dyn TransportFactory) {
    within(
        "send_all_batches",
        f,
        Duration::from_secs(90),
        send_all_body(f),
    )
    .await
}

async fn send_all_body(f: &dyn TransportFactory) {
    const TEST: &str = "send_all_batches";
    const N: usize = 2_500;
    let started = Instant::now();
    let endpoint = "conf-send-all";
    let tally = Tally::default();
    let consumer = work_instance(
        f.transport("send-all-consumer").await,
        endpoint,
        "consumer",
        &tally,
        bus_core::EndpointConfig::default().concurrency(8),
    )
    .await;
    let bus = sender::<Work>(f.transport("send-all-sender").await, endpoint).await;
    let ids: Vec<String> = (0..N).map(|n| format!("all-{n}")).collect();
    for id in &ids {
        tally.sent(id);
    }
    bus.send_all(ids.iter().map(|id| Work { id: id.clone() }))
        .await
        .unwrap_or_else(|e| panic!("[{}] send_all failed: {e}", f.name()));
    for id in &ids {
        tally.confirmed(id);
    }
    // A plain send after a batch still works.
    send_work(&bus, "single", 1, 1, &tally).await;
    wait_for(Duration::from_secs(60), "every command handled", || {
        tally.distinct() == N + 1
    })
    .await;
    consumer.shutdown().await;
    let fig = report(TEST, f, &tally, started, "");
    assert_clean(TEST, f, &fig, 0);
}

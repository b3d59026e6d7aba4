//! The operations every transport offers beside moving messages: looking into a queue
//! ([`Transport::browse`](bus_core::Transport::browse)), removing what a bus declared
//! ([`Transport::teardown`](bus_core::Transport::teardown)), and sending many messages with
//! few round trips ([`Bus::send_all`](bus_core::Bus::send_all)).

use std::time::{Duration, Instant};

use bus_core::{header, Bus, HandlerError, QueueKind, Transport};

use super::bus_kit::{send_work, sender, work_instance, Flaky, Work};
use super::factory::TransportFactory;
use super::kit::{declare, id_of, send_raw, subscribe, topology, wait_for, within};
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
    let bus = Bus::builder()
        .transport_arc(t.clone())
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
    for n in 0..3 {
        bus.send(Flaky {
            id: format!("bad-{n}"),
            fail_times: u32::MAX,
        })
        .await
        .expect("sending a failing command");
    }
    wait_for(Duration::from_secs(30), "three failures", || {
        bus.stats().dead_lettered == 3
    })
    .await;
    bus.shutdown().await;
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

async fn browse(t: &dyn Transport, endpoint: &str, queue: QueueKind) -> Vec<bus_core::Envelope> {
    t.browse(endpoint, queue, 100)
        .await
        .unwrap_or_else(|e| panic!("browsing the {queue} of {endpoint} failed: {e}"))
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
    println!(
        "conformance {:<27} [{}] removed {} things",
        "teardown_declared",
        f.name(),
        removed.len()
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

//! Sending into full queues, the no-wait paths, and what the operations on queues do.

use std::time::Instant;

use bus_core::{EndpointTopology, Headers};

use super::*;

fn message(n: usize) -> Outgoing {
    Outgoing {
        destination: Destination::Endpoint("ep".into()),
        envelope: Envelope::from_bytes(
            Headers {
                message_id: format!("m-{n}").into(),
                message_type: "t".into(),
                content_type: "application/json".into(),
                ..Headers::default()
            },
            "{}",
        ),
        delay: None,
        deliver_at: None,
    }
}

async fn full_queue(capacity: usize, send_timeout: Duration) -> MemoryTransport {
    let t = MemoryTransport::new()
        .capacity(capacity)
        .send_timeout(send_timeout);
    t.declare(&Topology {
        endpoints: vec![EndpointTopology {
            name: "ep".into(),
            ..EndpointTopology::default()
        }],
    })
    .await
    .expect("declared");
    for n in 0..capacity {
        t.send(message(n)).await.expect("room");
    }
    t
}

/// A consumer of `ep` with this prefetch.
async fn consumer(t: &MemoryTransport, prefetch: usize) -> Box<dyn Subscription> {
    t.subscribe("ep", SubscribeOptions { prefetch })
        .await
        .expect("subscribed")
}

/// Send message `n` to `ep` from a task of its own (it may have to wait for room).
fn send_in_task(
    t: &MemoryTransport,
    n: usize,
) -> tokio::task::JoinHandle<Result<(), TransportError>> {
    let t = t.clone();
    tokio::spawn(async move { t.send(message(n)).await })
}

/// A producer blocked on a full queue gets in soon after one slot frees, although it would
/// rather wait for several; and the bound holds throughout.
#[tokio::test]
async fn a_blocked_send_takes_a_single_freed_slot_well_within_its_timeout() {
    let t = full_queue(100, Duration::from_secs(10)).await;
    let mut sub = consumer(&t, 1).await;
    let producer = {
        let t = t.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            t.send(message(100)).await.map(|()| started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!producer.is_finished(), "no room yet: the send waits");
    let d = sub.next().await.expect("a delivery").expect("not an error");
    d.ack().await.expect("acked");
    let waited = producer.await.expect("producer").expect("sent");
    assert!(
        waited < Duration::from_secs(2),
        "one freed slot let the blocked send in, after {waited:?}"
    );
    assert_eq!(t.depth("ep"), Some(100), "the bound held");
}

fn event(n: usize) -> Outgoing {
    Outgoing {
        destination: Destination::Event("evt".into()),
        ..message(n)
    }
}

fn command_to(endpoint: &str, n: usize) -> Outgoing {
    Outgoing {
        destination: Destination::Endpoint(endpoint.into()),
        ..message(n)
    }
}

/// The no-wait paths: a command or an event goes in at once when there is room, and comes
/// back whole (no queue served) when there is not; a ready delivery is taken and acked
/// without a future.
#[tokio::test]
async fn the_no_wait_paths_take_only_what_needs_no_waiting() {
    let t = MemoryTransport::new().capacity(2);
    let ep = |name: &str, events: &[&str]| EndpointTopology {
        name: name.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        ..EndpointTopology::default()
    };
    t.declare(&Topology {
        endpoints: vec![ep("ep", &["evt"]), ep("other", &["evt"])],
    })
    .await
    .expect("declared");
    // Commands: room, then none.
    assert!(matches!(t.send_now(message(0)), Ok(Ok(()))));
    t.send_now(event(1)).expect("room in both").expect("taken");
    assert_eq!((t.depth("ep"), t.depth("other")), (Some(2), Some(1)));
    let back = t.send_now(message(2)).expect_err("ep is full");
    assert_eq!(back.envelope.headers.message_id, "m-2");
    // An event one of whose queues is full serves neither.
    let back = t.send_now(event(3)).expect_err("ep is full");
    assert_eq!(back.envelope.headers.message_id, "m-3");
    assert_eq!((t.depth("ep"), t.depth("other")), (Some(2), Some(1)));
    // An unknown endpoint is an error, not a message given back.
    assert!(matches!(
        t.send_now(command_to("nowhere", 4)),
        Ok(Err(TransportError::Unroutable(_)))
    ));
    // A ready delivery comes at once; acking it at once frees its slot.
    let mut sub = consumer(&t, 1).await;
    let d = sub.next_now().expect("one is ready");
    assert_eq!(d.envelope().headers.message_id, "m-0");
    assert!(sub.next_now().is_none(), "prefetch 1 is taken");
    d.ack().await.expect("acked");
    assert_eq!(t.depth("ep"), Some(1));
    let d = sub.next_now().expect("the event's copy");
    assert_eq!(d.envelope().headers.message_id, "m-1");
    d.ack().await.expect("acked");
    assert!(sub.next_now().is_none(), "nothing left");
    assert!(matches!(t.send_now(message(5)), Ok(Ok(()))));
}

/// A full queue of 4 with a consumer, and two producers blocked on it in turn (messages 4
/// and 5).
async fn two_in_line() -> (
    MemoryTransport,
    Box<dyn Subscription>,
    tokio::task::JoinHandle<Result<(), TransportError>>,
    tokio::task::JoinHandle<Result<(), TransportError>>,
) {
    let t = full_queue(4, Duration::from_secs(10)).await;
    let sub = consumer(&t, 4).await;
    let first = send_in_task(&t, 4);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = send_in_task(&t, 5);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!first.is_finished() && !second.is_finished(), "both wait");
    (t, sub, first, second)
}

/// Blocked producers are served in the order they blocked, and a freed slot is theirs: a
/// no-wait send that comes later does not take it.
#[tokio::test]
async fn blocked_producers_get_freed_slots_in_order_before_anyone_else() {
    let (t, mut sub, first, second) = two_in_line().await;

    sub.next_now().expect("ready").ack().await.expect("acked");
    assert!(
        t.send_now(message(6)).is_err(),
        "the freed slot is the first producer's, not a newcomer's"
    );
    first.await.expect("first").expect("sent");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!second.is_finished(), "the second still waits");

    sub.next_now().expect("ready").ack().await.expect("acked");
    second.await.expect("second").expect("sent");
    assert_eq!(t.depth("ep"), Some(4), "the bound held");
    let ids: Vec<String> = t
        .browse("ep")
        .iter()
        .map(|e| e.headers.message_id.to_string())
        .collect();
    assert_eq!(ids, ["m-4", "m-5"], "in the order they blocked");
}

/// A blocked producer that gives up leaves the line: the next one is served, and no slot is
/// lost to the one that left.
#[tokio::test]
async fn a_producer_that_gives_up_leaves_the_line_without_taking_a_slot() {
    let (t, mut sub, quitter, next) = two_in_line().await;
    quitter.abort();
    let _ = quitter.await;
    sub.next_now().expect("ready").ack().await.expect("acked");
    next.await.expect("next").expect("sent");
    sub.next_now().expect("ready").ack().await.expect("acked");
    assert!(matches!(t.send_now(message(6)), Ok(Ok(()))), "a slot left");
    assert_eq!(t.depth("ep"), Some(4), "no slot lost or double-counted");
}

/// Several acks in a moment serve a blocked producer's refill: it takes one slot and leaves
/// the rest free, and the bound still holds.
#[tokio::test]
async fn a_refill_takes_one_slot_and_leaves_the_others_free() {
    let t = full_queue(16, Duration::from_secs(10)).await; // refill: 2 slots
    let mut sub = consumer(&t, 16).await;
    let producer = send_in_task(&t, 16);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!producer.is_finished(), "no room yet: the send waits");
    // Two acks back to back, within the producer's refill wait.
    for _ in 0..2 {
        let d = sub.next_now().expect("ready");
        d.ack().await.expect("acked");
    }
    producer.await.expect("producer").expect("sent");
    assert_eq!(t.depth("ep"), Some(15), "14 left, plus the new one");
    assert!(
        matches!(t.send_now(message(17)), Ok(Ok(()))),
        "one slot left free"
    );
    assert!(t.send_now(message(18)).is_err(), "and only one");
    assert_eq!(t.depth("ep"), Some(16));
}

/// An event whose queues cannot all take it in time gets into none of them: a retry by the
/// caller then duplicates nothing.
#[tokio::test]
async fn an_event_that_times_out_on_one_queue_is_in_none() {
    let t = MemoryTransport::new()
        .capacity(2)
        .send_timeout(Duration::from_millis(200));
    let ep = |name: &str| EndpointTopology {
        name: name.into(),
        events: vec!["evt".into()],
        ..EndpointTopology::default()
    };
    t.declare(&Topology {
        endpoints: vec![ep("a"), ep("b")],
    })
    .await
    .expect("declared");
    // `b` fills up; `a` keeps room.
    for n in 0..2 {
        t.send(command_to("b", n)).await.expect("room in b");
    }
    let err = t.send(event(2)).await.expect_err("b stays full");
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert_eq!((t.depth("a"), t.depth("b")), (Some(0), Some(2)));
    // And `a`'s slots were given back: it still takes two.
    for n in 3..5 {
        t.send(command_to("a", n)).await.expect("room in a");
    }
}

/// With no slot freed, the send fails with a timeout error after its timeout, and the queue
/// keeps what it had.
#[tokio::test]
async fn a_send_to_a_queue_that_stays_full_times_out() {
    let t = full_queue(20, Duration::from_millis(200)).await;
    let started = Instant::now();
    let err = t.send(message(20)).await.expect_err("no room");
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(t.depth("ep"), Some(20));
}

/// Removing by id takes ready messages out of the queue named, leaves the rest in order, and
/// says which it took; an unknown queue is unroutable.
#[tokio::test]
async fn remove_takes_ready_messages_out_by_id() {
    let t = full_queue(4, Duration::from_secs(1)).await;
    let ids = |v: &[&str]| v.iter().map(|s| MessageId::from(*s)).collect::<Vec<_>>();
    let removed = Transport::remove(&t, "ep", QueueKind::Input, &ids(&["m-1", "x", "m-3"]))
        .await
        .expect("removed");
    assert_eq!(removed, ids(&["m-1", "m-3"]));
    let left: Vec<String> = t
        .browse("ep")
        .iter()
        .map(|e| e.headers.message_id.to_string())
        .collect();
    assert_eq!(left, ["m-0", "m-2"]);
    let again = Transport::remove(&t, "ep", QueueKind::Input, &ids(&["m-1"]))
        .await
        .expect("nothing to remove is fine");
    assert!(again.is_empty());
    assert!(
        Transport::remove(&t, "ep", QueueKind::Errors, &ids(&["m-0"]))
            .await
            .expect("the declared error queue")
            .is_empty()
    );
    let err = Transport::remove(&t, "nowhere", QueueKind::Errors, &ids(&["m-0"]))
        .await
        .expect_err("no such queue");
    assert!(matches!(err, TransportError::Unroutable(_)), "{err}");
}

/// The endpoints are the declared input queues, by name, with their depth, consumers and
/// error depth.
#[tokio::test]
async fn endpoints_lists_declared_queues_with_their_figures() {
    let t = full_queue(3, Duration::from_secs(1)).await;
    t.declare(&Topology {
        endpoints: vec![EndpointTopology {
            name: "another".into(),
            ..EndpointTopology::default()
        }],
    })
    .await
    .expect("declared");
    t.send(Outgoing {
        destination: Destination::ErrorQueue("another".into()),
        ..message(9)
    })
    .await
    .expect("failed one");
    let mut sub = consumer(&t, 1).await;
    let figures = |t: MemoryTransport| async move {
        let listed = t.endpoints().await.expect("listed");
        listed
            .into_iter()
            .map(|e| (e.name, e.depth, e.consumers, e.error_depth))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        figures(t.clone()).await,
        [
            ("another".to_string(), Some(0), Some(0), Some(1)),
            ("ep".to_string(), Some(3), Some(1), Some(0)),
        ]
    );
    sub.cancel().await;
    let listed = t.endpoints().await.expect("listed");
    assert_eq!(listed[1].consumers, Some(0), "a cancelled subscription");
}

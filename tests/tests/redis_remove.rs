//! Removing messages by id and listing endpoints on Redis Streams: entries are matched and
//! deleted a range at a time, the oldest copy of an id first, the others left in order, over
//! streams longer than one range; an entry handed out and removed is acked too, so nobody
//! takes it over; the endpoint list is the registry under the transport's keys, with the
//! entries and consumers of each endpoint.
//!
//! Every test works under a key prefix of its own, deleted afterwards even when it fails, and
//! skips with a printed reason when Redis is unreachable (fails instead when
//! `BUS_REQUIRE_BROKERS=1`).

use std::time::Duration;

use bus_core::{
    Destination, EndpointTopology, Envelope, Headers, MessageId, Outgoing, QueueKind,
    SubscribeOptions, Topology, Transport,
};
use bus_tests::redis_broker::RedisScope;

/// Run a test body in fresh scopes, then delete their keys even if the body panicked.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(RedisScope, RedisScope) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (Some(one), Some(other)) = (RedisScope::new(test).await, RedisScope::new(test).await)
    else {
        return;
    };
    let cleanup = {
        let (one, other) = (one.clone(), other.clone());
        async move {
            one.cleanup().await;
            other.cleanup().await;
        }
    };
    bus_tests::then_clean(body(one, other), cleanup).await;
}

fn topology(endpoints: &[&str]) -> Topology {
    Topology {
        endpoints: endpoints
            .iter()
            .map(|name| EndpointTopology {
                name: name.to_string(),
                ..EndpointTopology::default()
            })
            .collect(),
    }
}

/// Message `id`, with a `copy` header telling copies of one id apart.
fn message(destination: Destination, id: &str, copy: &str) -> Outgoing {
    let mut headers = Headers {
        message_id: id.into(),
        message_type: "tests.Work".into(),
        content_type: "application/json".into(),
        ..Headers::default()
    };
    headers.custom.insert("copy".into(), copy.into());
    Outgoing {
        destination,
        envelope: Envelope::from_bytes(headers, "{}"),
        delay: None,
        deliver_at: None,
    }
}

/// The ids of envelopes, each with its `copy` header.
fn ids(envelopes: &[Envelope]) -> Vec<String> {
    envelopes
        .iter()
        .map(|e| {
            let copy = e.headers.get("copy").unwrap_or("");
            format!("{}{copy}", e.headers.message_id)
        })
        .collect()
}

fn message_ids(ids: &[&str]) -> Vec<MessageId> {
    ids.iter().map(|id| MessageId::from(*id)).collect()
}

/// Six failed messages in `endpoint`'s error queue, `dup` twice (first and second copy).
async fn six_failed(t: &dyn Transport, endpoint: &str) {
    for (id, copy) in [
        ("m-0", ""),
        ("dup", "-first"),
        ("m-2", ""),
        ("m-3", ""),
        ("dup", "-second"),
        ("m-5", ""),
    ] {
        t.send(message(Destination::ErrorQueue(endpoint.into()), id, copy))
            .await
            .unwrap();
    }
}

/// Of [`six_failed`], the oldest copy of each id asked for is removed, an id asked for twice
/// removes two, and the others stay in order.
async fn oldest_copies_go(t: &dyn Transport, endpoint: &str) {
    let removed = t
        .remove(
            endpoint,
            QueueKind::Errors,
            &message_ids(&["m-3", "dup", "absent"]),
        )
        .await
        .unwrap();
    assert_eq!(removed, message_ids(&["dup", "m-3"]), "in queue order");
    let left = t.browse(endpoint, QueueKind::Errors, 10).await.unwrap();
    assert_eq!(ids(&left), ["m-0", "m-2", "dup-second", "m-5"]);
    let removed = t
        .remove(
            endpoint,
            QueueKind::Errors,
            &message_ids(&["m-5", "m-0", "m-5"]),
        )
        .await
        .unwrap();
    assert_eq!(removed, message_ids(&["m-0", "m-5"]));
    let left = t.browse(endpoint, QueueKind::Errors, 10).await.unwrap();
    assert_eq!(ids(&left), ["m-2", "dup-second"]);
}

async fn xlen(scope: &RedisScope, key: &str) -> u64 {
    let mut raw = scope.raw().await;
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut raw)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_remove_deletes_the_oldest_copies_across_ranges_of_a_long_stream() {
    scoped("redis remove order", |scope, _| async move {
        let t = scope.transport("remover").await;
        t.declare(&topology(&["ledger"])).await.unwrap();
        six_failed(&t, "ledger").await;
        oldest_copies_go(&t, "ledger").await;

        // A stream longer than one script call looks at: ids in the first, second and third
        // ranges are all found.
        let long = "long";
        t.declare(&topology(&[long])).await.unwrap();
        let errors = || Destination::ErrorQueue(long.into());
        for n in 0..2_500 {
            t.send(message(errors(), &format!("l-{n}"), ""))
                .await
                .unwrap();
        }
        let wanted = message_ids(&["l-10", "l-1500", "l-2499"]);
        let removed = t.remove(long, QueueKind::Errors, &wanted).await.unwrap();
        assert_eq!(removed, wanted);
        let error_stream = scope.keys.error_stream(long);
        assert_eq!(xlen(&scope, &error_stream).await, 2_497);
        assert!(t
            .remove(long, QueueKind::Errors, &wanted)
            .await
            .unwrap()
            .is_empty());
        let first = t.browse(long, QueueKind::Errors, 12).await.unwrap();
        let first: Vec<String> = ids(&first);
        let expected: Vec<String> = (0..12)
            .filter(|n| *n != 10)
            .map(|n| format!("l-{n}"))
            .chain(["l-12".to_string()])
            .collect();
        assert_eq!(first, expected, "the others in order");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_remove_of_an_entry_handed_out_acks_it_so_nobody_takes_it_over() {
    scoped("redis remove pending", |scope, _| async move {
        let t = scope.transport("remover").await;
        t.declare(&topology(&["ledger"])).await.unwrap();
        for id in ["held", "next"] {
            t.send(message(Destination::Endpoint("ledger".into()), id, ""))
                .await
                .unwrap();
        }
        let mut sub = t
            .subscribe("ledger", SubscribeOptions { prefetch: 1 })
            .await
            .unwrap();
        let held = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(held.envelope().headers.message_id, "held");
        let removed = t
            .remove("ledger", QueueKind::Input, &message_ids(&["held"]))
            .await
            .unwrap();
        assert_eq!(removed, message_ids(&["held"]));
        // Put back for redelivery: it is gone, so it does not come again.
        held.nack().await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(next.envelope().headers.message_id, "next");
        next.ack().await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_secs(1), sub.next()).await;
        assert!(quiet.is_err(), "the removed entry is not taken over");
        sub.cancel().await;
        assert_eq!(xlen(&scope, &scope.keys.stream("ledger")).await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_endpoints_lists_its_registry_with_entries_and_consumers() {
    scoped("redis endpoints", |scope, other_scope| async move {
        let t = scope.transport("lister").await;
        let other = other_scope.transport("other").await;
        t.declare(&topology(&["beta", "alpha"])).await.unwrap();
        other.declare(&topology(&["gamma"])).await.unwrap();
        for n in 0..3 {
            t.send(message(
                Destination::Endpoint("alpha".into()),
                &format!("a-{n}"),
                "",
            ))
            .await
            .unwrap();
        }
        t.send(message(
            Destination::ErrorQueue("beta".into()),
            "failed",
            "",
        ))
        .await
        .unwrap();
        let mut sub = t
            .subscribe("beta", SubscribeOptions { prefetch: 1 })
            .await
            .unwrap();
        // The subscription joins the group with its first read.
        let mut figures = Vec::new();
        for _ in 0..50 {
            figures = t
                .endpoints()
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.name, e.depth, e.consumers, e.error_depth))
                .collect();
            if figures.get(1).is_some_and(|f| f.2 == Some(1)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            figures,
            [
                ("alpha".to_string(), Some(3), Some(0), Some(0)),
                ("beta".to_string(), Some(0), Some(1), Some(1)),
            ]
        );
        sub.cancel().await;
        drop(sub);
        let names: Vec<String> = other
            .endpoints()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["gamma"]);
    })
    .await;
}

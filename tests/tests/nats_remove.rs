//! Removing messages by id and listing endpoints on NATS JetStream: messages are deleted by
//! sequence, the oldest copy of an id first, the others left in order; a message being
//! handled is removed too; the endpoint list keeps to the transport's naming, gives endpoints
//! their real names (stream names lose dots) and does not pretend to count consumers.
//!
//! Every test works under a stream prefix of its own, deleted afterwards even when it fails,
//! and skips with a printed reason when NATS is unreachable (fails instead when
//! `BUS_REQUIRE_BROKERS=1`).

use std::time::Duration;

use bus_core::{
    Destination, EndpointTopology, Envelope, Headers, MessageId, Outgoing, QueueKind,
    SubscribeOptions, Topology, Transport, TransportError,
};
use bus_tests::nats_broker::NatsScope;

/// Run a test body in fresh scopes, then delete their streams even if the body panicked.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(NatsScope, NatsScope) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (Some(one), Some(other)) = (NatsScope::new(test).await, NatsScope::new(test).await) else {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_remove_deletes_the_oldest_copies_and_keeps_the_rest_in_order() {
    scoped("nats remove order", |scope, _| async move {
        let t = scope.transport("remover").await;
        t.declare(&topology(&["ledger"])).await.unwrap();
        six_failed(&t, "ledger").await;
        oldest_copies_go(&t, "ledger").await;

        // The input stream: a message being handled is still in it, and removed too.
        for id in ["held", "next", "last"] {
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
            .remove("ledger", QueueKind::Input, &message_ids(&["held", "last"]))
            .await
            .unwrap();
        assert_eq!(removed, message_ids(&["held", "last"]));
        // Its handler still finishes; acking a removed message is not an error.
        held.ack().await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(next.envelope().headers.message_id, "next");
        next.ack().await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
        assert!(quiet.is_err(), "the removed message is not delivered");
        sub.cancel().await;

        let err = t
            .remove("nowhere", QueueKind::Errors, &message_ids(&["x"]))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unroutable(_)), "{err}");
        t.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_endpoints_lists_its_naming_only_by_real_names() {
    scoped("nats endpoints", |scope, other_scope| async move {
        let t = scope.transport("lister").await;
        let other = other_scope.transport("other").await;
        t.declare(&topology(&["orders.v2", "billing"]))
            .await
            .unwrap();
        other.declare(&topology(&["gamma"])).await.unwrap();
        for n in 0..3 {
            t.send(message(
                Destination::Endpoint("orders.v2".into()),
                &format!("o-{n}"),
                "",
            ))
            .await
            .unwrap();
        }
        t.send(message(
            Destination::ErrorQueue("billing".into()),
            "failed",
            "",
        ))
        .await
        .unwrap();
        let listed = t.endpoints().await.unwrap();
        let figures: Vec<_> = listed
            .iter()
            .map(|e| (e.name.as_str(), e.depth, e.consumers, e.error_depth))
            .collect();
        assert_eq!(
            figures,
            [
                ("billing", Some(0), None, Some(1)),
                ("orders.v2", Some(3), None, Some(0)),
            ]
        );
        let names: Vec<String> = other
            .endpoints()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["gamma"]);
        t.close().await.unwrap();
        other.close().await.unwrap();
    })
    .await;
}

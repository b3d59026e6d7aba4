//! Removing messages by id and listing endpoints on RabbitMQ: the oldest copy of an id is the
//! one removed and the rest stay in order, quorum input queues are refused, and the endpoint
//! list (names from the management API, figures over AMQP) keeps to the transport's naming
//! and says how to enable the API when it cannot reach it.
//!
//! Every test runs under a namespace of its own and skips with a printed reason when RabbitMQ
//! is unreachable, and fails instead when `BUS_REQUIRE_BROKERS=1` (which also expects the
//! management plugin that `.ci/services` enables).

use std::time::Duration;

use bus_core::{
    Destination, EndpointTopology, Envelope, Headers, MessageId, Outgoing, QueueKind,
    SubscribeOptions, Topology, Transport, TransportError,
};
use bus_tests::broker::AmqpScope;
use bus_transport_amqp::{AmqpConfig, AmqpTransport, Naming};

/// Run a test body in a fresh scope, then delete its queues even if the body panicked.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(AmqpScope) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(scope) = AmqpScope::new(test).await else {
        return;
    };
    bus_tests::then_clean(body(scope.clone()), scope.cleanup()).await;
}

/// A config under the scope's namespace (its prefix less the dot), so the scope's cleanup
/// removes what the test leaves.
fn config(scope: &AmqpScope, name: &str) -> AmqpConfig {
    AmqpConfig::new(scope.url.clone())
        .connection_name(name)
        .connect_timeout(Duration::from_secs(10))
        .namespace(scope.naming.queue_prefix.trim_end_matches('.'))
}

async fn connect(config: AmqpConfig) -> AmqpTransport {
    AmqpTransport::connect(config)
        .await
        .expect("connect to RabbitMQ")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_remove_takes_the_oldest_copy_of_each_id_and_keeps_the_rest_in_order() {
    scoped("amqp remove order", |scope| async move {
        let t = connect(config(&scope, "remover")).await;
        t.declare(&topology(&["ledger"])).await.unwrap();
        let errors = || Destination::ErrorQueue("ledger".into());
        for (id, copy) in [
            ("m-0", ""),
            ("dup", "-first"),
            ("m-2", ""),
            ("m-3", ""),
            ("dup", "-second"),
            ("m-5", ""),
        ] {
            t.send(message(errors(), id, copy)).await.unwrap();
        }
        let removed = t
            .remove(
                "ledger",
                QueueKind::Errors,
                &message_ids(&["m-3", "dup", "absent"]),
            )
            .await
            .unwrap();
        assert_eq!(removed, message_ids(&["dup", "m-3"]), "in queue order");
        let left = t.browse("ledger", QueueKind::Errors, 10).await.unwrap();
        assert_eq!(ids(&left), ["m-0", "m-2", "dup-second", "m-5"]);

        // An id asked for twice removes two; nothing is left lent.
        let removed = t
            .remove(
                "ledger",
                QueueKind::Errors,
                &message_ids(&["m-5", "m-0", "m-5"]),
            )
            .await
            .unwrap();
        assert_eq!(removed, message_ids(&["m-0", "m-5"]));
        let left = t.browse("ledger", QueueKind::Errors, 10).await.unwrap();
        assert_eq!(ids(&left), ["m-2", "dup-second"]);

        // The input queue, with a consumer holding one message: that one is not found.
        t.send(message(Destination::Endpoint("ledger".into()), "held", ""))
            .await
            .unwrap();
        t.send(message(Destination::Endpoint("ledger".into()), "ready", ""))
            .await
            .unwrap();
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
            .remove("ledger", QueueKind::Input, &message_ids(&["held", "ready"]))
            .await
            .unwrap();
        assert_eq!(
            removed,
            message_ids(&["ready"]),
            "a held message is not lent"
        );
        held.ack().await.unwrap();
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
async fn amqp_remove_refuses_a_quorum_input_queue_and_removes_from_its_error_queue() {
    scoped("amqp remove quorum", |scope| async move {
        // A delivery limit of 1: a message lent twice from the input queue would be
        // dead-lettered.
        let t = connect(config(&scope, "quorum").quorum_queues(1)).await;
        t.declare(&topology(&["ledger"])).await.unwrap();
        t.send(message(Destination::Endpoint("ledger".into()), "in", ""))
            .await
            .unwrap();
        let err = t
            .remove("ledger", QueueKind::Input, &message_ids(&["in"]))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("delivery limit"), "{err}");

        for id in ["a", "b", "c", "d"] {
            t.send(message(Destination::ErrorQueue("ledger".into()), id, ""))
                .await
                .unwrap();
        }
        // Lent again and again, the others keep their places and none is lost.
        for (remove, left) in [
            ("b", vec!["a", "c", "d"]),
            ("d", vec!["a", "c"]),
            ("absent", vec!["a", "c"]),
        ] {
            let removed = t
                .remove("ledger", QueueKind::Errors, &message_ids(&[remove]))
                .await
                .unwrap();
            assert_eq!(removed.len(), usize::from(remove != "absent"));
            let seen = t.browse("ledger", QueueKind::Errors, 10).await.unwrap();
            assert_eq!(ids(&seen), left);
        }
        t.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_endpoints_lists_its_naming_only_with_the_figures_of_the_moment() {
    scoped("amqp endpoints", |scope| async move {
        let t = connect(config(&scope, "lister").naming(Naming {
            queue_prefix: "one-".into(),
            ..Naming::default()
        }))
        .await;
        let other = connect(config(&scope, "other").naming(Naming {
            queue_prefix: "other-".into(),
            ..Naming::default()
        }))
        .await;
        t.declare(&topology(&["beta", "alpha"])).await.unwrap();
        other.declare(&topology(&["gamma"])).await.unwrap();
        // A queue of the namespace without an error queue is not an endpoint.
        let lone = t.config().naming.queue("lone");
        let conn = scope.raw().await;
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(lone.as_str().into(), Default::default(), Default::default())
            .await
            .unwrap();
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
        let sub = t
            .subscribe("beta", SubscribeOptions { prefetch: 1 })
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
                ("alpha", Some(3), Some(0), Some(0)),
                ("beta", Some(0), Some(1), Some(1)),
            ],
            "sent just now, and consumed just now: no statistics lag"
        );
        let names: Vec<String> = other
            .endpoints()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["gamma"], "another prefix, another list");
        drop(sub);
        let _ = conn.close(200, "done".into()).await;
        t.close().await.unwrap();
        other.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_endpoints_without_a_management_api_says_why() {
    scoped("amqp endpoints without api", |scope| async move {
        let off = connect(config(&scope, "off").without_management()).await;
        let err = off.endpoints().await.unwrap_err();
        assert!(matches!(err, TransportError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("management API"), "{err}");

        // Nothing listens there: a connection error that says what to enable, promptly.
        let nowhere = connect(config(&scope, "nowhere").management_url("http://127.0.0.1:1")).await;
        let started = std::time::Instant::now();
        let err = nowhere.endpoints().await.unwrap_err();
        assert!(matches!(err, TransportError::Connection { .. }), "{err}");
        assert!(err.to_string().contains("rabbitmq_management"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        // Wrong credentials for the API: refused, and the password is not shown.
        let refused = connect(
            config(&scope, "refused").management_url("http://guest:s3cr3t-pw@127.0.0.1:15672"),
        )
        .await;
        match refused.endpoints().await {
            Err(err @ TransportError::Refused { .. }) => {
                assert!(!err.to_string().contains("s3cr3t-pw"), "{err}");
                assert!(err.to_string().contains("refused user"), "{err}");
            }
            // The management plugin is not enabled here: nothing to refuse.
            Err(TransportError::Connection { .. }) if !bus_tests::broker::brokers_required() => {}
            other => panic!("wrong credentials: {other:?}"),
        }
        for t in [off, nowhere, refused] {
            t.close().await.unwrap();
        }
    })
    .await;
}

//! The test harness on each broker: started from transport settings, it runs under a
//! namespace of its own, sees the flow through to its last handler, reads the error queue
//! through the transport, and `stop` removes everything it declared, so a second look finds
//! nothing. Two harnesses run the same flow on one broker at once, with the same endpoint
//! names: each sees its own messages only (one failure each in its error queue). Each test skips with a printed reason when its broker is unreachable, and fails
//! instead when `BUS_REQUIRE_BROKERS=1`.

use std::time::Duration;

use bus_core::{Command, Event, HandlerError, MessageContext};
use bus_testing::TestHarness;
use bus_tests::broker::rabbitmq_or_skip;
use bus_tests::nats_broker::nats_or_skip;
use bus_tests::redis_broker::redis_or_skip;
use bus_transport_config::TransportSettings;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.harness.Reserve", endpoint = "t-harness-stock")]
struct Reserve {
    sku: String,
    quantity: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "t.harness.Reserved")]
struct Reserved {
    sku: String,
}

#[bus_core::handler]
async fn reserve(cmd: Reserve, ctx: MessageContext) -> Result<(), HandlerError> {
    if cmd.quantity == 0 {
        return Err(HandlerError::unrecoverable(format!(
            "nothing to reserve for {}",
            cmd.sku
        )));
    }
    ctx.publish(Reserved { sku: cmd.sku }).await?;
    Ok(())
}

#[bus_core::handler(endpoint = "t-harness-audit")]
async fn audit(_evt: Reserved) -> Result<(), HandlerError> {
    Ok(())
}

/// The flow, the error queue and the teardown on the broker at `url`.
async fn harness_flow_on(url: String) {
    let settings = TransportSettings {
        url: url.clone(),
        ..TransportSettings::default()
    };
    let harness = TestHarness::builder()
        .settings(settings.clone())
        .host(["t-harness-stock", "t-harness-audit"])
        .wait_timeout(Duration::from_secs(20))
        .start()
        .await
        .unwrap_or_else(|e| panic!("the harness starts on {url}: {e}"));
    let namespace = harness
        .namespace()
        .expect("a harness on a broker runs under a namespace")
        .to_string();

    harness
        .send(Reserve {
            sku: "kettle".into(),
            quantity: 2,
        })
        .await
        .unwrap();
    harness
        .send(Reserve {
            sku: "ghost".into(),
            quantity: 0,
        })
        .await
        .unwrap();
    let published = harness.wait_for_published::<Reserved>().await.unwrap();
    assert_eq!(published.sku, "kettle");
    harness.wait_for_handled::<Reserved>().await.unwrap();
    let failed = harness.wait_for_failed::<Reserve>().await.unwrap();
    assert_eq!(failed.message.sku, "ghost");
    let queued = harness
        .error_queue::<Reserve>("t-harness-stock")
        .await
        .unwrap();
    assert_eq!(
        queued.len(),
        1,
        "the error queue, read through the transport"
    );
    harness.wait_until_quiet().await.unwrap();

    let report = harness.stop().await.unwrap();
    assert!(
        report
            .removed
            .iter()
            .any(|d| d.name.contains("t-harness-stock")),
        "stop removes what the bus declared: {:?}",
        report.removed
    );

    // A second client in the same namespace finds nothing left to remove.
    let again = TransportSettings {
        prefix: Some(namespace),
        ..settings
    }
    .open("harness-check")
    .await
    .unwrap();
    let left = again
        .shared()
        .teardown(harness.bus().topology(), true)
        .await
        .unwrap();
    assert!(left.is_empty(), "nothing is left on {url}: {left:?}");
    let _ = again.close().await;
}

#[tokio::test]
async fn harness_on_amqp_runs_under_its_namespace_and_stop_removes_what_it_declared() {
    let Some(url) = rabbitmq_or_skip("harness_on_amqp").await else {
        return;
    };
    tokio::join!(harness_flow_on(url.clone()), harness_flow_on(url));
}

#[tokio::test]
async fn harness_on_nats_runs_under_its_namespace_and_stop_removes_what_it_declared() {
    let Some(url) = nats_or_skip("harness_on_nats").await else {
        return;
    };
    tokio::join!(harness_flow_on(url.clone()), harness_flow_on(url));
}

#[tokio::test]
async fn harness_on_redis_runs_under_its_namespace_and_stop_removes_what_it_declared() {
    let Some(url) = redis_or_skip("harness_on_redis").await else {
        return;
    };
    tokio::join!(harness_flow_on(url.clone()), harness_flow_on(url));
}

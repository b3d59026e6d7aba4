//! What the tests that go through [`Bus`] share: their messages, and bus instances that send,
//! or host an endpoint recording into the test's [`Tally`].

use std::sync::Arc;
use std::time::Duration;

use bus_core::{Bus, Command, EndpointConfig, Event, HandlerError, Transport};
use serde::{Deserialize, Serialize};

use super::kit::join;
use super::tally::Tally;

/// The command of the competing consumers.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "conformance.Work")]
pub(super) struct Work {
    pub(super) id: String,
}

/// A command whose handler fails a set number of attempts.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "conformance.Flaky")]
pub(super) struct Flaky {
    pub(super) id: String,
    /// Attempts that fail before one succeeds; `u32::MAX` never succeeds.
    pub(super) fail_times: u32,
}

/// The event fanned out to groups of instances.
#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "conformance.Fanned")]
pub(super) struct Fanned {
    pub(super) id: String,
}

/// The typed body of the round trip.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "conformance.Probe")]
pub(super) struct Probe {
    pub(super) n: u32,
    pub(super) text: String,
}

/// A bus that only sends (hosts nothing), with `C` routed to `endpoint`.
pub(super) async fn sender<C: Command>(t: Arc<dyn Transport>, endpoint: &str) -> Bus {
    Bus::builder()
        .transport_arc(t)
        .without_discovery()
        .route::<C>(endpoint)
        .build()
        .await
        .expect("a sending bus builds")
}

/// A bus instance hosting `endpoint` with a handler recording `Work` into the tally.
pub(super) async fn work_instance(
    t: Arc<dyn Transport>,
    endpoint: &str,
    instance: &str,
    tally: &Tally,
    config: EndpointConfig,
) -> Bus {
    let tally = tally.clone();
    let me = instance.to_string();
    Bus::builder()
        .transport_arc(t)
        .without_discovery()
        .handler(endpoint.to_string(), move |cmd: Work| {
            let tally = tally.clone();
            let me = me.clone();
            async move {
                tally.handled(&cmd.id, &me);
                tokio::task::yield_now().await;
                Ok::<(), HandlerError>(())
            }
        })
        .route::<Work>(endpoint)
        .endpoint(endpoint, move |_| config)
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .unwrap_or_else(|e| panic!("bus instance {instance} of {endpoint} failed to start: {e}"))
}

/// Send `Work` ids `{prefix}-{n}` from `tasks` concurrent producers.
pub(super) async fn send_work(bus: &Bus, prefix: &str, count: usize, tasks: usize, tally: &Tally) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let bus = bus.clone();
        let tally = tally.clone();
        let prefix = prefix.to_string();
        handles.push(tokio::spawn(async move {
            for n in (t..count).step_by(tasks) {
                let id = format!("{prefix}-{n}");
                tally.sent(&id);
                bus.send(Work { id: id.clone() })
                    .await
                    .unwrap_or_else(|e| panic!("sending {id} failed: {e}"));
                tally.confirmed(&id);
            }
        }));
    }
    for h in handles {
        join(h).await;
    }
}

//! The transport conformance suite (RELIABILITY.md part A) on the NATS JetStream transport
//! against the running server. Each test runs under its own subject and stream prefix, whose
//! streams are deleted afterwards even when the test fails. Every test skips with a printed
//! reason when NATS is unreachable, and fails instead when `BUS_REQUIRE_BROKERS=1`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{async_trait, Transport};
use bus_tests::conformance::{self, Features, TransportFactory};
use bus_tests::nats_broker::NatsScope;

/// Clients of one NATS server under one test's prefix; each client is a new transport (its own
/// connection), as another process would be.
struct NatsFactory {
    scope: NatsScope,
}

#[async_trait]
impl TransportFactory for NatsFactory {
    fn name(&self) -> &str {
        "nats"
    }

    fn features(&self) -> Features {
        Features {
            typed_bodies: false,
            // One pull consumer hands out a stream in order.
            ordered_per_key: true,
            // JetStream counts every delivery, nacks included.
            exact_delivery_count: true,
            prefetch: true,
            // Through the endpoint's delay stream.
            delayed_delivery: true,
            // The sent time travels as RFC 3339 with nanoseconds.
            sent_at_whole_seconds: false,
            // File-backed streams and durable consumers.
            survives_restart: true,
        }
    }

    async fn transport(&self, label: &str) -> Arc<dyn Transport> {
        Arc::new(self.scope.transport(label).await)
    }

    /// Messages in the endpoint's work-queue stream: acked ones are removed, so this is what is
    /// ready plus what is handed out and not yet settled.
    async fn queue_depth(&self, endpoint: &str) -> Option<usize> {
        let n = self
            .scope
            .stored(&self.scope.naming.endpoint_stream(endpoint))
            .await;
        usize::try_from(n).ok()
    }

    /// Longer than a pull round trip plus a nak's redelivery.
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(500)
    }
}

/// Run a suite test in a fresh scope, then delete the scope's streams, then pass on any
/// failure.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Arc<NatsFactory>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(scope) = NatsScope::new(test).await else {
        return;
    };
    let factory = Arc::new(NatsFactory {
        scope: scope.clone(),
    });
    bus_tests::then_clean(body(factory), scope.cleanup()).await;
}

macro_rules! suite {
    ($($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                scoped(concat!("conformance_nats::", stringify!($test)), |f| async move {
                    conformance::$test(&*f).await;
                })
                .await;
            }
        )+
    };
}

suite!(
    round_trip,
    competing_consumers,
    many_topics,
    redelivery,
    prefetch,
    subscriber_restarts,
    concurrent_subscribe_close,
    continue_after_errors,
    per_key_order,
    publisher_close,
    cancellation,
    cancel_stops_deliveries,
    fan_out_groups,
);

//! The transport conformance suite (RELIABILITY.md part A) on the Redis Streams transport
//! against the running Redis. Each test runs under its own key prefix, deleted afterwards even
//! when the test fails. Every test skips with a printed reason when Redis is unreachable, and
//! fails instead when `BUS_REQUIRE_BROKERS=1`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{async_trait, Transport};
use bus_tests::conformance::{self, Features, TransportFactory};
use bus_tests::redis_broker::RedisScope;

/// Clients of one Redis under one test's key prefix; each client is a new transport (its own
/// connections), as another process would be.
struct RedisFactory {
    scope: RedisScope,
}

#[async_trait]
impl TransportFactory for RedisFactory {
    fn name(&self) -> &str {
        "redis"
    }

    fn features(&self) -> Features {
        Features {
            typed_bodies: false,
            // One consumer reads a stream in entry order.
            ordered_per_key: true,
            // New entries count 1; a nack is not counted, the take-over that follows is.
            exact_delivery_count: true,
            prefetch: true,
            delayed_delivery: true,
            // The sent time travels as RFC 3339 with nanoseconds.
            sent_at_whole_seconds: false,
            // Redis's persistence decides; the test server keeps nothing on disk.
            survives_restart: false,
        }
    }

    async fn transport(&self, label: &str) -> Arc<dyn Transport> {
        Arc::new(self.scope.transport(label).await)
    }

    /// Entries in the endpoint's stream: acked entries are deleted, so this is what is ready
    /// plus what is handed out and not yet settled.
    async fn queue_depth(&self, endpoint: &str) -> Option<usize> {
        let mut raw = self.scope.raw().await;
        redis::cmd("XLEN")
            .arg(self.scope.keys.stream(endpoint))
            .query_async(&mut raw)
            .await
            .ok()
    }

    /// Longer than a blocking read plus a look for nacked deliveries (200 ms each here).
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(500)
    }
}

/// Run a suite test in a fresh scope, then delete the scope's keys, then pass on any failure.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Arc<RedisFactory>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(scope) = RedisScope::new(test).await else {
        return;
    };
    let factory = Arc::new(RedisFactory {
        scope: scope.clone(),
    });
    bus_tests::then_clean(body(factory), scope.cleanup()).await;
}

macro_rules! suite {
    ($($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                scoped(concat!("conformance_redis::", stringify!($test)), |f| async move {
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

//! The transport conformance suite (RELIABILITY.md part A) on the AMQP transport against the
//! running RabbitMQ. Each test runs in its own scope (unique queue, exchange and connection
//! names), removed afterwards even when the test fails. Every test skips with a printed reason
//! when RabbitMQ is unreachable, and fails instead when `BUS_REQUIRE_BROKERS=1`.

use std::future::Future;
use std::sync::Arc;

use bus_tests::broker::AmqpScope;
use bus_tests::conformance::{self, AmqpFactory};

/// Run a suite test in a fresh scope, then clean the scope up, then pass on any failure.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Arc<AmqpFactory>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(scope) = AmqpScope::new(test).await else {
        return;
    };
    let factory = Arc::new(AmqpFactory::new(scope.clone()));
    bus_tests::then_clean(body(factory), scope.cleanup()).await;
}

macro_rules! suite {
    ($($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                scoped(concat!("conformance_amqp::", stringify!($test)), |f| async move {
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

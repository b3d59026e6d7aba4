//! The transport conformance suite (RELIABILITY.md part A) on the in-memory transport, twice:
//! with typed bodies (the default) and with bodies serialized to bytes. Each test gets its own
//! transport, so tests share no queues.

use bus_tests::conformance::{self, MemoryFactory};

macro_rules! suite {
    ($factory:expr => $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                conformance::$test(&$factory).await;
            }
        )+
    };
}

macro_rules! memory_suite {
    ($factory:expr) => {
        suite!($factory =>
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
    };
}

mod typed {
    use super::*;
    memory_suite!(MemoryFactory::typed());
}

mod serialized {
    use super::*;
    memory_suite!(MemoryFactory::serialized());
}

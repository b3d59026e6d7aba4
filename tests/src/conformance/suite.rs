//! The suite as tests: [`conformance_suite!`](crate::conformance_suite) expands to one
//! `#[tokio::test]` per check for a transport, and [`run`] runs each of them in its own scope on
//! the broker, cleaned up afterwards.

use std::future::Future;
use std::sync::Arc;

use super::factory::TransportFactory;

/// Run one test of the suite: open a factory for `test`, run `body` with it in a task of its
/// own, then [clean up](TransportFactory::cleanup), also when the body panicked (its panic is
/// raised again once the broker is clean).
///
/// `open` returns `None` when the test is skipped (a broker that is unreachable); it has printed
/// why, and the test passes without running.
pub async fn run<F, Open, Opened, Body, Ran>(test: &'static str, open: Open, body: Body)
where
    F: TransportFactory + 'static,
    Open: FnOnce(&'static str) -> Opened,
    Opened: Future<Output = Option<F>>,
    Body: FnOnce(Arc<F>) -> Ran,
    Ran: Future<Output = ()> + Send + 'static,
{
    let Some(factory) = open(test).await else {
        return;
    };
    let factory = Arc::new(factory);
    crate::then_clean(body(factory.clone()), factory.cleanup()).await;
}

/// Expands to every test of the conformance suite for one transport: one
/// `#[tokio::test]` (multi-threaded, two workers) per check, named after the check
/// (`round_trip`, `competing_consumers`, ...), so the test binary says which transport and the
/// name which check.
///
/// `$open` opens the transport's factory for one test: an async function or closure taking the
/// test's name (`"<module path>::<check>"`) and returning `Option<impl TransportFactory>`, with
/// `None` when the test is skipped (see [`run`]). The factories of the transports in this
/// workspace have such openers (`AmqpFactory::open`, `MemoryFactory::open_typed`, ...).
///
/// This list of checks is the only one: a check added to the suite is added here, and every
/// transport runs it. The expansion uses `tokio`, which the calling crate must depend on.
///
/// ```
/// // tests/tests/conformance_memory.rs
/// use bus_tests::conformance::MemoryFactory;
///
/// bus_tests::conformance_suite!(MemoryFactory::open_typed);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_suite {
    (@checks $open:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::conformance::run(
                    concat!(module_path!(), "::", stringify!($check)),
                    $open,
                    |factory| async move { $crate::conformance::$check(&*factory).await },
                )
                .await;
            }
        )+
    };
    ($open:expr $(,)?) => {
        $crate::conformance_suite!(@checks $open;
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
            browse_queues,
            remove_by_id,
            endpoints_listed,
            teardown_declared,
            send_all_batches,
            request_reply_concurrent,
            request_timeout,
            request_failure,
            request_late_reply,
            request_from_handler,
            scheduled_precision,
            scheduled_events,
            scheduled_cancel,
        );
    };
}

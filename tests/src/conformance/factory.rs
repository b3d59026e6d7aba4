//! What a transport brings to the suite: a [`TransportFactory`] that makes clients of one
//! broker for one test, and the [`Features`] that decide which checks apply to it.

use std::sync::Arc;
use std::time::Duration;

use bus_core::{async_trait, Transport};

/// What a transport can do. A test that needs a feature the transport lacks is skipped with a
/// printed reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Bodies may stay typed values in-process
    /// ([`Body::Message`](bus_core::Body::Message)); otherwise bytes only.
    pub typed_bodies: bool,
    /// One consumer, with no requeues, sees the messages of one queue in the order they were
    /// published (so messages of one key, published one after another, stay in order).
    pub ordered_per_key: bool,
    /// [`Delivery::delivery_count`](bus_core::Delivery::delivery_count) counts every delivery
    /// exactly (1, 2, 3, ...). Without it a transport still reports 1 on a first delivery and
    /// more than 1 on a redelivery.
    pub exact_delivery_count: bool,
    /// [`SubscribeOptions::prefetch`](bus_core::SubscribeOptions::prefetch) bounds the
    /// deliveries handed out and not yet settled.
    pub prefetch: bool,
    /// [`Outgoing::delay`](bus_core::Outgoing::delay) is honoured (delayed retries).
    pub delayed_delivery: bool,
    /// The transport keeps [`Headers::sent_at`](bus_core::Headers::sent_at) only to whole
    /// seconds (AMQP `timestamp`).
    pub sent_at_whole_seconds: bool,
    /// Queued messages outlive a restart of the broker (used by the fault suites).
    pub survives_restart: bool,
    /// [`Transport::cancel_scheduled`](bus_core::Transport::cancel_scheduled) works.
    pub cancels_scheduled: bool,
    /// How late after its due time a scheduled message may arrive, as the transport's
    /// documentation promises (`docs/scheduling.md`).
    pub schedule_precision: Duration,
}

/// Makes clients of one broker for the conformance suite.
///
/// Create one factory per test, so tests share no queues.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    /// The transport's name, as printed in summaries.
    fn name(&self) -> &str;

    /// What the transport can do.
    fn features(&self) -> Features;

    /// A new client of the same broker. `label` names it (e.g. the AMQP connection name).
    async fn transport(&self, label: &str) -> Arc<dyn Transport>;

    /// Broker-side resources (e.g. AMQP channels) held by the clients of this factory, where
    /// the transport has such a notion: a leak check compares it before and after.
    async fn open_resources(&self) -> Option<usize> {
        None
    }

    /// Messages in an endpoint's queue (ready, and unacked where the transport can tell), where
    /// the transport can say.
    async fn queue_depth(&self, _endpoint: &str) -> Option<usize> {
        None
    }

    /// How long to wait before concluding that no further message is coming.
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(200)
    }

    /// Remove what the test left on the broker (queues, streams, keys of its scope). The suite
    /// calls it once the test is over, also when the test failed, so a failure leaves nothing
    /// behind that could disturb the next run.
    async fn cleanup(&self) {}
}

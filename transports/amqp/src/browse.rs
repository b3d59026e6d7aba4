//! Looking at the messages waiting in an endpoint's queue without taking them.
//!
//! AMQP 0-9-1 cannot peek: a message can only be lent (`basic.get` without auto-ack) and given
//! back. Browsing lends up to `limit` messages on a channel of its own, then closes that
//! channel, which returns them all to their places in the queue at once; the broker marks them
//! redelivered. Closing rather than nacking matters: a quorum queue without a delivery limit
//! (an error queue, when queues are quorum) puts a nacked message at its back, but one
//! returned by a closed channel back where it was.
//!
//! On a quorum queue every return counts as a delivery (`x-delivery-count` goes up by one;
//! RabbitMQ 3.x counts returns by a closed channel too). Quorum input queues are declared
//! with a delivery limit, past which the broker moves a message to the error queue, so
//! browsing one could push a message there: it is refused. Error queues are declared without
//! a limit of their own, so browsing them is allowed whatever the queue type.

use bus_core::{Destination, Envelope, QueueKind, TransportError};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use crate::config::QueueType;
use crate::error::queue_error;
use crate::transport::AmqpTransport;
use crate::wire;

impl AmqpTransport {
    /// Up to `limit` messages of `endpoint`'s `kind` queue, oldest first, left in the queue.
    pub(crate) async fn browse_queue(
        &self,
        endpoint: &str,
        kind: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        let config = &self.inner.config;
        let (queue, target) = match kind {
            QueueKind::Input => (
                config.naming.queue(endpoint),
                Destination::Endpoint(endpoint.into()),
            ),
            QueueKind::Errors => (
                config.naming.error_queue(endpoint),
                Destination::ErrorQueue(endpoint.into()),
            ),
        };
        if kind == QueueKind::Input && matches!(config.queue_type, QueueType::Quorum { .. }) {
            return Err(TransportError::Unsupported {
                operation: "browsing a quorum input queue: every message it lends counts toward the queue's delivery limit",
                transport: "amqp".into(),
            });
        }
        let ch = self.topology_channel().await?;
        let lend = async {
            // A missing queue fails here, before anything is lent.
            ch.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| queue_error(format!("looking up queue `{queue}`"), &target, e))?;
            let mut found = Vec::new();
            while found.len() < limit {
                let got = ch
                    .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|e| queue_error(format!("reading queue `{queue}`"), &target, e))?;
                // Each message lent stays lent until the channel closes, so the next get
                // returns the next one, never the same one again.
                let Some(message) = got else { break };
                let lapin::message::Delivery {
                    properties, data, ..
                } = message.delivery;
                found.push(wire::envelope(&properties, data));
            }
            Ok::<_, TransportError>(found)
        };
        let lent = TransportError::within("browsing a queue", config.connect_timeout, lend).await;
        // Closing the channel returns everything lent on it to its place in the queue. Should
        // the close fail or hang, the channel closes when dropped here, or with its connection.
        let _ = TransportError::within(
            "returning browsed messages",
            config.connect_timeout,
            ch.close(200, "browsed".into()),
        )
        .await;
        lent?
    }
}

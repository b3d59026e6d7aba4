//! Taking chosen messages out of an endpoint's queue, by message id.
//!
//! AMQP 0-9-1 cannot delete one message from a queue: a client can only take messages from
//! its head. So the messages are lent, as browsing lends them (`basic.get` without auto-ack,
//! on a channel of its own), one after another until every id asked for has been found or as
//! many messages have been lent as the queue held when it started (a passive declare says how
//! many, and so does the first get, whichever is more; messages that arrive meanwhile are
//! behind those and not looked at). The ones to
//! remove are then acked, and the channel is closed, which returns every other lent message to
//! its place in the queue, in order, as browsing does (see the `browse` module on why closing
//! rather than nacking). The broker handles a channel's frames in order, so once it confirms
//! the close, the acks before it are done.
//!
//! For each id asked for, the oldest message with that id is removed (an id asked for twice
//! removes two). A resent message that failed again while its first copy was still in the
//! error queue is then not taken out with the first copy.
//!
//! What it costs: every message ahead of the last one removed is lent and returned, so each is
//! marked redelivered, and on a quorum queue its delivery count goes up by one. Quorum input
//! queues have a delivery limit, past which the broker moves a message to the error queue, so
//! removing from one is refused, as browsing one is. Error queues have no limit.
//!
//! Messages a consumer holds (delivered and not settled) cannot be lent and are not found. If
//! anything fails before the acks are sent, nothing is removed; if the broker does not confirm
//! the close, the answer is an error, and some of the messages may be gone: look again (an id
//! not there is skipped, so asking again is safe where ids are unique in the queue).

use std::collections::HashMap;

use bus_core::{Destination, MessageId, QueueKind, TransportError};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;

use crate::config::QueueType;
use crate::error::{broker_error, queue_error};
use crate::transport::AmqpTransport;

impl AmqpTransport {
    /// See the module docs.
    pub(crate) async fn remove_messages(
        &self,
        endpoint: &str,
        kind: QueueKind,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
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
                operation: "removing messages from a quorum input queue: every message lent to find them counts toward the queue's delivery limit",
                transport: "amqp".into(),
            });
        }
        let opening = self.topology_channel();
        let ch =
            TransportError::within("opening a channel", config.connect_timeout, opening).await??;
        let found = self.lend_and_ack(&ch, &queue, &target, ids).await;
        // Closing the channel returns everything lent on it and not acked to its place.
        let closed = TransportError::within(
            "returning lent messages",
            config.connect_timeout,
            ch.close(200, "removed".into()),
        )
        .await;
        let removed = found?;
        if removed.is_empty() {
            return Ok(removed);
        }
        match closed {
            Ok(Ok(())) => Ok(removed),
            Ok(Err(e)) => Err(broker_error(
                format!(
                    "closing the channel after acking {} messages to remove from queue `{queue}`; some may be removed: look again",
                    removed.len()
                ),
                e,
            )),
            Err(_) => Err(TransportError::Connection {
                context: format!(
                    "the broker did not confirm the removal of {} messages from queue `{queue}` in time; some may be removed: look again",
                    removed.len()
                ),
                source: None,
            }),
        }
    }

    /// Lend messages of `queue` on `ch` until every id is found or the messages there at the
    /// start are all lent; ack the first with each id. Each wait on the broker has the connect
    /// timeout, so a long queue takes as long as it takes, but a broker that stops answering
    /// fails the call. Returns the ids acked, in queue order.
    async fn lend_and_ack(
        &self,
        ch: &Channel,
        queue: &str,
        target: &Destination,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
        let limit = self.inner.config.connect_timeout;
        let declaring = ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        );
        // A missing queue fails here, before anything is lent.
        let there = TransportError::within("looking up a queue", limit, declaring)
            .await?
            .map_err(|e| queue_error(format!("looking up queue `{queue}`"), target, e))?;
        let mut wanted = Wanted::new(ids);
        let mut chosen = Vec::new();
        let mut lent = 0u32;
        // The messages there at the start, as the passive declare counts them and, should that
        // count lag (a quorum queue counts messages a closed channel returned a moment after),
        // as the first get counts them. Messages that arrive later are behind them.
        let mut bound = there.message_count().max(1);
        while !wanted.is_empty() && lent < bound {
            let getting = ch.basic_get(queue.into(), BasicGetOptions { no_ack: false });
            let got = TransportError::within("lending a message", limit, getting)
                .await?
                .map_err(|e| queue_error(format!("reading queue `{queue}`"), target, e))?;
            // Each message lent stays lent until the channel closes, so the next get returns
            // the next one.
            let Some(message) = got else { break };
            if lent == 0 {
                bound = bound.max(message.message_count.saturating_add(1));
            }
            lent += 1;
            let delivery = message.delivery;
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str())
                .unwrap_or("");
            if wanted.take(id) {
                chosen.push((delivery.delivery_tag, MessageId::from(id)));
            }
        }
        for (tag, id) in &chosen {
            let acking = ch.basic_ack(*tag, BasicAckOptions::default());
            TransportError::within("acking a message to remove", limit, acking)
                .await?
                .map_err(|e| broker_error(format!("removing message `{id}` from `{queue}`"), e))?;
        }
        Ok(chosen.into_iter().map(|(_, id)| id).collect())
    }
}

/// The ids still to find, each as many times as it was asked for.
struct Wanted<'a> {
    left: HashMap<&'a str, usize>,
    total: usize,
}

impl<'a> Wanted<'a> {
    fn new(ids: &'a [MessageId]) -> Self {
        let mut left = HashMap::new();
        for id in ids {
            *left.entry(id.as_str()).or_default() += 1;
        }
        Wanted {
            left,
            total: ids.len(),
        }
    }

    /// Whether `id` is still wanted; if so, it is found once more.
    fn take(&mut self, id: &str) -> bool {
        match self.left.get_mut(id) {
            Some(n) if *n > 0 => {
                *n -= 1;
                self.total -= 1;
                true
            }
            _ => false,
        }
    }

    fn is_empty(&self) -> bool {
        self.total == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_wanted_as_many_times_as_asked() {
        let ids: Vec<MessageId> = ["a", "b", "a"].into_iter().map(MessageId::from).collect();
        let mut wanted = Wanted::new(&ids);
        assert!(!wanted.take("c"));
        assert!(wanted.take("a") && wanted.take("a"));
        assert!(!wanted.take("a"), "asked for twice");
        assert!(!wanted.is_empty());
        assert!(wanted.take("b"));
        assert!(wanted.is_empty());
        assert!(Wanted::new(&[]).is_empty());
    }
}

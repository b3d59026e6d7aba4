//! Scheduled messages: a cascade of delay levels on the broker, and the subscription that
//! takes the due ones.
//!
//! RabbitMQ has no per-message timer without a plugin, and a queue's TTL expires messages in
//! order only when they all share it. So a scheduled message waits in one of a fixed set of
//! durable queues, level `n` with a TTL of 2^n ms, all dead-lettering into one durable due
//! queue. It goes to the longest level that does not outlast its remaining wait; whoever
//! consumes the due queue moves a message that is not due yet down to the level for what is
//! left, so a wait of `r` ms takes at most one hop per bit of `r`, and the message is never
//! handed out before it is due (the time it is due travels with it).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_core::{
    async_trait, header, Delivery, Destination, Envelope, Outgoing, Subscription, TransportError,
};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Naming;
use crate::error::broker_error;
use crate::publish::{About, Publication};
use crate::subscription::AmqpSubscription;
use crate::transport::AmqpTransport;
use crate::wire;

/// The longest delay level: RabbitMQ takes a message TTL of at most 2^32 - 1 ms, so 2^31 ms
/// (about 24.8 days). A longer wait goes through it as often as it takes.
pub(crate) const MAX_LEVEL: u32 = 31;

/// Due scheduled messages a bus takes from the due queue at a time (the consumer's prefetch).
const DUE_PREFETCH: u16 = 256;

/// A message this close to due (ms) is held until due instead of going down the levels
/// again: the shortest levels cost a broker round trip each for a wait shorter than the
/// trip's jitter. It stays unacked meanwhile, so a crash returns it to the due queue.
const HOLD_MS: u64 = 32;

/// What a hop down the levels leaves of the wait, at least, to be held: the broker may expire
/// a message and pass it on some milliseconds late when busy, and a hop that left nothing
/// would make the message late by as much.
const SLACK_MS: u64 = HOLD_MS / 2;

/// The delay level for a remaining wait of `remaining_ms` (at least 1): the longest TTL,
/// 2^level ms, that does not go past it.
pub(crate) fn level_for(remaining_ms: u64) -> u32 {
    (63 - remaining_ms.max(1).leading_zeros()).min(MAX_LEVEL)
}

/// Milliseconds since the Unix epoch, rounded up: a message due at that millisecond is due no
/// sooner than `at`.
fn millis_up(at: SystemTime) -> u64 {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if d.subsec_nanos() % 1_000_000 == 0 {
        ms
    } else {
        ms.saturating_add(1)
    }
}

/// Milliseconds since the Unix epoch, rounded down.
fn millis_down(at: SystemTime) -> u64 {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The queue for a message due at `due_ms` when it is `now_ms`: the due queue itself when
/// what is left of the wait is short enough to be held there (see [`HOLD_MS`]), else the
/// delay level for the remaining wait less [`SLACK_MS`].
fn queue_for(naming: &Naming, due_ms: u64, now_ms: u64) -> String {
    match due_ms.saturating_sub(now_ms) {
        remaining if remaining <= HOLD_MS => naming.schedule_due_queue(),
        remaining => naming.schedule_level_queue(level_for(remaining - SLACK_MS)),
    }
}

/// How a message scheduled for `at` (later than `now`) goes out: to the delay level for its
/// wait, carrying when it is due and where it goes.
pub(crate) fn publication<'a>(
    naming: &Naming,
    out: &'a Outgoing,
    at: SystemTime,
    now: SystemTime,
) -> Result<Publication<'a>, TransportError> {
    let due_ms = millis_up(at);
    let mut headers = (*out.envelope.headers).clone();
    headers
        .custom
        .insert(header::DELIVER_AT.to_string(), due_ms.to_string());
    headers
        .custom
        .insert(header::DESTINATION.to_string(), out.destination.to_header());
    Ok(Publication {
        exchange: String::new(),
        key: queue_for(naming, due_ms, millis_down(now)),
        mandatory: true,
        props: wire::properties(&headers)?,
        body: wire::body(&out.envelope)?,
        about: About::Destination(&out.destination),
    })
}

/// When a stored scheduled message is due (milliseconds since the Unix epoch); `None` when it
/// does not say, and is then handed out at once for the bus to judge.
fn due_at(envelope: &Envelope) -> Option<u64> {
    envelope.headers.get(header::DELIVER_AT)?.parse().ok()
}

impl AmqpTransport {
    /// Declare the due queue and every delay level, once per transport (again after a
    /// failure, or once they turned out to be missing). Declaring is idempotent, so buses
    /// sharing a naming, or two first sends at once, declare the same queues.
    pub(crate) async fn ensure_schedule_topology(&self) -> Result<(), TransportError> {
        if self.inner.schedule_declared.load(Ordering::Acquire) {
            return Ok(());
        }
        // Sends that start together wait for one declaration rather than each making its own.
        let _one = self.inner.schedule_declaring.lock().await;
        if self.inner.schedule_declared.load(Ordering::Acquire) {
            return Ok(());
        }
        self.declare_schedule_topology().await?;
        self.inner.schedule_declared.store(true, Ordering::Release);
        Ok(())
    }

    /// The queues of scheduled messages may be gone (deleted by hand): declare them again
    /// before the next use.
    pub(crate) fn forget_schedule_topology(&self) {
        self.inner.schedule_declared.store(false, Ordering::Release);
    }

    async fn declare_schedule_topology(&self) -> Result<(), TransportError> {
        let naming = &self.inner.config.naming;
        let due = naming.schedule_due_queue();
        let ch = self.topology_channel().await?;
        let work = async {
            ch.queue_declare(
                due.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_error(format!("declaring queue `{due}`"), e))?;
            for level in 0..=MAX_LEVEL {
                let name = naming.schedule_level_queue(level);
                let mut args = FieldTable::default();
                args.insert(
                    "x-message-ttl".into(),
                    AMQPValue::LongLongInt(1_i64 << level),
                );
                args.insert(
                    "x-dead-letter-exchange".into(),
                    AMQPValue::LongString("".into()),
                );
                args.insert(
                    "x-dead-letter-routing-key".into(),
                    AMQPValue::LongString(LongString::from(due.as_str())),
                );
                ch.queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
                    .await
                    .map_err(|e| broker_error(format!("declaring queue `{name}`"), e))?;
            }
            Ok::<(), TransportError>(())
        };
        let result = TransportError::within(
            "declaring the queues of scheduled messages",
            self.inner.config.connect_timeout,
            work,
        )
        .await;
        let _ = ch.close(200, "declared".into()).await;
        result?
    }

    /// The subscription on the due queue (see [`DueSubscription`]).
    pub(crate) async fn due_subscription(&self) -> Result<DueSubscription, TransportError> {
        self.ensure_schedule_topology().await?;
        let queue = self.inner.config.naming.schedule_due_queue();
        let target = Destination::Endpoint("scheduled messages".into());
        let inner =
            AmqpSubscription::start(self.clone(), target, queue, DUE_PREFETCH, None).await?;
        let (due_tx, due_rx) = mpsc::channel(usize::from(DUE_PREFETCH));
        let (stop_tx, stop_rx) = watch::channel(false);
        let sorter = tokio::spawn(sort_due(self.clone(), inner, due_tx, stop_rx));
        Ok(DueSubscription {
            due: due_rx,
            stop: stop_tx,
            sorter: Some(sorter),
            stopped: None,
            limit: self.inner.config.publish_timeout + self.inner.config.connect_timeout,
            cancelled: false,
        })
    }

    /// Move not-yet-due messages to the delay level for what is left of their wait, then
    /// ack them; if that fails, return them to the due queue after a pause (so a broker that
    /// refuses is not asked again at once).
    async fn move_down(self, deliveries: Vec<Delivery>) {
        let envelopes: Vec<Envelope> = deliveries.iter().map(|d| d.envelope().clone()).collect();
        let moved = self.republish(&envelopes).await;
        match moved {
            Ok(()) => {
                for delivery in deliveries {
                    if let Err(error) = delivery.ack().await {
                        tracing::debug!(%error, "ack of a scheduled message moved to its delay level failed; it may be delivered twice");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, count = deliveries.len(), "moving scheduled messages to their delay level failed; trying again shortly");
                if let TransportError::Unroutable(_) = error {
                    self.forget_schedule_topology();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                for delivery in deliveries {
                    let _ = delivery.nack().await;
                }
            }
        }
    }

    async fn republish(&self, envelopes: &[Envelope]) -> Result<(), TransportError> {
        self.ensure_schedule_topology().await?;
        let naming = &self.inner.config.naming;
        let now_ms = millis_down(SystemTime::now());
        let mut publications = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let due_ms = due_at(envelope).unwrap_or(now_ms);
            publications.push(Publication {
                exchange: String::new(),
                key: queue_for(naming, due_ms, now_ms),
                mandatory: true,
                props: wire::properties(&envelope.headers)?,
                body: wire::body(envelope)?,
                about: About::Schedule,
            });
        }
        self.publish_confirmed(&publications).await
    }
}

/// Consume the due queue until `stop`: hand the due messages to `due`, and move the others
/// back into the delay levels in tasks of their own. It runs apart from whoever takes the due
/// messages, so a message on its way down the levels never waits for a due one to be
/// delivered. Returns the consumer, cancelled, whose channel settles what was handed out.
async fn sort_due(
    transport: AmqpTransport,
    mut inner: AmqpSubscription,
    due: mpsc::Sender<Result<Delivery, TransportError>>,
    mut stop: watch::Receiver<bool>,
) -> AmqpSubscription {
    let mut moving = JoinSet::new();
    // Dropped at the end, which returns what they hold to the queue.
    let mut holding = JoinSet::new();
    loop {
        while moving.try_join_next().is_some() {}
        while holding.try_join_next().is_some() {}
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            next = inner.next() => next,
        };
        let first = match next {
            None => break,
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                if due.send(Err(error)).await.is_err() {
                    break;
                }
                // The consumer re-opens on the next call; not at once, so a broker that keeps
                // refusing is not asked in a loop.
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Everything already received goes in one batch: one confirm round trip for all the
        // messages to move, however many.
        let mut batch = vec![first];
        while batch.len() < usize::from(DUE_PREFETCH) {
            match inner.next_buffered().await {
                Some(delivery) => batch.push(delivery),
                None => break,
            }
        }
        let now_ms = millis_down(SystemTime::now());
        let mut ready = Vec::new();
        let mut waiting = Vec::new();
        for delivery in batch {
            match due_at(delivery.envelope()) {
                Some(at) if at > now_ms + HOLD_MS => waiting.push(delivery),
                Some(at) if at > now_ms => {
                    holding.spawn(hold(delivery, at, due.clone()));
                }
                _ => ready.push(delivery),
            }
        }
        if !waiting.is_empty() {
            moving.spawn(transport.clone().move_down(waiting));
        }
        for delivery in ready {
            // Dropped with the channel when nobody takes due messages any more: the delivery
            // then returns to the queue.
            if due.send(Ok(delivery)).await.is_err() {
                break;
            }
        }
    }
    inner.cancel().await;
    // Let the moves in flight finish (each within the publish timeout), so their acks go out
    // on the channel before it closes.
    let limit = transport.inner.config.publish_timeout;
    let _ =
        tokio::time::timeout(limit, async { while moving.join_next().await.is_some() {} }).await;
    inner
}

/// Hand `delivery`, due at `at_ms`, to `due` once it is due by the wall clock.
async fn hold(delivery: Delivery, at_ms: u64, due: mpsc::Sender<Result<Delivery, TransportError>>) {
    loop {
        let now_ms = millis_down(SystemTime::now());
        if now_ms >= at_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(at_ms - now_ms)).await;
    }
    let _ = due.send(Ok(delivery)).await;
}

/// The subscription on the due queue: the due messages a task consuming it found (see
/// `sort_due`), each acked once delivered (a nack returns it to the due queue).
pub(crate) struct DueSubscription {
    due: mpsc::Receiver<Result<Delivery, TransportError>>,
    stop: watch::Sender<bool>,
    sorter: Option<JoinHandle<AmqpSubscription>>,
    /// The consumer once stopped, kept so deliveries handed out can still be settled.
    stopped: Option<AmqpSubscription>,
    /// How long stopping may take.
    limit: Duration,
    cancelled: bool,
}

#[async_trait]
impl Subscription for DueSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        if self.cancelled {
            return None;
        }
        self.due.recv().await
    }

    async fn cancel(&mut self) {
        self.cancelled = true;
        let _ = self.stop.send(true);
        // Due messages not handed out go back to the queue now, for another bus; the task
        // cannot be left waiting to hand out one more.
        self.due.close();
        while self.due.try_recv().is_ok() {}
        if let Some(sorter) = self.sorter.take() {
            if let Ok(Ok(inner)) = tokio::time::timeout(self.limit, sorter).await {
                self.stopped = Some(inner);
            }
        }
    }
}

impl Drop for DueSubscription {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bus_core::Headers;

    use super::*;

    #[test]
    fn the_level_is_the_longest_ttl_within_the_wait() {
        assert_eq!(level_for(1), 0);
        assert_eq!(level_for(2), 1);
        assert_eq!(level_for(3), 1);
        assert_eq!(level_for(4), 2);
        assert_eq!(level_for(1_023), 9);
        assert_eq!(level_for(1_024), 10);
        assert_eq!(level_for(5_000), 12);
        for r in 1..100_000_u64 {
            let level = level_for(r);
            assert!(1_u64 << level <= r, "{r} ms: level {level} outlasts it");
            assert!(
                r < 1_u64 << (level + 1),
                "{r} ms: level {level} is too short"
            );
        }
        // Beyond the longest TTL the broker takes, the longest level, again and again.
        assert_eq!(level_for(1 << 31), MAX_LEVEL);
        assert_eq!(level_for(u64::MAX), MAX_LEVEL);
        assert_eq!(level_for(0), 0, "never asked, but no panic");
    }

    #[test]
    fn a_wait_takes_one_hop_per_bit_and_never_ends_early() {
        for r in [1_u64, 2, 3, 7, 1_000, 4_999, 65_535] {
            let (mut left, mut hops) = (r, 0);
            while left > 0 {
                left -= 1 << level_for(left);
                hops += 1;
            }
            assert_eq!(hops, r.count_ones(), "{r} ms");
        }
    }

    #[test]
    fn due_times_round_up_and_now_rounds_down() {
        let at = UNIX_EPOCH + Duration::from_micros(1_000_500);
        assert_eq!(millis_up(at), 1_001);
        assert_eq!(millis_down(at), 1_000);
        let whole = UNIX_EPOCH + Duration::from_millis(1_000);
        assert_eq!(millis_up(whole), 1_000);
    }

    #[test]
    fn a_message_goes_to_its_level_or_straight_to_the_due_queue() {
        let naming = Naming::default().with_namespace("ns");
        assert_eq!(queue_for(&naming, 10_000, 10_000), "ns.bus.schedule.due");
        assert_eq!(queue_for(&naming, 10_000, 12_000), "ns.bus.schedule.due");
        assert_eq!(queue_for(&naming, 10_001, 10_000), "ns.bus.schedule.due");
        assert_eq!(queue_for(&naming, 10_032, 10_000), "ns.bus.schedule.due");
        // A hop leaves at least the slack of the wait, to be held until due.
        assert_eq!(queue_for(&naming, 10_033, 10_000), "ns.bus.schedule.L4");
        assert_eq!(queue_for(&naming, 10_048, 10_000), "ns.bus.schedule.L5");
        assert_eq!(queue_for(&naming, 15_000, 10_000), "ns.bus.schedule.L12");
        for remaining in HOLD_MS + 1..20_000 {
            let key = queue_for(&naming, 10_000 + remaining, 10_000);
            let level: u32 = key
                .strip_prefix("ns.bus.schedule.L")
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                remaining - (1 << level) >= SLACK_MS,
                "{remaining} ms: L{level}"
            );
        }
    }

    #[test]
    fn the_stored_copy_carries_when_and_where() {
        let naming = Naming::default();
        let headers = Headers {
            message_id: "m-1".into(),
            message_type: "shop.Remind".into(),
            content_type: "application/json".into(),
            ..Headers::default()
        };
        let out = Outgoing::new(
            Destination::Event(Arc::from("shop.Expired")),
            Envelope::from_bytes(headers, "{}"),
        );
        let now = UNIX_EPOCH + Duration::from_millis(1_000_000);
        let at = now + Duration::from_millis(1_500);
        let p = publication(&naming, &out, at, now).unwrap();
        assert_eq!(p.key, "bus.schedule.L10");
        assert!(p.mandatory);
        let stored = wire::envelope(&p.props, p.body.to_vec());
        assert_eq!(stored.headers.get(header::DELIVER_AT), Some("1001500"));
        assert_eq!(
            stored.headers.get(header::DESTINATION),
            Some("event:shop.Expired")
        );
        assert_eq!(due_at(&stored), Some(1_001_500));
        assert_eq!(&*stored.headers.message_id, "m-1");
    }
}

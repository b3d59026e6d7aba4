//! Batched consumer acks: one `basic.ack` with `multiple` for a run of settled deliveries,
//! instead of one frame per message. Used by a subscription when
//! [`AmqpTransport::with_batched_acks`](crate::AmqpTransport::with_batched_acks) is on.

use std::collections::VecDeque;
use std::sync::Mutex;

use lapin::options::BasicAckOptions;

use crate::subscription::requeue;

/// The consumer acks of one subscription's channel, held back and sent as one `basic.ack` with
/// `multiple` for a run of deliveries: one frame for the broker instead of one per message.
///
/// Why it is safe: a `multiple` ack settles every unacked delivery of the channel up to its
/// tag, so it is only sent for the newest delivery of a run that starts at the oldest delivery
/// handed out and not yet covered, and in which every delivery is settled: acked (held here),
/// or nacked / acked alone with its frame already written. Deliveries the consumer has not
/// handed out yet all have higher tags (the broker numbers a channel's deliveries in order and
/// the consumer hands them out in order), so nothing unhandled is ever acked. Deliveries of a
/// channel that died are poisoned in lapin: they count as settled, are never acked, and the
/// broker delivers them again. `multiple` acks go out one at a time, in tag order, since an
/// older one after a newer one would name a tag that is no longer unacked, which closes the
/// channel. A batch never sent (a crash) only means redelivery: at least once still holds.
pub(crate) struct AckBatch {
    state: Mutex<AckState>,
    /// Held-back acks that trigger a send; also how many acked deliveries may wait behind an
    /// unsettled one before they are acked one by one.
    limit: usize,
    /// One `multiple` ack on the wire at a time.
    sending: tokio::sync::Mutex<()>,
    /// Wakes a subscription waiting for deliveries, to send what was held back meanwhile.
    pub(crate) wanted: tokio::sync::Notify,
}

#[derive(Default)]
struct AckState {
    /// Deliveries handed out and not yet covered by a sent ack, oldest first.
    window: VecDeque<Slot>,
    /// Sequence number of the next delivery handed out.
    next_seq: u64,
    /// The newest delivery of the settled run (sequence number, acker), whose `multiple` ack
    /// is still to be sent.
    held: Option<(u64, lapin::Acker)>,
    /// Acks the held one covers.
    held_count: usize,
    /// Acked deliveries still in the window, behind an unsettled one.
    waiting: usize,
    /// Shutting down: send every ack at once.
    closing: bool,
}

struct Slot {
    acker: lapin::Acker,
    state: SlotState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Being handled.
    Open,
    /// Acked, held back.
    Acked,
    /// A frame of its own is on its way (nack, or an ack alone): not settled until written.
    Sending,
    /// Settled with a frame of its own.
    Done,
}

impl AckState {
    /// Sequence number of the oldest delivery in the window.
    fn first(&self) -> u64 {
        self.next_seq - self.window.len() as u64
    }

    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        let index = usize::try_from(seq.checked_sub(self.first())?).ok()?;
        self.window.get_mut(index)
    }

    /// Move the settled run at the front of the window into the held ack.
    fn advance(&mut self) {
        let mut seq = self.first();
        while let Some(front) = self.window.front() {
            let dead = front.acker.poisoned();
            if !dead && matches!(front.state, SlotState::Open | SlotState::Sending) {
                break;
            }
            let Some(slot) = self.window.pop_front() else {
                break;
            };
            if slot.state == SlotState::Acked {
                self.waiting -= 1;
                if !dead {
                    self.held = Some((seq, slot.acker));
                    self.held_count += 1;
                }
            }
            seq += 1;
        }
    }
}

impl AckBatch {
    pub(crate) fn new(limit: usize) -> Self {
        AckBatch {
            state: Mutex::new(AckState::default()),
            limit,
            sending: tokio::sync::Mutex::new(()),
            wanted: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Track a delivery handed out; its sequence number settles it later.
    pub(crate) fn handed_out(&self, acker: lapin::Acker) -> u64 {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.window.push_back(Slot {
            acker,
            state: SlotState::Open,
        });
        seq
    }

    /// Ack a delivery: held back, or sent now with what is held when enough waits (or at
    /// shutdown). `Ok(false)` if its channel died (the broker redelivers it).
    pub(crate) async fn ack(&self, seq: u64) -> Result<bool, lapin::Error> {
        let (send_now, alone) = {
            let mut st = self.lock();
            let Some(slot) = st.slot(seq) else {
                return Ok(false);
            };
            if slot.acker.poisoned() || slot.state != SlotState::Open {
                return Ok(false);
            }
            slot.state = SlotState::Acked;
            st.waiting += 1;
            st.advance();
            // Too many acked deliveries stuck behind a slow one: ack those one by one, so the
            // broker's unacked count (and the prefetch budget) is not held up by one handler.
            let mut alone = Vec::new();
            if st.waiting >= self.limit {
                let first = st.first();
                for (i, slot) in st.window.iter_mut().enumerate() {
                    if slot.state == SlotState::Acked {
                        slot.state = SlotState::Sending;
                        alone.push((first + i as u64, slot.acker.clone()));
                    }
                }
                st.waiting = 0;
            }
            let send_now = st.held.is_some() && (st.closing || st.held_count >= self.limit);
            (send_now, alone)
        };
        for (at, acker) in alone {
            let _ = acker.ack(BasicAckOptions::default()).await;
            self.settled(at);
        }
        if send_now {
            self.flush().await?;
        } else {
            self.wanted.notify_one();
        }
        Ok(true)
    }

    /// Nack a delivery (requeue) with a frame of its own; it counts as settled once written.
    pub(crate) async fn nack(&self, seq: u64) -> Result<bool, lapin::Error> {
        let acker = {
            let mut st = self.lock();
            match st.slot(seq) {
                Some(slot) if slot.state == SlotState::Open => {
                    slot.state = SlotState::Sending;
                    slot.acker.clone()
                }
                _ => return Ok(false),
            }
        };
        let result = acker.nack(requeue()).await;
        self.settled(seq);
        result
    }

    /// A delivery's own frame is written: it no longer holds the run back.
    fn settled(&self, seq: u64) {
        let mut st = self.lock();
        if let Some(slot) = st.slot(seq) {
            slot.state = SlotState::Done;
        }
        st.advance();
        if st.held.is_some() {
            self.wanted.notify_one();
        }
    }

    /// Send the held-back acks, if any, as one `multiple` ack.
    ///
    /// The held ack is only forgotten once sent, so a flush dropped half-way (at shutdown)
    /// leaves it for the next one; sending it twice is harmless, lapin sends an acker once.
    pub(crate) async fn flush(&self) -> Result<bool, lapin::Error> {
        let _one_at_a_time = self.sending.lock().await;
        let Some((seq, acker)) = self.lock().held.clone() else {
            return Ok(true);
        };
        let result = acker.ack(BasicAckOptions { multiple: true }).await;
        let mut st = self.lock();
        if st.held.as_ref().is_some_and(|(held, _)| *held == seq) {
            st.held = None;
            st.held_count = 0;
        }
        result
    }

    /// Shutting down: send what is held, and every later ack at once.
    pub(crate) async fn close(&self) {
        self.lock().closing = true;
        let _ = self.flush().await;
    }
}

#[cfg(test)]
mod tests {
    //! Batched acks against the local RabbitMQ (skipped, with a note, when it is unreachable):
    //! a `multiple` ack must never cover a delivery that is not settled.

    use std::time::Duration;

    use bus_core::{
        Delivery, Destination, EndpointTopology, Envelope, Headers, Outgoing, SubscribeOptions,
        Subscription, Topology, Transport,
    };
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    use tokio::time::timeout;

    use crate::{AmqpConfig, AmqpTransport, Naming};

    fn url() -> String {
        std::env::var("BUS_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    }

    /// A batching transport with a private prefix and an endpoint queue holding `n` messages
    /// `m0..m{n-1}`; `None` if the broker is unreachable and not required.
    async fn loaded(test: &str, n: usize) -> Option<(AmqpTransport, Naming)> {
        let id = format!("{:x}", std::process::id() as u64 * 1_000_003 + n as u64);
        let naming = Naming {
            queue_prefix: format!("ackbatch-{test}-{id}."),
            events_exchange: format!("ackbatch-{test}-{id}.events"),
            ..Naming::default()
        };
        let config = AmqpConfig::new(url())
            .naming(naming.clone())
            .connect_timeout(Duration::from_secs(5));
        let transport = match AmqpTransport::connect(config).await {
            Ok(t) => t.with_batched_acks(true),
            Err(e) if std::env::var("BUS_REQUIRE_BROKERS").is_ok_and(|v| v == "1") => {
                panic!("RabbitMQ unreachable: {e}")
            }
            Err(e) => {
                eprintln!("skipping {test}: RabbitMQ unreachable ({e})");
                return None;
            }
        };
        let topology = Topology {
            endpoints: vec![EndpointTopology {
                name: "e".into(),
                ..EndpointTopology::default()
            }],
        };
        transport.declare(&topology).await.expect("declare");
        let batch = (0..n)
            .map(|i| Outgoing {
                destination: Destination::Endpoint("e".into()),
                envelope: Envelope::from_bytes(
                    Headers {
                        message_id: format!("m{i}").into(),
                        message_type: "t".into(),
                        content_type: "application/json".into(),
                        ..Headers::default()
                    },
                    b"{}".to_vec(),
                ),
                delay: None,
                deliver_at: None,
            })
            .collect();
        transport.send_batch(batch).await.expect("send");
        Some((transport, naming))
    }

    /// Message ids ready in the endpoint queue once nothing holds them, oldest first.
    async fn ready(transport: &AmqpTransport, expected: usize) -> Vec<String> {
        let mut sub = transport
            .subscribe("e", SubscribeOptions { prefetch: 100 })
            .await
            .expect("subscribe");
        let mut ids = Vec::new();
        loop {
            match timeout(Duration::from_millis(1_500), sub.next()).await {
                Ok(Some(Ok(d))) => {
                    ids.push(d.envelope().headers.message_id.to_string());
                    d.ack().await.expect("ack");
                }
                _ => break,
            }
            if ids.len() > expected {
                break;
            }
        }
        sub.cancel().await;
        ids
    }

    async fn cleanup(transport: &AmqpTransport, naming: &Naming) {
        if let Ok(ch) = transport.topology_channel().await {
            for q in [naming.queue("e"), naming.error_queue("e")] {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = ch
                .exchange_delete(
                    naming.events_exchange_name().as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = transport.close().await;
    }

    async fn take(sub: &mut Box<dyn Subscription>, n: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        while out.len() < n {
            let d = timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("a delivery in time")
                .expect("open")
                .expect("no error");
            out.push(d);
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acked_deliveries_behind_an_unsettled_one_never_take_it_along() {
        let Some((transport, naming)) = loaded("behind", 20).await else {
            return;
        };
        let mut sub = transport
            .subscribe("e", SubscribeOptions { prefetch: 20 })
            .await
            .expect("subscribe");
        let mut deliveries = take(&mut sub, 20).await;
        let first = deliveries.remove(0);
        // Out of order, all but the first.
        deliveries.reverse();
        for d in deliveries {
            d.ack().await.expect("ack");
        }
        // The first is never settled: the process "crashes" with it in hand. It must come
        // back; of the others, at most the few acks still held back behind it (fewer than a
        // quarter of the prefetch) may come back too, as duplicates.
        std::mem::forget(first);
        drop(sub);
        let back = ready(&transport, 20).await;
        assert!(back.contains(&"m0".to_string()), "{back:?}");
        assert!(back.len() <= 5, "{back:?}");
        cleanup(&transport, &naming).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nacked_and_acked_deliveries_settle_exactly_as_asked() {
        let Some((transport, naming)) = loaded("mixed", 12).await else {
            return;
        };
        let mut sub = transport
            .subscribe("e", SubscribeOptions { prefetch: 12 })
            .await
            .expect("subscribe");
        let deliveries = take(&mut sub, 12).await;
        for (i, d) in deliveries.into_iter().enumerate() {
            if i % 4 == 1 {
                d.nack().await.expect("nack");
            } else {
                d.ack().await.expect("ack");
            }
        }
        sub.cancel().await;
        drop(sub);
        let mut back = ready(&transport, 3).await;
        back.sort();
        assert_eq!(back, vec!["m1", "m5", "m9"]);
        cleanup(&transport, &naming).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_acks_are_sent_once_no_delivery_is_ready() {
        let Some((transport, naming)) = loaded("flush", 30).await else {
            return;
        };
        let mut sub = transport
            .subscribe("e", SubscribeOptions { prefetch: 100 })
            .await
            .expect("subscribe");
        // Fewer than a quarter of the prefetch: held back until the queue runs dry.
        for d in take(&mut sub, 10).await {
            d.ack().await.expect("ack");
        }
        for d in take(&mut sub, 20).await {
            d.ack().await.expect("ack");
        }
        // Nothing more to deliver: waiting for the next one sends what is held, so even a
        // subscription dropped without a proper shutdown leaves nothing behind.
        assert!(timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err());
        drop(sub);
        assert!(ready(&transport, 0).await.is_empty(), "every ack was sent");
        cleanup(&transport, &naming).await;
    }
}

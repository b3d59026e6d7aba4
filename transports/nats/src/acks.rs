//! Settling the deliveries of one subscription: acks, their confirmations, naks, and the
//! progress signals of the messages in flight, around the registry of the `flight` module.
//!
//! Acks go to the client's command queue there and then, through a copy of the client used as
//! a `Sink` (no future, no task per ack), one after the other under one lock: the order in
//! which they get their numbers is the order in which they reach the client, and so the
//! server, which a confirmation relies on (see the `flight` module). Only when that queue is
//! full does an ack wait, as a future the runtime drives.
//!
//! Two tasks per subscription, both ending once the registry is gone: one reads the server's
//! confirmations (and after a reconnect sends the unconfirmed acks again), the other ticks:
//! progress signals, and acks that got no confirmation in time.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_nats::client::Statistics;
use async_nats::message::OutboundMessage;
use async_nats::{Client, StatusCode, Subject, Subscriber};
use bus_core::{async_trait, Bytes, Envelope, SharedAcker, TransportError};
use futures_util::{Sink, StreamExt};
use tokio::sync::{watch, Notify};

use crate::flight::{Flight, Ticks};

/// How long the pull loop waits for half a batch of room before it asks for what is free.
const LINGER: Duration = Duration::from_millis(2);

pub(crate) const ACK: &[u8] = b"+ACK";
pub(crate) const NAK: &[u8] = b"-NAK";
const PROGRESS: &[u8] = b"+WPI";

/// The registry of one subscription, and the acker of its deliveries.
pub(crate) struct Acks {
    client: Client,
    /// The client's counters: `connects` tells which connection an ack went out on.
    stats: Arc<Statistics>,
    /// A copy of the client used as a `Sink`. Every ack goes through it, under this lock.
    sink: tokio::sync::Mutex<Client>,
    flight: Mutex<Flight>,
    /// Tells the pull loop that the room it waits for is free.
    room: Notify,
    /// Where the server confirms acks (`<inbox>.<slot>.<number>`); `None` when acks are not
    /// confirmed.
    inbox: Option<String>,
    request_timeout: Duration,
    /// Dropped with the registry: its tasks end at once.
    alive: watch::Sender<()>,
}

impl Acks {
    /// A registry for `prefetch` messages. With `confirm`, acks ask for confirmations, which
    /// come back on a subscription of their own (and unconfirmed acks are sent again on each
    /// new connection, which `connections` announces); with `ticks`, a task signals progress
    /// and gives up on confirmations that do not come.
    pub(crate) async fn start(
        client: Client,
        connections: watch::Receiver<u64>,
        prefetch: usize,
        confirm: bool,
        request_timeout: Duration,
        ticks: Option<Ticks>,
    ) -> Result<Arc<Self>, TransportError> {
        const SUBSCRIBING: &str = "subscribing to ack confirmations";
        let inbox = confirm.then(|| client.new_inbox());
        let replies = match &inbox {
            Some(inbox) => {
                let subscribing = client.subscribe(format!("{inbox}.>"));
                let sub = TransportError::within(SUBSCRIBING, request_timeout, subscribing)
                    .await?
                    .map_err(|e| TransportError::connection(SUBSCRIBING, e))?;
                Some(sub)
            }
            None => None,
        };
        let (alive, _) = watch::channel(());
        let acks = Arc::new(Acks {
            stats: client.statistics(),
            sink: tokio::sync::Mutex::new(client.clone()),
            client,
            flight: Mutex::new(Flight::new(prefetch)),
            room: Notify::new(),
            inbox,
            request_timeout,
            alive,
        });
        if let Some(ticks) = ticks {
            let gone = acks.alive.subscribe();
            tokio::spawn(tick(Arc::downgrade(&acks), gone, ticks));
        }
        if let Some(replies) = replies {
            let gone = acks.alive.subscribe();
            tokio::spawn(listen(Arc::downgrade(&acks), replies, gone, connections));
        }
        Ok(acks)
    }

    fn flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client's connection now (its count of connections so far).
    fn connection(&self) -> u64 {
        self.stats.connects.load(Ordering::Acquire)
    }

    /// Wait for room to pull into; returns the size of the pull, counted as requested until
    /// [`Acks::end_pull`].
    pub(crate) async fn room(&self) -> usize {
        let mut lingered = false;
        loop {
            let linger = match self.flight().take_room(lingered) {
                Ok(n) => return n,
                Err(some_room) => some_room,
            };
            let notified = self.room.notified();
            if linger {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(LINGER) => lingered = true,
                }
            } else {
                notified.await;
            }
        }
    }

    /// The pull in progress ended.
    pub(crate) fn end_pull(&self) {
        self.flight().end_pull();
    }

    /// A pulled message takes a slot: its token.
    pub(crate) fn insert(&self, reply: Subject) -> u32 {
        self.flight().insert(reply)
    }

    fn wake_if(&self, wake: bool) {
        if wake {
            self.room.notify_one();
        }
    }

    /// Return a message for redelivery now, from a context that cannot wait.
    pub(crate) fn give_back(&self, index: u32) {
        let (reply, wake) = self.flight().settle(index);
        self.wake_if(wake);
        let Some(reply) = reply else {
            return;
        };
        let nak = Bytes::from_static(NAK);
        if let Ok(mut sink) = self.sink.try_lock() {
            if let Poll::Ready(ready) = poll_room(&mut sink, &mut noop()) {
                let sent = ready.and_then(|()| {
                    Pin::new(&mut *sink).start_send(OutboundMessage {
                        subject: reply,
                        reply: None,
                        payload: nak,
                        headers: None,
                    })
                });
                if let Err(error) = sent {
                    tracing::debug!(%error, "nak not sent; JetStream redelivers after the ack wait");
                }
                return;
            }
        }
        // The queue is full: a task waits for room.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            handle.spawn(async move { signal(&client, reply, nak).await });
        }
    }

    /// The reply subject that confirms ack number `seq`, of slot `index`.
    fn confirm_to(inbox: &str, index: u32, seq: u64) -> Subject {
        let mut text = String::with_capacity(inbox.len() + 32);
        text.push_str(inbox);
        text.push('.');
        push_number(&mut text, u64::from(index));
        text.push('.');
        push_number(&mut text, seq);
        Subject::from(text)
    }

    /// Ack the message of a slot through the sink, which has room.
    fn send_ack(&self, sink: &mut Client, index: u32) -> Result<(), TransportError> {
        let (subject, reply) = match &self.inbox {
            Some(inbox) => {
                let Some(ack) = self.flight().ack(index, self.connection()) else {
                    return Ok(());
                };
                let reply = ack.ask.map(|seq| Self::confirm_to(inbox, index, seq));
                (ack.subject, reply)
            }
            None => {
                let (subject, wake) = self.flight().settle(index);
                self.wake_if(wake);
                let Some(subject) = subject else {
                    return Ok(());
                };
                (subject, None)
            }
        };
        let ack = OutboundMessage {
            subject,
            reply,
            payload: Bytes::from_static(ACK),
            headers: None,
        };
        Pin::new(sink).start_send(ack).map_err(|e| {
            let wake = self.flight().remove(index);
            self.wake_if(wake);
            TransportError::connection("acking a delivery (JetStream will redeliver it)", e)
        })
    }

    /// Send an unconfirmed ack again, asking for a confirmation, if one is due.
    async fn ask_again(&self) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        let mut sink = self.sink.lock().await;
        if let Err(error) = std::future::poll_fn(|cx| poll_room(&mut sink, cx)).await {
            tracing::debug!(%error, "ack not sent again");
            return;
        }
        let Some((index, subject, seq)) = self.flight().ask_again(self.connection()) else {
            return;
        };
        let ack = OutboundMessage {
            subject,
            reply: Some(Self::confirm_to(inbox, index, seq)),
            payload: Bytes::from_static(ACK),
            headers: None,
        };
        if let Err(error) = Pin::new(&mut *sink).start_send(ack) {
            tracing::debug!(%error, "ack not sent again");
        }
    }

    /// Send every unconfirmed ack again, on connection `conn`: the one they went out on may
    /// have lost them, and the server would deliver their messages again after the ack wait.
    /// An ack that did arrive is acked twice, which changes nothing.
    async fn send_again(&self, conn: u64) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        let mut sink = self.sink.lock().await;
        let again = self.flight().send_again(conn);
        if again.is_empty() {
            return;
        }
        tracing::debug!(
            acks = again.len(),
            "connection re-established; sending the unconfirmed acks again"
        );
        let last = again.len() - 1;
        for (n, (index, subject, seq)) in again.into_iter().enumerate() {
            let ack = OutboundMessage {
                subject,
                reply: (n == last).then(|| Self::confirm_to(inbox, index, seq)),
                payload: Bytes::from_static(ACK),
                headers: None,
            };
            let sent = match std::future::poll_fn(|cx| poll_room(&mut sink, cx)).await {
                Ok(()) => Pin::new(&mut *sink).start_send(ack),
                Err(e) => Err(e),
            };
            if let Err(error) = sent {
                tracing::debug!(%error, "ack not sent again; JetStream redelivers after the ack wait");
                return;
            }
        }
    }

    /// A reply to an ask, on its subject: the acks it confirms are settled, and if later ones
    /// are still unconfirmed, one asks again.
    async fn confirmed(&self, subject: &str, conn: u64) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        let parsed = subject
            .strip_prefix(inbox.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .and_then(|s| s.split_once('.'))
            .and_then(|(index, seq)| Some((index.parse().ok()?, seq.parse().ok()?)));
        let Some((index, seq)) = parsed else {
            return;
        };
        let (wake, ask) = self.flight().confirmed(index, seq, conn);
        self.wake_if(wake);
        if ask {
            self.ask_again().await;
        }
    }
}

/// Whether the client's command queue has room for one more message (a slot is kept for it
/// when it has).
fn poll_room(
    sink: &mut Client,
    cx: &mut Context<'_>,
) -> Poll<Result<(), async_nats::PublishError>> {
    Pin::new(sink).poll_ready(cx)
}

/// A context for polling that nothing is to wake: used where waiting is not an option.
fn noop() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

fn push_number(text: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    text.extend(digits[at..].iter().map(|&d| char::from(d)));
}

#[async_trait]
impl SharedAcker for Acks {
    async fn ack(self: Arc<Self>, token: u64) -> Result<(), TransportError> {
        // Only when `ack_now` found the client's command queue full (or the sink busy).
        let mut sink = self.sink.lock().await;
        match std::future::poll_fn(|cx| poll_room(&mut sink, cx)).await {
            Ok(()) => self.send_ack(&mut sink, token as u32),
            Err(e) => {
                let wake = self.flight().remove(token as u32);
                self.wake_if(wake);
                Err(TransportError::connection(
                    "acking a delivery (JetStream will redeliver it)",
                    e,
                ))
            }
        }
    }

    fn ack_now(&self, token: u64) -> Option<Result<(), TransportError>> {
        let mut sink = self.sink.try_lock().ok()?;
        match poll_room(&mut sink, &mut noop()) {
            // The runtime calls `ack`, which waits. This copy of the client keeps its place in
            // the queue's line meanwhile.
            Poll::Pending => None,
            Poll::Ready(Ok(())) => Some(self.send_ack(&mut sink, token as u32)),
            Poll::Ready(Err(e)) => {
                let wake = self.flight().remove(token as u32);
                self.wake_if(wake);
                Some(Err(TransportError::connection(
                    "acking a delivery (JetStream will redeliver it)",
                    e,
                )))
            }
        }
    }

    async fn nack(self: Arc<Self>, token: u64, _envelope: Envelope) -> Result<(), TransportError> {
        let index = token as u32;
        let reply = self.flight().settling(index);
        let settled = match reply {
            Some(reply) => settle(&self.client, reply, NAK, self.request_timeout).await,
            None => Ok(()),
        };
        let wake = self.flight().remove(index);
        self.wake_if(wake);
        settled
    }

    fn abandon(&self, token: u64, _envelope: Envelope) {
        self.give_back(token as u32);
    }
}

/// The registry's clock: progress signals, and confirmations given up on.
async fn tick(acks: Weak<Acks>, mut gone: watch::Receiver<()>, ticks: Ticks) {
    let mut interval = tokio::time::interval(ticks.every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut count = 0u64;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = gone.changed() => break,
        }
        count += 1;
        let Some(acks) = acks.upgrade() else {
            break;
        };
        let signal = ticks.progress.is_some_and(|n| count % n == 0);
        let tick = acks.flight().on_tick(signal, ticks.confirm_limit);
        acks.wake_if(tick.wake);
        if tick.lost > 0 {
            tracing::warn!(
                acks = tick.lost,
                within = ?acks.request_timeout,
                "acks not confirmed in time (a connection lost?); JetStream redelivers their messages after the ack wait if the acks did not arrive"
            );
        }
        if tick.ask {
            acks.ask_again().await;
        }
        for reply in tick.progress {
            if let Err(error) = acks
                .client
                .publish(reply, Bytes::from_static(PROGRESS))
                .await
            {
                tracing::debug!(%error, "progress signal not sent");
            }
        }
    }
}

/// The server's confirmations of acks; on each new connection, the unconfirmed acks are sent
/// again.
async fn listen(
    acks: Weak<Acks>,
    mut replies: Subscriber,
    mut gone: watch::Receiver<()>,
    mut connections: watch::Receiver<u64>,
) {
    let mut seen = match acks.upgrade() {
        Some(acks) => acks.connection(),
        None => return,
    };
    loop {
        let reply = tokio::select! {
            reply = replies.next() => match reply {
                Some(reply) => Some(reply),
                None => break,
            },
            changed = connections.changed() => {
                if changed.is_err() {
                    // The client is gone, and the confirmations with it.
                    break;
                }
                None
            }
            _ = gone.changed() => break,
        };
        let Some(acks) = acks.upgrade() else {
            break;
        };
        // A new connection first: a reply read on it confirms only what went out on it.
        let conn = acks.connection();
        if conn != seen {
            seen = conn;
            acks.send_again(conn).await;
        }
        let Some(reply) = reply else {
            continue;
        };
        if reply.status == Some(StatusCode::NO_RESPONDERS) {
            // Nothing took the ack: the consumer is gone.
            tracing::warn!("an ack found no consumer to take it; the message may be redelivered");
        }
        acks.confirmed(reply.subject.as_str(), conn).await;
    }
    let _ = replies.unsubscribe().await;
}

/// Send an ack kind and wait for the server to confirm it.
pub(crate) async fn settle(
    client: &Client,
    reply: Subject,
    kind: &'static [u8],
    request_timeout: Duration,
) -> Result<(), TransportError> {
    const SETTLING: &str = "settling a delivery (JetStream will redeliver it)";
    let request = client.request(reply, Bytes::from_static(kind));
    TransportError::within(SETTLING, request_timeout, request)
        .await?
        .map(drop)
        .map_err(|e| TransportError::connection(SETTLING, e))
}

/// Send an ack kind without waiting for a confirmation.
pub(crate) async fn signal(client: &Client, reply: Subject, kind: Bytes) {
    if let Err(error) = client.publish(reply, kind).await {
        tracing::debug!(%error, "ack signal not sent; JetStream redelivers after the ack wait");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmation_subjects_name_slot_and_ack() {
        let s = Acks::confirm_to("_INBOX.abc", 7, 12_345);
        assert_eq!(s.as_str(), "_INBOX.abc.7.12345");
        let mut t = String::new();
        push_number(&mut t, 0);
        push_number(&mut t, u64::MAX);
        assert_eq!(t, format!("0{}", u64::MAX));
    }
}

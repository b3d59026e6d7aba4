//! Scheduled messages: kept in Redis until due, then handed to whichever bus takes them.
//!
//! A scheduled message is stored by one script: its message id in the sorted set
//! `<root>:scheduled`, scored by its due time (ms since the Unix epoch, rounded up so it is
//! never early), and the message itself in the hash `<root>:scheduled:messages`, as the
//! fields of a stream entry (netstrings), with `bus-deliver-at` and `bus-destination` added.
//! The script also appends to the short stream `<root>:scheduled:wake`, which every bus taking
//! due messages watches, so one that planned to look later looks again at once.
//!
//! Taking due messages ([`DueSubscription`]): a script run by any number of buses moves due
//! ids (score at or before the server's clock) into `<root>:scheduled:claimed`, scored by the
//! end of a lease (the reclaim time), and returns their messages; ids whose lease ran out (a
//! bus that stopped without settling them) are due again first. A bus looks when the next
//! message is due (the script says when), when poked, and at least every block timeout; it
//! renews the leases of what it still holds. Ack: out of the claimed set and the hash. Nack:
//! due again now. Cancelling takes a waiting id out of the scheduled set and the hash; one
//! handed out already is being delivered and cannot be cancelled.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_core::header::{DELIVER_AT, DESTINATION};
use bus_core::{
    async_trait, Acker, Delivery, Destination, Envelope, MessageId, Outgoing, Subscription,
    TransportError,
};
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::transport::RedisTransport;
use crate::{scripts, wire};

/// Due messages handed out and not settled, per subscription; also the most taken per look.
const PREFETCH: usize = 128;

/// The shortest pause between two looks that found nothing due yet: a message due within the
/// same millisecond of the server's clock is not spun on.
const MIN_PAUSE: Duration = Duration::from_millis(1);

/// The due time of a message scheduled for `at`, in whole milliseconds since the Unix epoch,
/// rounded up: a message is never handed out before its time.
pub(crate) fn due_ms(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let ms = since.as_millis();
    let ms = if since.subsec_nanos() % 1_000_000 == 0 {
        ms
    } else {
        ms + 1
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The copy of `out` stored while it waits: its envelope with `bus-deliver-at` and
/// `bus-destination` added.
fn stored_envelope(out: &Outgoing, due: u64) -> Envelope {
    let mut headers = (*out.envelope.headers).clone();
    headers
        .custom
        .insert(DELIVER_AT.to_string(), due.to_string());
    headers
        .custom
        .insert(DESTINATION.to_string(), out.destination.to_header());
    Envelope {
        headers: Arc::new(headers),
        body: out.envelope.body.clone(),
    }
}

/// Store `out` (to an endpoint or an event) until `at`. A command to an endpoint nobody
/// declared is unroutable now, as it would be if sent now.
pub(crate) async fn store(
    transport: &RedisTransport,
    out: &Outgoing,
    at: SystemTime,
) -> Result<(), TransportError> {
    let keys = &transport.config().keys;
    let due = due_ms(at);
    let fields = wire::fields(&stored_envelope(out, due))?;
    let endpoint = match &out.destination {
        Destination::Endpoint(e) => &**e,
        _ => "",
    };
    let mut call = scripts::SCHEDULE.key(keys.endpoints());
    call.key(keys.scheduled())
        .key(keys.scheduled_messages())
        .key(keys.scheduled_wake())
        .arg(endpoint)
        .arg(out.envelope.headers.message_id.as_str())
        .arg(due)
        .arg(wire::stored_message(&fields));
    let mut conn = transport.conn();
    let stored: i64 = transport
        .run("scheduling a message", call.invoke_async(&mut conn))
        .await?;
    if stored == 0 {
        return Err(TransportError::Unroutable(out.destination.to_string()));
    }
    tracing::trace!(message_id = %out.envelope.headers.message_id, destination = %out.destination, due, "message scheduled");
    Ok(())
}

/// Cancel a scheduled message still waiting: `true` when it was, `false` when it is unknown,
/// delivered, cancelled before, or being delivered right now.
pub(crate) async fn cancel(
    transport: &RedisTransport,
    id: &MessageId,
) -> Result<bool, TransportError> {
    let keys = &transport.config().keys;
    let mut call = scripts::CANCEL_SCHEDULED.key(keys.scheduled());
    call.key(keys.scheduled_messages()).arg(id.as_str());
    let mut conn = transport.conn();
    let cancelled: i64 = transport
        .run(
            "cancelling a scheduled message",
            call.invoke_async(&mut conn),
        )
        .await?;
    Ok(cancelled == 1)
}

/// What the taker of due messages and the ackers of its deliveries share.
struct Shared {
    transport: RedisTransport,
    scheduled: String,
    claimed: String,
    messages: String,
    /// Ids handed out and not settled: their leases are renewed.
    in_flight: Mutex<HashSet<String>>,
}

impl Shared {
    fn settled(&self, id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn lease(&self) -> Duration {
        self.transport
            .config()
            .reclaim_idle
            .max(Duration::from_secs(1))
    }
}

/// The due scheduled messages, as this bus takes them.
pub(crate) struct DueSubscription {
    deliveries: mpsc::Receiver<Result<Delivery, TransportError>>,
    stop: CancellationToken,
}

impl DueSubscription {
    pub(crate) async fn start(transport: &RedisTransport) -> Result<Self, TransportError> {
        let keys = &transport.config().keys;
        let wake_key = keys.scheduled_wake();
        // Pokes after this point wake the taker; what was scheduled before, its first look
        // (which comes after) sees.
        let mut conn = transport.conn();
        let newest: Value = transport
            .run(
                "reading the wake stream",
                redis::cmd("XREVRANGE")
                    .arg(&wake_key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn),
            )
            .await?;
        let since = wire::entries(newest)
            .ok()
            .and_then(|e| e.into_iter().next())
            .map_or_else(|| "0-0".to_string(), |e| e.id);
        let watch_conn = transport.dedicated_connection().await?;
        let stop = CancellationToken::new();
        let poked = Arc::new(Notify::new());
        tokio::spawn(
            Watcher {
                transport: transport.clone(),
                key: wake_key,
                conn: watch_conn,
                since,
                poked: poked.clone(),
                stop: stop.clone(),
            }
            .run(),
        );
        let (tx, deliveries) = mpsc::channel(PREFETCH + 4);
        let taker = Taker {
            shared: Arc::new(Shared {
                transport: transport.clone(),
                scheduled: keys.scheduled(),
                claimed: keys.scheduled_claimed(),
                messages: keys.scheduled_messages(),
                in_flight: Mutex::new(HashSet::new()),
            }),
            slots: Arc::new(Semaphore::new(PREFETCH)),
            tx,
            poked,
            stop: stop.clone(),
        };
        tokio::spawn(taker.run());
        Ok(DueSubscription { deliveries, stop })
    }
}

impl Drop for DueSubscription {
    fn drop(&mut self) {
        // Deliveries still in the channel are dropped with it, and so given back.
        self.stop.cancel();
    }
}

#[async_trait]
impl Subscription for DueSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        self.deliveries.recv().await
    }

    /// Stops taking due messages and gives back at once those taken but not handed out;
    /// those handed out can still be settled.
    async fn cancel(&mut self) {
        self.stop.cancel();
        self.deliveries.close();
        while let Ok(unhanded) = self.deliveries.try_recv() {
            drop(unhanded);
        }
    }
}

/// Watches the wake stream on a connection of its own (its blocking read would hold up
/// anything else) and pokes the taker whenever a message was scheduled.
struct Watcher {
    transport: RedisTransport,
    key: String,
    conn: ConnectionManager,
    since: String,
    poked: Arc<Notify>,
    stop: CancellationToken,
}

impl Watcher {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        while !self.stop.is_cancelled() {
            let block = self.transport.config().block_timeout;
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(16)
                .arg("BLOCK")
                .arg(block.as_millis().max(1).to_string())
                .arg("STREAMS")
                .arg(&self.key)
                .arg(&self.since);
            let limit = block + self.transport.config().operation_timeout;
            let read = tokio::select! {
                _ = self.stop.cancelled() => break,
                read = self.transport.run_within(
                    "watching for scheduled messages",
                    limit,
                    cmd.query_async::<Value>(&mut self.conn),
                ) => read,
            };
            match read.map(wire::read_reply) {
                Ok(Ok(entries)) => {
                    backoff = Duration::from_millis(100);
                    if let Some(last) = entries.into_iter().last() {
                        self.since = last.id;
                        self.poked.notify_one();
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(stream = %self.key, error = %e, "unexpected reply watching for scheduled messages");
                    self.pause(&mut backoff).await;
                }
                Err(e) => {
                    let error = e.into_transport("watching for scheduled messages", None);
                    tracing::debug!(stream = %self.key, %error, "watching for scheduled messages failed; the taker still looks regularly");
                    self.pause(&mut backoff).await;
                }
            }
        }
    }

    async fn pause(&self, backoff: &mut Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    }
}

/// Takes due messages and hands them out.
struct Taker {
    shared: Arc<Shared>,
    /// One permit per delivery handed out and not settled: bounds what is taken.
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Result<Delivery, TransportError>>,
    poked: Arc<Notify>,
    stop: CancellationToken,
}

impl Taker {
    async fn run(self) {
        let config = self.shared.transport.config().clone();
        let renew_every = self.shared.lease() / 3;
        let mut renew_at = Instant::now() + renew_every;
        let mut backoff = Duration::from_millis(100);
        loop {
            if Instant::now() >= renew_at {
                if let Err(error) = self.renew().await {
                    tracing::warn!(%error, "renewing the leases of scheduled messages being delivered failed; retrying");
                }
                renew_at = Instant::now() + renew_every;
            }
            let first = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = tokio::time::sleep_until(renew_at) => continue,
            };
            let mut slots = vec![first];
            while let Ok(p) = self.slots.clone().try_acquire_owned() {
                slots.push(p);
            }
            let want = slots.len();
            let (wait, taken) = match self.take(want).await {
                Ok(found) => {
                    backoff = Duration::from_millis(100);
                    found
                }
                Err(error) => {
                    tracing::warn!(%error, "taking due scheduled messages failed; retrying");
                    let _ = self.tx.try_send(Err(error));
                    drop(slots);
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let full = taken.len() >= want;
            for (id, message) in taken {
                let Some(slot) = slots.pop() else { break };
                self.hand_out(id, message, slot).await;
            }
            drop(slots);
            if full {
                continue;
            }
            // Until the next one is due (or a lease runs out), unless poked or stopped; at
            // least every block timeout, in case a poke was missed.
            let pause = wait
                .unwrap_or(config.block_timeout)
                .min(config.block_timeout)
                .max(MIN_PAUSE);
            let until = (Instant::now() + pause).min(renew_at);
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = self.poked.notified() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        tracing::debug!("stopped taking due scheduled messages");
    }

    /// Up to `want` due messages, and how long until the next is due (`None`: nothing waits).
    async fn take(
        &self,
        want: usize,
    ) -> Result<(Option<Duration>, Vec<(String, Vec<u8>)>), TransportError> {
        let s = &self.shared;
        let mut call = scripts::CLAIM_DUE.key(&s.scheduled);
        call.key(&s.claimed)
            .key(&s.messages)
            .arg(s.lease().as_millis().to_string())
            .arg(want);
        let mut conn = s.transport.conn();
        let (wait, flat): (i64, Vec<Vec<u8>>) = s
            .transport
            .run(
                "taking due scheduled messages",
                call.invoke_async(&mut conn),
            )
            .await?;
        let mut taken = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(id), Some(message)) = (it.next(), it.next()) {
            taken.push((String::from_utf8_lossy(&id).into_owned(), message));
        }
        if !taken.is_empty() {
            tracing::debug!(taken = taken.len(), "scheduled messages are due");
        }
        let wait = u64::try_from(wait).ok().map(Duration::from_millis);
        Ok((wait, taken))
    }

    /// Extend the leases of the messages still being delivered.
    async fn renew(&self) -> Result<(), TransportError> {
        let s = &self.shared;
        let ids: Vec<String> = s
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut call = scripts::RENEW_CLAIMS.key(&s.claimed);
        call.arg(s.lease().as_millis().to_string());
        for id in &ids {
            call.arg(id);
        }
        let mut conn = s.transport.conn();
        s.transport
            .run(
                "renewing the leases of scheduled messages",
                call.invoke_async::<i64>(&mut conn),
            )
            .await
            .map(drop)
    }

    async fn hand_out(&self, id: String, message: Vec<u8>, slot: OwnedSemaphorePermit) {
        let acker = DueAcker {
            shared: self.shared.clone(),
            id: id.clone(),
            _slot: slot,
        };
        let Some(fields) = wire::stored_fields(&message) else {
            // Not written by this transport: there is no telling where it goes. Taken out of
            // the way, with a line saying which.
            tracing::error!(id, "a scheduled message could not be decoded; dropped");
            let _ = Box::new(acker).ack().await;
            return;
        };
        self.shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        let delivery = Delivery::new(wire::envelope(fields), Box::new(acker), false, 1);
        if self.stop.is_cancelled() {
            // Taken after a stop: given back at once (dropping it unsettled does).
            drop(delivery);
            return;
        }
        // Room is guaranteed by the slots; if the subscription is gone, the delivery comes
        // back in the error and is dropped, which gives it back.
        let _ = self.tx.send(Ok(delivery)).await;
    }
}

/// Settles one due message.
struct DueAcker {
    shared: Arc<Shared>,
    id: String,
    _slot: OwnedSemaphorePermit,
}

#[async_trait]
impl Acker for DueAcker {
    /// Delivered: out of the claimed set and the hash (and out of the scheduled set, should
    /// its lease have run out meanwhile), for good.
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        let s = &self.shared;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZREM")
            .arg(&s.claimed)
            .arg(&self.id)
            .ignore()
            .cmd("ZREM")
            .arg(&s.scheduled)
            .arg(&self.id)
            .ignore()
            .cmd("HDEL")
            .arg(&s.messages)
            .arg(&self.id)
            .ignore();
        let mut conn = s.transport.conn();
        let result = s
            .transport
            .run(
                "acking a scheduled message",
                pipe.query_async::<()>(&mut conn),
            )
            .await;
        s.settled(&self.id);
        result
    }

    /// Due again now, for any bus to take.
    async fn nack(self: Box<Self>, _envelope: Envelope) -> Result<(), TransportError> {
        let s = &self.shared;
        s.settled(&self.id);
        let mut call = scripts::RELEASE_DUE.key(&s.scheduled);
        call.key(&s.claimed).arg(&self.id);
        let mut conn = s.transport.conn();
        s.transport
            .run(
                "giving a scheduled message back",
                call.invoke_async::<i64>(&mut conn),
            )
            .await
            .map(drop)
    }

    fn abandon(self: Box<Self>, envelope: Envelope) {
        // Given back now rather than when its lease runs out.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = self.nack(envelope).await;
                });
            }
            Err(_) => self.shared.settled(&self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_round_up_to_the_millisecond() {
        let at = |nanos: u64| UNIX_EPOCH + Duration::from_nanos(nanos);
        assert_eq!(due_ms(at(1_700_000_000_123_000_000)), 1_700_000_000_123);
        assert_eq!(due_ms(at(1_700_000_000_123_000_001)), 1_700_000_000_124);
        assert_eq!(due_ms(at(1_700_000_000_123_999_999)), 1_700_000_000_124);
        assert_eq!(due_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn the_stored_copy_says_when_and_where() {
        let mut out = Outgoing::new(
            Destination::Event("shop.Expired".into()),
            Envelope::from_bytes(Default::default(), "{}"),
        );
        out.deliver_at = Some(UNIX_EPOCH + Duration::from_millis(5));
        let stored = stored_envelope(&out, 5);
        assert_eq!(stored.headers.get(DELIVER_AT), Some("5"));
        assert_eq!(stored.headers.get(DESTINATION), Some("event:shop.Expired"));
        assert_eq!(out.envelope.headers.get(DESTINATION), None);
    }
}

//! Subscriptions: a reader task per subscription takes entries from the endpoint's stream as
//! one consumer of its group, and hands them out as deliveries; ackers settle them.
//!
//! The reader owns a connection of its own (its `XREADGROUP ... BLOCK` would hold up any other
//! command on a shared one) and reads only as many entries as it has free prefetch slots. It
//! also keeps the endpoint going: it moves due delayed messages into the stream, takes over
//! deliveries that were nacked or that a dead consumer left pending (`XAUTOCLAIM`), renews the
//! idle time of its own deliveries still in progress (so slow handlers are not taken over),
//! and removes consumers that stopped while holding nothing.
//!
//! [`Subscription::next`] only receives from a channel, so dropping it loses nothing. The
//! reader never abandons a read half-way: a stop is seen between reads, and entries read after
//! it are returned at once.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{async_trait, Acker, Delivery, Envelope, Subscription, TransportError};
use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::scripts;
use crate::transport::{CallError, RedisTransport};
use crate::wire::{self, Entry};

/// The pause before an ack or nack that failed on the connection is tried again.
const SETTLE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Delayed messages moved per script call.
const MOVE_BATCH: usize = 100;

/// A nack marks an entry as delivered at the Unix epoch (`XCLAIM ... TIME 1`), so its idle
/// time is decades; anything idle this long (about three years) counts as nacked.
const NACKED_IDLE_MS: u64 = 100_000_000_000;

/// What the reader and the ackers of one subscription share.
struct Shared {
    transport: RedisTransport,
    endpoint: String,
    stream: String,
    group: String,
    consumer: String,
    /// Entry ids handed out and not settled: renewed while in progress.
    in_flight: Mutex<HashSet<String>>,
    /// Set by a nack: look for deliveries to take over at once.
    claim_now: AtomicBool,
}

impl Shared {
    /// Whether every delivery handed out has been settled.
    fn nothing_in_flight(&self) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Run a settling call (ack or nack; both may be repeated without harm) on the shared
    /// connection, again after a short pause when the connection failed, until it succeeds or
    /// the operation timeout is spent. A connection that drops under an ack would otherwise
    /// leave the entry pending until the reclaim time, and then deliver it a second time.
    async fn settle<T, F, Fut>(&self, operation: &'static str, call: F) -> Result<T, TransportError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let limit = self.transport.config().operation_timeout;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .transport
                .run_within(operation, left, call(self.transport.conn()))
                .await
            {
                Ok(v) => return Ok(v),
                Err(CallError::Transport(TransportError::Timeout { .. })) => {
                    return Err(TransportError::timeout(operation, limit))
                }
                Err(CallError::Transport(error @ TransportError::Connection { .. }))
                    if deadline.saturating_duration_since(Instant::now()) > SETTLE_RETRY_PAUSE =>
                {
                    tracing::debug!(endpoint = %self.endpoint, %error, operation, "settling failed on the connection; trying again");
                    tokio::time::sleep(SETTLE_RETRY_PAUSE).await;
                }
                Err(e) => return Err(e.into_transport(operation, Some(&self.endpoint))),
            }
        }
    }

    fn settled(&self, id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// A subscription on an endpoint's stream.
pub(crate) struct RedisSubscription {
    deliveries: mpsc::Receiver<Result<Delivery, TransportError>>,
    /// Stop reading (cancel, or drop).
    stop: CancellationToken,
    /// The subscription is gone (dropped): stop renewing what was handed out, too.
    ended: CancellationToken,
}

impl RedisSubscription {
    pub(crate) async fn start(
        transport: RedisTransport,
        endpoint: &str,
        prefetch: usize,
    ) -> Result<Self, TransportError> {
        let keys = &transport.config().keys;
        let conn = transport.dedicated_connection().await?;
        let shared = Arc::new(Shared {
            stream: keys.stream(endpoint),
            group: keys.group(endpoint),
            consumer: transport.consumer_name(),
            endpoint: endpoint.to_string(),
            in_flight: Mutex::new(HashSet::new()),
            claim_now: AtomicBool::new(false),
            transport: transport.clone(),
        });
        let (tx, deliveries) = mpsc::channel(prefetch + 4);
        let stop = CancellationToken::new();
        let ended = CancellationToken::new();
        let reader = Reader {
            delayed: keys.delayed(endpoint),
            error_stream: keys.error_stream(endpoint),
            shared,
            conn,
            prefetch,
            slots: Arc::new(Semaphore::new(prefetch)),
            tx,
            stop: stop.clone(),
            ended: ended.clone(),
        };
        tracing::debug!(endpoint, consumer = %reader.shared.consumer, prefetch, "subscribed");
        tokio::spawn(reader.run());
        Ok(RedisSubscription {
            deliveries,
            stop,
            ended,
        })
    }
}

impl Drop for RedisSubscription {
    fn drop(&mut self) {
        // Deliveries still in the channel are dropped with it, and so returned for redelivery.
        self.stop.cancel();
        self.ended.cancel();
    }
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        self.deliveries.recv().await
    }

    /// Stops reading, and returns at once what was read but not handed out: `next` hands out
    /// nothing more, while deliveries already handed out can still be settled, and are still
    /// renewed (so no other consumer takes over a handler that outlives the stop) until they
    /// are, or until the subscription is dropped.
    async fn cancel(&mut self) {
        self.stop.cancel();
        self.deliveries.close();
        while let Ok(unhanded) = self.deliveries.try_recv() {
            drop(unhanded);
        }
    }
}

struct Reader {
    shared: Arc<Shared>,
    delayed: String,
    error_stream: String,
    conn: ConnectionManager,
    prefetch: usize,
    /// One permit per delivery handed out and not settled: bounds what is taken to prefetch.
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Result<Delivery, TransportError>>,
    stop: CancellationToken,
    ended: CancellationToken,
}

/// When the reader's periodic chores are next due.
struct Schedule {
    move_due: Instant,
    claim: Instant,
    renew: Instant,
    prune: Instant,
}

impl Reader {
    async fn run(mut self) {
        let now = Instant::now();
        let config = self.shared.transport.config().clone();
        let renew_every = (config.reclaim_idle / 3).max(Duration::from_millis(100));
        let mut at = Schedule {
            move_due: now,
            // Start by taking over whatever is waiting to be taken over.
            claim: now,
            renew: now + renew_every,
            prune: now + config.reclaim_idle,
        };
        // Join the group at once, not with the first entry read, so the group counts this
        // consumer while the stream is empty too (the endpoint list shows it). Best effort:
        // without the group, the first round declares it again and reading joins it.
        let mut join = redis::cmd("XGROUP");
        join.arg("CREATECONSUMER")
            .arg(&self.shared.stream)
            .arg(&self.shared.group)
            .arg(&self.shared.consumer);
        let _ = self
            .shared
            .transport
            .run_within(
                "joining the consumer group",
                config.operation_timeout,
                join.query_async::<i64>(&mut self.conn),
            )
            .await;
        let mut backoff = Duration::from_millis(100);
        while !self.stop.is_cancelled() {
            match self.round(&mut at, renew_every).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(CallError::NoGroup) => {
                    let _ = self.shared.transport.redeclare(&self.shared.endpoint).await;
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(CallError::Transport(error)) => {
                    tracing::warn!(endpoint = %self.shared.endpoint, %error, "reading the stream failed; retrying");
                    // Reported to the consumer if there is room; never blocks the reader.
                    let _ = self.tx.try_send(Err(error));
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        // Reading stopped; deliveries handed out may still be in their handlers (a shutdown
        // waits for them). Keep them renewed until they are settled or the subscription is
        // dropped, so that no other consumer takes one over while its handler still runs.
        while !self.ended.is_cancelled() && !self.shared.nothing_in_flight() {
            tokio::select! {
                _ = self.ended.cancelled() => break,
                _ = tokio::time::sleep(renew_every) => {}
            }
            if let Err(CallError::Transport(error)) = self.renew().await {
                tracing::warn!(endpoint = %self.shared.endpoint, %error, "renewing deliveries in progress after the stop failed; retrying");
            }
        }
        // Leave the group if nothing is pending on this consumer any more.
        let mut conn = self.shared.transport.conn();
        let mut forget = scripts::FORGET_IDLE_CONSUMERS.key(&self.shared.stream);
        forget
            .arg(&self.shared.group)
            .arg(0)
            .arg(&self.shared.consumer);
        let _ = self
            .shared
            .transport
            .run(
                "leaving the consumer group",
                forget.invoke_async::<i64>(&mut conn),
            )
            .await;
        tracing::debug!(endpoint = %self.shared.endpoint, consumer = %self.shared.consumer, "subscription ended");
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    /// One round: chores that are due, then wait for a free slot and take entries.
    async fn round(&mut self, at: &mut Schedule, renew_every: Duration) -> Result<(), CallError> {
        let config = self.shared.transport.config().clone();
        let now = Instant::now();
        if now >= at.move_due {
            let (moved, wait) = self.move_due().await?;
            at.move_due = if moved >= MOVE_BATCH {
                now
            } else {
                now + wait
                    .unwrap_or(config.block_timeout)
                    .min(config.block_timeout)
            };
        }
        if now >= at.renew {
            self.renew().await?;
            at.renew = now + renew_every;
        }
        if now >= at.prune {
            self.prune().await?;
            at.prune = now + config.reclaim_idle.max(Duration::from_secs(10));
        }

        let wake = at.move_due.min(at.renew).min(at.prune);
        let first = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Ok(()),
            permit = self.slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
            _ = tokio::time::sleep_until(wake) => return Ok(()),
        };
        let mut slots = vec![first];
        while slots.len() < self.prefetch {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => slots.push(p),
                Err(_) => break,
            }
        }

        let now = Instant::now();
        let mut taken = Vec::new();
        if self.shared.claim_now.swap(false, Ordering::SeqCst) || now >= at.claim {
            at.claim = now + config.claim_interval;
            taken = self.claim(slots.len()).await?;
        }
        if taken.is_empty() {
            let until = at.move_due.min(at.claim).min(at.renew).min(at.prune);
            let block = until
                .saturating_duration_since(now)
                .min(config.block_timeout)
                .max(Duration::from_millis(1));
            taken = self
                .read_new(slots.len(), block)
                .await?
                .into_iter()
                .map(|e| (e, 1))
                .collect();
        }
        for (entry, count) in taken {
            let Some(slot) = slots.pop() else { break };
            self.hand_out(entry, count, slot).await;
        }
        Ok(())
    }

    /// Move due delayed messages into the stream. Returns how many moved, and how long until
    /// the next one is due (`None`: no delayed messages).
    async fn move_due(&mut self) -> Result<(usize, Option<Duration>), CallError> {
        let mut call = scripts::MOVE_DUE.key(&self.delayed);
        call.key(&self.shared.stream)
            .key(&self.error_stream)
            .arg(MOVE_BATCH);
        let limit = self.shared.transport.config().operation_timeout;
        let (moved, wait): (i64, i64) = self
            .shared
            .transport
            .run_within(
                "moving due delayed messages",
                limit,
                call.invoke_async(&mut self.conn),
            )
            .await?;
        if moved > 0 {
            tracing::debug!(endpoint = %self.shared.endpoint, moved, "delayed messages are due");
        }
        let wait = u64::try_from(wait).ok().map(Duration::from_millis);
        Ok((usize::try_from(moved).unwrap_or(0), wait))
    }

    /// Reset the idle time of this consumer's deliveries still in progress.
    async fn renew(&mut self) -> Result<(), CallError> {
        let ids: Vec<String> = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut call = scripts::RENEW.key(&self.shared.stream);
        call.arg(&self.shared.group)
            .arg(&self.shared.consumer)
            .arg(NACKED_IDLE_MS);
        for id in &ids {
            call.arg(id);
        }
        let limit = self.shared.transport.config().operation_timeout;
        self.shared
            .transport
            .run_within(
                "renewing deliveries in progress",
                limit,
                call.invoke_async::<i64>(&mut self.conn),
            )
            .await
            .map(drop)
    }

    /// Remove consumers of the group idle for long with nothing pending.
    async fn prune(&mut self) -> Result<(), CallError> {
        let config = self.shared.transport.config();
        let mut call = scripts::FORGET_IDLE_CONSUMERS.key(&self.shared.stream);
        call.arg(&self.shared.group)
            .arg(config.reclaim_idle.as_millis().to_string())
            .arg("");
        let removed: i64 = self
            .shared
            .transport
            .run_within(
                "removing stopped consumers",
                config.operation_timeout,
                call.invoke_async(&mut self.conn),
            )
            .await?;
        if removed > 0 {
            tracing::debug!(endpoint = %self.shared.endpoint, removed, "removed stopped consumers");
        }
        Ok(())
    }

    /// Take over up to `want` deliveries idle longer than the reclaim time (those of dead
    /// consumers, and nacked ones, which are marked idle since long ago), with their counts.
    async fn claim(&mut self, want: usize) -> Result<Vec<(Entry, u32)>, CallError> {
        let config = self.shared.transport.config().clone();
        let mut cursor = "0-0".to_string();
        let mut taken: Vec<Entry> = Vec::new();
        // Each call looks at up to 10 x COUNT pending entries; a few calls cover any sane list.
        for _ in 0..10 {
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.shared.stream)
                .arg(&self.shared.group)
                .arg(&self.shared.consumer)
                .arg(config.reclaim_idle.as_millis().to_string())
                .arg(&cursor)
                .arg("COUNT")
                .arg(want - taken.len());
            let reply: Value = self
                .shared
                .transport
                .run_within(
                    "taking over idle deliveries",
                    config.operation_timeout,
                    cmd.query_async(&mut self.conn),
                )
                .await?;
            let taken_before = taken.len();
            let (next, entries) = wire::autoclaim_reply(reply).map_err(|e| {
                CallError::Transport(TransportError::Other {
                    context: format!("XAUTOCLAIM: {e}"),
                    source: None,
                })
            })?;
            // Deliveries of this very subscription that are still in progress (waiting for a
            // handler, or being acked) come back when their renewal failed for longer than the
            // idle time, e.g. while Redis was unreachable: taking them over just renewed them;
            // handing them out again would handle them twice.
            let before = entries.len();
            {
                let mine = self
                    .shared
                    .in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                taken.extend(entries.into_iter().filter(|e| !mine.contains(&e.id)));
            }
            let kept = before - (taken.len() - taken_before);
            if kept > 0 {
                tracing::debug!(endpoint = %self.shared.endpoint, kept, "deliveries in progress here were idle past the reclaim time; kept, not handed out again");
            }
            if taken.len() >= want || next == "0-0" {
                break;
            }
            cursor = next;
        }
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for e in &taken {
            pipe.cmd("XPENDING")
                .arg(&self.shared.stream)
                .arg(&self.shared.group)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1);
        }
        let replies: Vec<Value> = self
            .shared
            .transport
            .run_within(
                "reading delivery counts",
                config.operation_timeout,
                pipe.query_async(&mut self.conn),
            )
            .await?;
        let mut counts = std::collections::HashMap::new();
        for r in replies {
            counts.extend(wire::pending_counts(r));
        }
        tracing::debug!(endpoint = %self.shared.endpoint, taken = taken.len(), "took over deliveries left unsettled (nacked, or of a stopped consumer)");
        Ok(taken
            .into_iter()
            .map(|e| {
                let count = counts.get(&e.id).copied().unwrap_or(2).max(2);
                (e, count)
            })
            .collect())
    }

    /// New entries, waiting up to `block` for some.
    async fn read_new(&mut self, want: usize, block: Duration) -> Result<Vec<Entry>, CallError> {
        let config = self.shared.transport.config();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.shared.group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(want)
            .arg("BLOCK")
            .arg(block.as_millis().max(1).to_string())
            .arg("STREAMS")
            .arg(&self.shared.stream)
            .arg(">");
        let reply: Value = self
            .shared
            .transport
            .run_within(
                "reading the stream",
                block + config.operation_timeout,
                cmd.query_async(&mut self.conn),
            )
            .await?;
        wire::read_reply(reply).map_err(|e| {
            CallError::Transport(TransportError::Other {
                context: format!("XREADGROUP: {e}"),
                source: None,
            })
        })
    }

    async fn hand_out(&mut self, entry: Entry, count: u32, slot: OwnedSemaphorePermit) {
        let Some(fields) = entry.fields else {
            // Deleted while pending: nothing to deliver; settle it so it is not claimed again.
            let acker = RedisAcker {
                shared: self.shared.clone(),
                id: entry.id,
                _slot: slot,
            };
            let _ = Box::new(acker).ack().await;
            return;
        };
        let envelope = wire::envelope(fields);
        self.shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.id.clone());
        let acker = RedisAcker {
            shared: self.shared.clone(),
            id: entry.id,
            _slot: slot,
        };
        let delivery = Delivery::new(envelope, Box::new(acker), count > 1, count);
        if self.stop.is_cancelled() {
            // Read after a stop: returned at once (dropping an unsettled delivery nacks it).
            drop(delivery);
            return;
        }
        // Room is guaranteed by the slots; if the subscription is gone, the delivery comes
        // back in the error and is dropped, which returns it.
        let _ = self.tx.send(Ok(delivery)).await;
    }
}

/// Settles one delivery on the shared connection (the reader's may be blocked in a read).
struct RedisAcker {
    shared: Arc<Shared>,
    id: String,
    _slot: OwnedSemaphorePermit,
}

#[async_trait]
impl Acker for RedisAcker {
    /// `XACK` and `XDEL` together: one group reads the stream, so an acked entry is of no
    /// further use, and the stream holds only what is still to be done.
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        let s = &self.shared;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XACK")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(&self.id)
            .ignore()
            .cmd("XDEL")
            .arg(&s.stream)
            .arg(&self.id)
            .ignore();
        let pipe = &pipe;
        // Still renewed while the ack is retried, so nobody takes the entry over meanwhile.
        let result = s
            .settle("acking", |mut conn| async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await;
        s.settled(&self.id);
        result
    }

    /// The entry stays pending, marked as idle since long ago, so the next look for
    /// deliveries to take over (by any consumer of the group) finds it at once.
    async fn nack(self: Box<Self>, _envelope: Envelope) -> Result<(), TransportError> {
        self.shared.settled(&self.id);
        let s = &self.shared;
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&s.stream)
            .arg(&s.group)
            .arg(&s.consumer)
            .arg(0)
            .arg(&self.id)
            .arg("TIME")
            .arg(1)
            .arg("JUSTID");
        let cmd = &cmd;
        let result = s
            .settle("nacking", |mut conn| async move {
                cmd.query_async::<Value>(&mut conn).await
            })
            .await
            .map(drop);
        s.claim_now.store(true, Ordering::SeqCst);
        result
    }

    fn abandon(self: Box<Self>, envelope: Envelope) {
        // Return it now rather than after the reclaim time, so another consumer can take it.
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

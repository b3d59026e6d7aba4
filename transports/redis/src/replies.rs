//! Reply addresses: one stream per bus instance, `<root>:reply:<instance>`, read by that
//! instance alone.
//!
//! The stream is created when the channel opens, with an expiry (`PEXPIRE`) that its reader
//! renews while the channel is open: a process that crashed leaves a stream that Redis deletes
//! by itself once the expiry passes. The reader deletes it when the channel is cancelled or
//! dropped. A reply is appended with `XADD ... NOMKSTREAM`, so a reply to an address that is
//! gone creates nothing and is dropped.
//!
//! The reader waits with `XREAD BLOCK` from the last id it saw, on a connection of its own (a
//! blocking read holds its connection). Replies are not redelivered to anybody, so settling
//! one costs nothing; the entries read are trimmed away (`XTRIM MINID`) in the same round trip
//! as the next read.

use std::sync::Arc;
use std::time::Duration;

use bus_core::{
    async_trait, Delivery, Envelope, Outgoing, ReplyChannel, SharedAcker, Subscription,
    TransportError,
};
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::transport::RedisTransport;
use crate::{scripts, wire};

/// How long a reply stream outlives the last renewal of its reader: how long the address of a
/// crashed process (and replies sent to it) stays around.
pub(crate) const REPLY_TTL: Duration = Duration::from_secs(60);

/// How often the reader renews the expiry of its stream.
const RENEW_EVERY: Duration = Duration::from_secs(20);

/// Most replies taken per read.
const READ_BATCH: usize = 256;

/// Replies read and not yet taken by the bus.
const CHANNEL: usize = 1_024;

/// Open the reply address of bus instance `instance`: create its stream, with its expiry, and
/// start its reader.
pub(crate) async fn open(
    transport: &RedisTransport,
    instance: &str,
) -> Result<ReplyChannel, TransportError> {
    let key = transport.config().keys.reply(instance);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("XADD")
        .arg(&key)
        .arg("MAXLEN")
        .arg(0)
        .arg("*")
        .arg("bus-reply-address")
        .arg("open")
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(REPLY_TTL.as_millis().to_string())
        .ignore();
    let mut conn = transport.conn();
    // Reading starts after the entry that created the stream (trimmed away at once).
    let (start,): (String,) = transport
        .run("opening the reply address", pipe.query_async(&mut conn))
        .await?;
    let reader_conn = transport.dedicated_connection().await?;
    let (tx, deliveries) = mpsc::channel(CHANNEL);
    let stop = CancellationToken::new();
    let reader = Reader {
        transport: transport.clone(),
        key: key.clone(),
        conn: reader_conn,
        last: start,
        trimmed: true,
        tx,
        stop: stop.clone(),
        acker: Arc::new(ReplyAcker),
    };
    tokio::spawn(reader.run());
    tracing::debug!(stream = %key, "reply address opened");
    Ok(ReplyChannel {
        address: instance.to_string(),
        replies: Box::new(ReplySubscription { deliveries, stop }),
    })
}

/// Append a reply to the stream of its address, if that still exists (`NOMKSTREAM`): a reply
/// to a caller that went away is dropped, and the send is `Ok` either way.
pub(crate) async fn send(
    transport: &RedisTransport,
    address: &str,
    out: &Outgoing,
    fields: &[Vec<u8>],
) -> Result<(), TransportError> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(transport.config().keys.reply(address))
        .arg("NOMKSTREAM")
        .arg("*");
    for f in fields {
        cmd.arg(f.as_slice());
    }
    let mut conn = transport.conn();
    let id: Option<String> = transport
        .run("sending a reply", cmd.query_async(&mut conn))
        .await?;
    if id.is_none() {
        tracing::debug!(destination = %out.destination, message_id = %out.envelope.headers.message_id, "the reply address is gone; reply dropped");
    }
    Ok(())
}

/// The replies of one bus instance. Dropping or cancelling it deletes the stream.
struct ReplySubscription {
    deliveries: mpsc::Receiver<Result<Delivery, TransportError>>,
    stop: CancellationToken,
}

impl Drop for ReplySubscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Subscription for ReplySubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        self.deliveries.recv().await
    }

    fn next_now(&mut self) -> Option<Delivery> {
        if self.stop.is_cancelled() {
            return None;
        }
        match self.deliveries.try_recv() {
            Ok(Ok(delivery)) => Some(delivery),
            _ => None,
        }
    }

    async fn cancel(&mut self) {
        self.stop.cancel();
        self.deliveries.close();
        while self.deliveries.try_recv().is_ok() {}
    }
}

/// Settles replies: nothing to do, a reply goes to this instance only and is never
/// redelivered (the reader trims what it read).
struct ReplyAcker;

#[async_trait]
impl SharedAcker for ReplyAcker {
    async fn ack(self: Arc<Self>, _token: u64) -> Result<(), TransportError> {
        Ok(())
    }

    fn ack_now(&self, _token: u64) -> Option<Result<(), TransportError>> {
        Some(Ok(()))
    }

    async fn nack(self: Arc<Self>, _token: u64, _envelope: Envelope) -> Result<(), TransportError> {
        Ok(())
    }

    fn abandon(&self, _token: u64, _envelope: Envelope) {}
}

struct Reader {
    transport: RedisTransport,
    key: String,
    conn: ConnectionManager,
    /// The id of the last entry read: the next read starts after it.
    last: String,
    /// Whether what was read is trimmed already.
    trimmed: bool,
    tx: mpsc::Sender<Result<Delivery, TransportError>>,
    stop: CancellationToken,
    acker: Arc<ReplyAcker>,
}

impl Reader {
    async fn run(mut self) {
        let mut renew_at = Instant::now() + RENEW_EVERY;
        let mut backoff = Duration::from_millis(100);
        while !self.stop.is_cancelled() {
            if Instant::now() >= renew_at {
                match self.keep().await {
                    Ok(()) => renew_at = Instant::now() + RENEW_EVERY,
                    Err(error) => {
                        tracing::warn!(stream = %self.key, %error, "renewing the reply address failed; retrying");
                        renew_at = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            let block = renew_at
                .saturating_duration_since(Instant::now())
                .min(self.transport.config().block_timeout)
                .max(Duration::from_millis(1));
            let stop = self.stop.clone();
            let read = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                read = self.read(block) => read,
            };
            match read {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    if !self.hand_out(entries).await {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(stream = %self.key, %error, "reading replies failed; retrying");
                    let _ = self.tx.try_send(Err(error));
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        let mut conn = self.transport.conn();
        let deleted = self
            .transport
            .run(
                "deleting the reply address",
                redis::cmd("DEL")
                    .arg(&self.key)
                    .query_async::<i64>(&mut conn),
            )
            .await;
        if let Err(error) = deleted {
            tracing::debug!(stream = %self.key, %error, "deleting the reply address failed; it expires by itself");
        }
        tracing::debug!(stream = %self.key, "reply address closed");
    }

    /// Renew the stream's expiry (or create it again if it is gone).
    async fn keep(&mut self) -> Result<(), TransportError> {
        let mut call = scripts::KEEP_REPLIES.key(&self.key);
        call.arg(REPLY_TTL.as_millis().to_string());
        let mut conn = self.transport.conn();
        let existed: i64 = self
            .transport
            .run("renewing the reply address", call.invoke_async(&mut conn))
            .await?;
        if existed == 0 {
            tracing::warn!(stream = %self.key, "the reply address was gone (Redis lost it, or it expired during an outage); created again");
        }
        Ok(())
    }

    /// Trim what was read before, and wait up to `block` for new replies.
    async fn read(&mut self, block: Duration) -> Result<Vec<wire::Entry>, TransportError> {
        let mut pipe = redis::pipe();
        if !self.trimmed {
            pipe.cmd("XTRIM")
                .arg(&self.key)
                .arg("MINID")
                .arg(&self.last)
                .ignore();
        }
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(block.as_millis().max(1).to_string())
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last);
        let limit = block + self.transport.config().operation_timeout;
        let (reply,): (Value,) = self
            .transport
            .run_within("reading replies", limit, pipe.query_async(&mut self.conn))
            .await
            .map_err(|e| e.into_transport("reading replies", None))?;
        self.trimmed = true;
        wire::read_reply(reply).map_err(|e| TransportError::Other {
            context: format!("XREAD: {e}"),
            source: None,
        })
    }

    /// Hand the replies to the bus; `false` when nobody takes them any more.
    async fn hand_out(&mut self, entries: Vec<wire::Entry>) -> bool {
        for entry in entries {
            self.last = entry.id;
            self.trimmed = false;
            let Some(fields) = entry.fields else { continue };
            let delivery =
                Delivery::shared(wire::envelope(fields), self.acker.clone(), 0, false, 1);
            if self.tx.send(Ok(delivery)).await.is_err() {
                return false;
            }
        }
        true
    }
}

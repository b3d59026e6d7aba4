//! [`Bridge`]: forward chosen commands and events from one transport to another, at least once.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::envelope::Body;
use crate::error::TransportError;
use crate::transport::{
    Delivery, Destination, EndpointTopology, Outgoing, SubscribeOptions, Subscription, Topology,
    Transport,
};

/// Forwards chosen commands and events from one transport (the source) to another (the
/// target), at least once, with every envelope unchanged: message id, type, correlation id,
/// sent time, custom headers and body bytes.
///
/// - Events: the bridge declares an endpoint of its own on the source, `bridge.<name>`,
///   subscribed to the chosen event wire names ([`Bridge::events`]), and publishes each one
///   on the target as that event ([`Destination::Event`]).
/// - Commands: the bridge declares the named endpoints on the source
///   ([`Bridge::commands`]), consumes their queues there, and sends each command to the
///   endpoint of the same name on the target ([`Destination::Endpoint`]). Nothing else may
///   consume those queues on the source: the bridge competes with it.
///
/// A source delivery is acked only once the target confirmed the send (its
/// [`Transport::send`] returned `Ok`); a failed send counts as failed, and the delivery is
/// put back after a short pause ([`Bridge::retry_pause`]) to be forwarded again. A crash, a
/// lost source connection or a failed ack therefore never loses a message, at the cost of a
/// duplicate on the target. What the target does with one:
/// - NATS JetStream drops it by itself: a message is published with its message id as
///   `Nats-Msg-Id`, and a stream ignores an id it saw within its duplicate window.
/// - RabbitMQ and Redis Streams keep it: the receiving endpoint sees the same message id
///   twice, and an idempotent handler or the inbox ([`crate::Inbox`]) absorbs it.
/// - In memory, likewise kept.
///
/// A body that is a typed in-process value ([`Body::Message`], on an in-memory source whose
/// bus did not serialize) cannot cross to another transport: the bridge stops with
/// [`BridgeError::TypedBody`] and leaves the message on the source.
///
/// At most [`Bridge::prefetch`] messages are in flight (taken from the source and not yet
/// settled) at a time, across all the queues the bridge reads. [`Bridge::stats`] counts what
/// was forwarded and what failed, also while it runs.
///
/// ```
/// use std::sync::Arc;
/// use bus_core::{Bridge, Envelope, Headers, Outgoing, Destination, Transport, Topology};
/// use bus_core::{EndpointTopology, SubscribeOptions};
/// use bus_transport_memory::MemoryTransport;
/// use tokio_util::sync::CancellationToken;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let from: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
/// let to: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
/// // The endpoint `billing` on both sides: services send to it on the source, and it is
/// // hosted on the target.
/// let billing = Topology {
///     endpoints: vec![EndpointTopology { name: "billing".into(), ..Default::default() }],
/// };
/// from.declare(&billing).await?;
/// to.declare(&billing).await?;
///
/// let bridge = Bridge::new(from.clone(), to.clone())
///     .name("eu-to-us")
///     .commands(["billing"])
///     .events(["shop.OrderPlaced"]);
/// let stats = bridge.stats();
/// let stop = CancellationToken::new();
/// let running = tokio::spawn(bridge.run(stop.clone()));
///
/// let headers = Headers { message_id: "m-1".into(), message_type: "shop.Bill".into(), ..Headers::default() };
/// let command = Envelope::from_bytes(headers, r#"{"order":1}"#);
/// from.send(Outgoing::new(Destination::Endpoint("billing".into()), command)).await?;
///
/// let mut received = to.subscribe("billing", SubscribeOptions { prefetch: 1 }).await?;
/// let delivery = received.next().await.unwrap()?;
/// assert_eq!(delivery.envelope().headers.message_id, "m-1");
/// delivery.ack().await?;
///
/// stop.cancel();
/// running.await.unwrap()?;
/// assert_eq!(stats.forwarded(), 1);
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// # }).unwrap();
/// ```
pub struct Bridge {
    from: Arc<dyn Transport>,
    to: Arc<dyn Transport>,
    name: String,
    commands: Vec<String>,
    events: Vec<String>,
    prefetch: usize,
    retry_pause: Duration,
    shutdown_grace: Duration,
    stats: BridgeStats,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("from", &self.from.name())
            .field("to", &self.to.name())
            .field("name", &self.name)
            .field("commands", &self.commands)
            .field("events", &self.events)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

/// What a [`Bridge`] has done so far; clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct BridgeStats {
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    forwarded: AtomicU64,
    failed: AtomicU64,
}

impl BridgeStats {
    /// Messages the target confirmed (a message forwarded twice counts twice).
    pub fn forwarded(&self) -> u64 {
        self.inner.forwarded.load(Ordering::Relaxed)
    }

    /// Sends to the target that failed; each such message was put back on the source.
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }
}

impl fmt::Display for BridgeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} forwarded, {} failed sends",
            self.forwarded(),
            self.failed()
        )
    }
}

/// Why a [`Bridge`] stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// Declaring or subscribing on the source failed.
    #[error("bridge `{name}`: {what} on the source failed: {source}")]
    Source {
        /// The bridge's name.
        name: String,
        /// What was being done.
        what: String,
        /// The transport's error.
        #[source]
        source: TransportError,
    },
    /// A message whose body is a typed in-process value, which only an in-process transport
    /// carries; it was left on the source.
    #[error(
        "bridge `{name}`: message `{message_id}` ({message_type}) carries a typed in-process body, \
         which cannot cross to another transport: serialize messages on the source bus"
    )]
    TypedBody {
        /// The bridge's name.
        name: String,
        /// The message's id.
        message_id: String,
        /// The message's wire name.
        message_type: String,
    },
    /// Nothing to forward: neither commands nor events were chosen.
    #[error("bridge `{0}`: nothing to forward (choose commands or events)")]
    Empty(String),
}

impl Bridge {
    /// A bridge from `from` to `to`, named `default`, forwarding nothing yet.
    pub fn new(from: Arc<dyn Transport>, to: Arc<dyn Transport>) -> Self {
        Bridge {
            from,
            to,
            name: "default".into(),
            commands: Vec::new(),
            events: Vec::new(),
            prefetch: 64,
            retry_pause: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
            stats: BridgeStats::default(),
        }
    }

    /// The bridge's name: its endpoint on the source is `bridge.<name>`. Two bridges with the
    /// same name on one source share that endpoint and compete for its events.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Forward the commands sent to these endpoints (consumed from their queues on the source).
    pub fn commands<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.commands.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// Forward the events with these wire names.
    pub fn events<I, S>(mut self, wire_names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.events.extend(wire_names.into_iter().map(Into::into));
        self
    }

    /// Most messages in flight at once (default 64; at least 1).
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How long to wait after a failed send before putting the message back (default
    /// 500 ms): without it an unreachable target would be hammered with redeliveries.
    pub fn retry_pause(mut self, pause: Duration) -> Self {
        self.retry_pause = pause;
        self
    }

    /// How long a stopping bridge waits for the messages in flight to settle (default 10 s);
    /// past it, it returns, and the source redelivers what was not acked.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The endpoint the bridge declares on the source for its events.
    pub fn endpoint(&self) -> String {
        format!("bridge.{}", self.name)
    }

    /// The counts, shared with the running bridge.
    pub fn stats(&self) -> BridgeStats {
        self.stats.clone()
    }

    /// Forward until `stop` is cancelled, then wait for the messages in flight to settle.
    /// Returns the counts, or why it stopped early.
    pub async fn run(self, stop: CancellationToken) -> Result<BridgeStats, BridgeError> {
        if self.commands.is_empty() && self.events.is_empty() {
            return Err(BridgeError::Empty(self.name));
        }
        let own = self.endpoint();
        let mut endpoints: Vec<EndpointTopology> = self
            .commands
            .iter()
            .map(|name| EndpointTopology {
                name: name.clone(),
                ..EndpointTopology::default()
            })
            .collect();
        if !self.events.is_empty() {
            endpoints.push(EndpointTopology {
                name: own.clone(),
                events: self.events.clone(),
                commands: Vec::new(),
            });
        }
        let source_error = |what: String, source| BridgeError::Source {
            name: self.name.clone(),
            what,
            source,
        };
        self.from
            .declare(&Topology {
                endpoints: endpoints.clone(),
            })
            .await
            .map_err(|e| source_error("declaring its queues".into(), e))?;

        let options = SubscribeOptions {
            prefetch: self.prefetch,
        };
        let mut readers = Vec::new();
        for endpoint in &endpoints {
            let sub = self
                .from
                .subscribe(&endpoint.name, options)
                .await
                .map_err(|e| source_error(format!("subscribing to `{}`", endpoint.name), e))?;
            let route = if endpoint.name == own {
                Route::Events
            } else {
                Route::Endpoint(Arc::from(endpoint.name.as_str()))
            };
            readers.push((sub, route));
        }

        let shared = Arc::new(Shared {
            to: self.to.clone(),
            name: self.name.clone(),
            retry_pause: self.retry_pause,
            stats: self.stats.clone(),
            in_flight: Semaphore::new(self.prefetch),
            halt: stop.child_token(),
            fatal: Mutex::new(None),
        });
        let tasks = TaskTracker::new();
        for (sub, route) in readers {
            tasks.spawn(read(sub, route, shared.clone(), tasks.clone()));
        }
        tasks.close();
        let overdue = async {
            shared.halt.cancelled().await;
            tokio::time::sleep(self.shutdown_grace).await;
        };
        tokio::select! {
            () = tasks.wait() => {}
            () = overdue => {
                // A settlement stuck on a dead connection must not hold the caller forever;
                // what it held is redelivered by the source.
                tracing::warn!(bridge = %self.name, unsettled = tasks.len(), "stopping with messages still unsettled");
            }
        }
        let fatal = shared.fatal.lock().expect("bridge error slot").take();
        match fatal {
            Some(error) => Err(error),
            None => Ok(self.stats),
        }
    }

    /// Forward until `stop` completes (e.g. [`crate::stop_signal`]), then wait for the
    /// messages in flight to settle, as [`Bridge::run`] does.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<BridgeStats, BridgeError> {
        let token = CancellationToken::new();
        let running = self.run(token.clone());
        tokio::pin!(running);
        tokio::select! {
            done = &mut running => return done,
            () = stop => token.cancel(),
        }
        running.await
    }
}

/// Where a source queue's messages go on the target.
#[derive(Clone)]
enum Route {
    /// To the event of the message's own type.
    Events,
    /// To this endpoint.
    Endpoint(Arc<str>),
}

struct Shared {
    to: Arc<dyn Transport>,
    name: String,
    retry_pause: Duration,
    stats: BridgeStats,
    in_flight: Semaphore,
    /// Stops every reader: the caller's stop, or a message that can never cross.
    halt: CancellationToken,
    fatal: Mutex<Option<BridgeError>>,
}

/// Reads one source queue, handing each delivery to a task of its own once a slot is free.
async fn read(
    mut sub: Box<dyn Subscription>,
    route: Route,
    shared: Arc<Shared>,
    tasks: TaskTracker,
) {
    loop {
        let permit = tokio::select! {
            _ = shared.halt.cancelled() => break,
            permit = shared.in_flight.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            _ = shared.halt.cancelled() => break,
            next = sub.next() => next,
        };
        match next {
            None => break,
            Some(Err(error)) => {
                drop(permit);
                tracing::warn!(bridge = %shared.name, %error, "receive from the source failed; retrying shortly");
                tokio::select! {
                    _ = shared.halt.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            Some(Ok(delivery)) => {
                permit.forget();
                let shared = shared.clone();
                let route = route.clone();
                tasks.spawn(async move {
                    forward(delivery, &route, &shared).await;
                    shared.in_flight.add_permits(1);
                });
            }
        }
    }
    // Deliveries received but not handed out go back to the queue.
    sub.cancel().await;
}

/// Sends one delivery to the target, then settles it on the source.
async fn forward(delivery: Delivery, route: &Route, shared: &Shared) {
    let envelope = delivery.envelope().clone();
    if let Body::Message(_) = envelope.body {
        let error = BridgeError::TypedBody {
            name: shared.name.clone(),
            message_id: envelope.headers.message_id.to_string(),
            message_type: envelope.headers.message_type.to_string(),
        };
        tracing::error!(bridge = %shared.name, %error, "bridge stops");
        shared
            .fatal
            .lock()
            .expect("bridge error slot")
            .get_or_insert(error);
        shared.halt.cancel();
        // Left unacked, it stays on the source for a bridge whose source bus serializes.
        let _ = delivery.nack().await;
        return;
    }
    let destination = match route {
        Route::Events => Destination::Event(Arc::from(&*envelope.headers.message_type)),
        Route::Endpoint(name) => Destination::Endpoint(name.clone()),
    };
    match shared.to.send(Outgoing::new(destination, envelope)).await {
        Ok(()) => {
            shared.stats.inner.forwarded.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = delivery.ack().await {
                // The target has it; the source redelivers it, and the target gets a duplicate.
                tracing::warn!(bridge = %shared.name, %error, "ack on the source failed after forwarding");
            }
        }
        Err(error) => {
            shared.stats.inner.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bridge = %shared.name, %error, "send to the target failed; putting the message back");
            tokio::time::sleep(shared.retry_pause).await;
            if let Err(error) = delivery.nack().await {
                tracing::warn!(bridge = %shared.name, %error, "nack on the source failed; the source redelivers it");
            }
        }
    }
}

//! The bus facade: a running [`Bus`] sends, publishes and hosts endpoints, reports its health
//! and counters, and shuts down. [`crate::BusBuilder`] builds it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::codec::Codecs;
use crate::error::BusError;
use crate::failed::FailedMessage;
use crate::message::{AnyMessage, Command, Event, Request};
use crate::outgoing::SendOptions;
use crate::pipeline::EndpointRuntime;
use crate::request::RequestOptions;
use crate::runtime::{Runtime, Signal};
use crate::telemetry::{in_span, send_failed, Producing};
use crate::transport::{Declared, Outgoing, QueueKind, SubscribeOptions, Topology, Transport};
use crate::worker;

/// Counters of what a bus instance did, for dashboards and summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Messages handled successfully (and acked).
    pub handled: u64,
    /// Handler attempts that failed (errors, panics, timeouts, failed releases).
    pub failed_attempts: u64,
    /// Messages scheduled for a delayed retry.
    pub delayed_retries: u64,
    /// Messages moved to an error queue.
    pub dead_lettered: u64,
    /// Duplicates acked without handling, thanks to an inbox.
    pub duplicates_skipped: u64,
}

/// Everything a bus and its clones share.
pub(crate) struct BusInner {
    runtime: Arc<Runtime>,
    endpoints: Vec<Arc<EndpointRuntime>>,
    topology: Topology,
    stop: Signal,
    abort: Signal,
    tracker: TaskTracker,
    started: AtomicBool,
    consumers: Arc<AtomicUsize>,
    grace: Duration,
    /// Stops the storages' outbox relays.
    relays: tokio_util::sync::CancellationToken,
}

/// Readiness of a bus: connected, and consuming every hosted endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// Whether [`Bus::start`] was called and [`Bus::shutdown`] was not.
    pub running: bool,
    /// Whether the transport is connected to its broker.
    pub transport_connected: bool,
    /// Endpoints hosted.
    pub endpoints: usize,
    /// Endpoint consumers currently taking messages.
    pub consumers_running: usize,
}

impl Health {
    /// Ready to handle messages: running, connected, every endpoint consuming.
    pub fn is_ready(&self) -> bool {
        self.running && self.transport_connected && self.consumers_running == self.endpoints
    }
}

/// What [`Bus::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every in-flight handler finished within the grace period. If not, the
    /// unfinished deliveries were abandoned and the transport redelivers them.
    pub drained: bool,
    /// How long shutdown took.
    pub elapsed: Duration,
}

/// A running service bus: sends commands, publishes events, hosts endpoints.
///
/// Cheap to clone; clones share one bus.
///
/// ```
/// use bus_core::{Bus, Command, HandlerError};
/// use bus_transport_memory::MemoryTransport;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Command, Serialize, Deserialize, Clone, Debug)]
/// #[command(name = "docs.Greet", endpoint = "docs-greeter")]
/// struct Greet { name: String }
///
/// #[bus_core::handler]
/// async fn greet(cmd: Greet) -> Result<(), HandlerError> {
///     println!("hello, {}", cmd.name);
///     Ok(())
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = Bus::builder()
///     .transport(MemoryTransport::new())
///     .host(["docs-greeter"])
///     .start()
///     .await?;
/// bus.send(Greet { name: "world".into() }).await?;
/// bus.shutdown().await;
/// # Ok::<(), bus_core::BusError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

impl Bus {
    /// A bus, built but not started, from what the builder made.
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        endpoints: Vec<Arc<EndpointRuntime>>,
        topology: Topology,
        grace: Duration,
    ) -> Self {
        Bus {
            inner: Arc::new(BusInner {
                runtime,
                endpoints,
                topology,
                stop: Signal::default(),
                abort: Signal::default(),
                tracker: TaskTracker::new(),
                started: AtomicBool::new(false),
                consumers: Arc::new(AtomicUsize::new(0)),
                grace,
                relays: tokio_util::sync::CancellationToken::new(),
            }),
        }
    }

    /// What the bus's parts share.
    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.inner.runtime
    }

    /// Send a command to the endpoint that owns it. `Ok` means the transport accepted it.
    pub async fn send<C: Command>(&self, command: C) -> Result<(), BusError> {
        self.send_with(command, SendOptions::default()).await
    }

    /// Send a command with options.
    pub async fn send_with<C: Command>(
        &self,
        command: C,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let runtime = &self.inner.runtime;
        let out = runtime.outgoing(command, runtime.route::<C>()?, None, options)?;
        self.dispatch(out).await
    }

    /// Send a request and wait for its answer, at most [`crate::DEFAULT_REQUEST_TIMEOUT`].
    /// The answer comes back on this instance's own reply address, opened on its first
    /// request. A handler that fails for good answers with its failure
    /// ([`BusError::RequestFailed`]) at once; no answer in time is
    /// [`BusError::RequestTimeout`].
    ///
    /// ```
    /// use bus_core::{Bus, Command, HandlerError};
    /// use bus_transport_memory::MemoryTransport;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    /// struct Quote { cents: u64 }
    ///
    /// #[derive(Command, Serialize, Deserialize, Clone, Debug)]
    /// #[command(name = "docs.request.GetQuote", endpoint = "docs-pricing", response = Quote)]
    /// struct GetQuote { sku: String }
    ///
    /// #[bus_core::handler]
    /// async fn quote(query: GetQuote) -> Result<Quote, HandlerError> {
    ///     Ok(Quote { cents: 100 * query.sku.len() as u64 })
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let bus = Bus::builder()
    ///     .transport(MemoryTransport::new())
    ///     .host(["docs-pricing"])
    ///     .start()
    ///     .await?;
    /// let quote: Quote = bus.request(GetQuote { sku: "lamp".into() }).await?;
    /// assert_eq!(quote, Quote { cents: 400 });
    /// bus.shutdown().await;
    /// # Ok::<(), bus_core::BusError>(())
    /// # }).unwrap();
    /// ```
    pub async fn request<R: Request>(&self, request: R) -> Result<R::Response, BusError> {
        self.request_with(request, RequestOptions::default()).await
    }

    /// Send a request with options (a timeout, headers) and wait for its answer.
    pub async fn request_with<R: Request>(
        &self,
        request: R,
        options: RequestOptions,
    ) -> Result<R::Response, BusError> {
        if self.inner.stop.is_fired() {
            return Err(BusError::ShutDown);
        }
        self.inner.runtime.request(request, None, options).await
    }

    /// Cancel a scheduled message ([`SendOptions::deliver_at`]) by its message id before it
    /// is due: `true` when it was waiting and will not be delivered, `false` when nothing
    /// with that id waits (already delivered, cancelled, never scheduled). Transports that
    /// cannot cancel say so ([`crate::TransportError::Unsupported`]).
    pub async fn cancel_scheduled(&self, message_id: &str) -> Result<bool, BusError> {
        Ok(self
            .inner
            .runtime
            .transport
            .cancel_scheduled(&crate::MessageId::from(message_id))
            .await?)
    }

    /// Publish an event to every subscribing endpoint.
    pub async fn publish<E: Event>(&self, event: E) -> Result<(), BusError> {
        self.publish_with(event, SendOptions::default()).await
    }

    /// Publish an event with options.
    pub async fn publish_with<E: Event>(
        &self,
        event: E,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let out =
            self.inner
                .runtime
                .outgoing(event, self.inner.runtime.event(E::NAME), None, options)?;
        self.dispatch(out).await
    }

    /// Send many commands, each to the endpoint that owns it, handing them to the transport a
    /// window at a time so that brokers with confirms confirm a window at once: 10,000 sends
    /// cost about one round trip per [`Bus::SEND_ALL_WINDOW`] messages instead of one each.
    ///
    /// `Ok` means every command was accepted. On an error ([`BusError::Batch`]), the first
    /// `accepted` commands were; the others may or may not have been: send those again (their
    /// handlers may then see some twice, as with any retried send).
    ///
    /// ```
    /// # use bus_core::{Bus, Command};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Command, Serialize, Deserialize, Clone, Debug)]
    /// #[command(name = "docs.batch.Ship", endpoint = "docs-batch")]
    /// struct Ship { id: u32 }
    ///
    /// # async fn demo(bus: &Bus) -> Result<(), bus_core::BusError> {
    /// bus.send_all((0..10_000).map(|id| Ship { id })).await?;
    /// # Ok(()) }
    /// ```
    pub fn send_all<C, I>(
        &self,
        commands: I,
    ) -> impl Future<Output = Result<(), BusError>> + Send + '_
    where
        C: Command,
        I: IntoIterator<Item = C>,
    {
        // Every message is encoded before the first await, so the caller's iterator (often
        // one borrowing a collection) is not held across it.
        let runtime = &self.inner.runtime;
        let batch = runtime.route::<C>().map(|destination| {
            let producing = runtime.telemetry.batch_span(&destination);
            let outgoing: Vec<Result<Outgoing, BusError>> = commands
                .into_iter()
                .map(|command| {
                    let options = SendOptions::default();
                    let mut out = runtime.outgoing(command, destination.clone(), None, options)?;
                    producing.stamp(&mut out);
                    Ok(out)
                })
                .collect();
            (producing, outgoing)
        });
        async move {
            let (producing, outgoing) = batch?;
            self.dispatch_batch(producing, outgoing).await
        }
    }

    /// Publish many events, a window at a time, as [`Bus::send_all`] sends commands.
    pub fn publish_all<E, I>(
        &self,
        events: I,
    ) -> impl Future<Output = Result<(), BusError>> + Send + '_
    where
        E: Event,
        I: IntoIterator<Item = E>,
    {
        let runtime = &self.inner.runtime;
        let destination = runtime.event(E::NAME);
        let producing = runtime.telemetry.batch_span(&destination);
        let outgoing: Vec<Result<Outgoing, BusError>> = events
            .into_iter()
            .map(|event| {
                let mut out =
                    runtime.outgoing(event, destination.clone(), None, SendOptions::default())?;
                producing.stamp(&mut out);
                Ok(out)
            })
            .collect();
        async move { self.dispatch_batch(producing, outgoing).await }
    }

    /// Up to `limit` messages of a hosted (or any) endpoint's error queue, oldest first, left
    /// where they are, with why each failed; through the transport, whichever it is.
    ///
    /// ```
    /// # use bus_core::Bus;
    /// # async fn demo(bus: &Bus) -> Result<(), bus_core::BusError> {
    /// for failed in bus.failed_messages("billing", 100).await? {
    ///     println!("{} failed: {:?}", failed.message_id(), failed.error());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn failed_messages(
        &self,
        endpoint: &str,
        limit: usize,
    ) -> Result<Vec<FailedMessage>, BusError> {
        let envelopes = self
            .inner
            .runtime
            .transport
            .browse(endpoint, QueueKind::Errors, limit)
            .await?;
        Ok(envelopes.into_iter().map(FailedMessage::new).collect())
    }

    /// Remove from the broker what this bus declared for its endpoints (queues, error and delay
    /// queues, subscriptions, and the events' own resources), messages included, and say what
    /// that was; with `dry_run`, only say it. For test runs and environments that come and
    /// go: give them a namespace (the `prefix` setting), since other endpoints subscribed to
    /// the same events lose their subscriptions too. Shut the bus down first.
    pub async fn teardown(&self, dry_run: bool) -> Result<Vec<Declared>, BusError> {
        Ok(self
            .inner
            .runtime
            .transport
            .teardown(&self.inner.topology, dry_run)
            .await?)
    }

    /// Messages [`Bus::send_all`] and [`Bus::publish_all`] hand to the transport at once.
    pub const SEND_ALL_WINDOW: usize = 1_000;

    /// Dispatch a batch under its producer span.
    async fn dispatch_batch(
        &self,
        producing: Producing,
        outgoing: Vec<Result<Outgoing, BusError>>,
    ) -> Result<(), BusError> {
        producing.count(outgoing.len());
        let sending = std::pin::pin!(self.dispatch_all(outgoing.into_iter()));
        let result = in_span(&producing.span, sending).await;
        if let Err(error) = &result {
            send_failed(&producing.span, error);
        }
        result
    }

    async fn dispatch_all(
        &self,
        messages: std::vec::IntoIter<Result<Outgoing, BusError>>,
    ) -> Result<(), BusError> {
        if self.inner.stop.is_fired() && self.inner.abort.is_fired() {
            return Err(BusError::ShutDown);
        }
        let mut accepted = 0;
        let mut window = Vec::with_capacity(Self::SEND_ALL_WINDOW);
        let mut messages = messages.peekable();
        while messages.peek().is_some() {
            window.clear();
            for out in messages.by_ref().take(Self::SEND_ALL_WINDOW) {
                match out {
                    Ok(out) => window.push(out),
                    Err(error) => {
                        // A message that cannot be encoded: send what came before it first,
                        // so that `accepted` stays a prefix.
                        let before = window.len();
                        self.send_window(&mut window, accepted).await?;
                        return Err(BusError::Batch {
                            accepted: accepted + before,
                            error: Box::new(error),
                        });
                    }
                }
            }
            let sent = window.len();
            self.send_window(&mut window, accepted).await?;
            accepted += sent;
        }
        Ok(())
    }

    async fn send_window(
        &self,
        window: &mut Vec<Outgoing>,
        accepted: usize,
    ) -> Result<(), BusError> {
        if window.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(window);
        let count = batch.len();
        // A batch holds messages of one type, to one destination.
        let sent = self.inner.runtime.telemetry.sending(&batch[0]);
        self.inner
            .runtime
            .transport
            .send_batch(batch)
            .await
            .map_err(|error| BusError::Batch {
                accepted,
                error: Box::new(error.into()),
            })?;
        sent.done(count);
        Ok(())
    }

    /// Send or publish a message whose type is known only at run time (e.g. one decoded from
    /// an error queue with [`crate::decode_any`]), according to its kind.
    pub async fn dispatch_any(
        &self,
        message: &dyn AnyMessage,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let out = self.inner.runtime.outgoing_any(message, options)?;
        self.dispatch(out).await
    }

    /// Send one message, unless the bus was shut down.
    async fn dispatch(&self, out: Outgoing) -> Result<(), BusError> {
        if self.inner.stop.is_fired() && self.inner.abort.is_fired() {
            return Err(BusError::ShutDown);
        }
        self.inner.runtime.dispatch(out).await
    }

    /// Start consuming every hosted endpoint. Calling it again does nothing.
    pub async fn start(&self) -> Result<(), BusError> {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        for ep in &self.inner.endpoints {
            let sub = self
                .inner
                .runtime
                .transport
                .subscribe(
                    &ep.name,
                    SubscribeOptions {
                        prefetch: ep.config.prefetch,
                    },
                )
                .await?;
            let tracker = self.inner.tracker.clone();
            tracker.spawn(worker::consume(
                ep.clone(),
                sub,
                self.inner.stop.clone(),
                self.inner.abort.clone(),
                self.inner.tracker.clone(),
                self.inner.consumers.clone(),
            ));
        }
        // Each storage's outbox relay (the bus's, and any endpoint's own), once.
        let mut storages: Vec<Arc<dyn crate::Storage>> = Vec::new();
        let configured = self
            .inner
            .endpoints
            .iter()
            .filter_map(|ep| ep.config.storage.clone());
        for storage in self
            .inner
            .runtime
            .storage
            .clone()
            .into_iter()
            .chain(configured)
        {
            if !storages.iter().any(|s| Arc::ptr_eq(s, &storage)) {
                storages.push(storage);
            }
        }
        for storage in storages {
            let transport = self.inner.runtime.transport.clone();
            let stop = self.inner.relays.clone();
            self.inner
                .tracker
                .spawn(async move { storage.relay(transport, stop).await });
        }
        // A bus that hosts endpoints also delivers the scheduled messages that fall due on the
        // broker; one that only sends leaves them to those.
        if !self.inner.endpoints.is_empty() {
            let transport = &self.inner.runtime.transport;
            if let Some(due) = transport.subscribe_due().await? {
                self.inner.tracker.spawn(crate::schedule::forward_due(
                    transport.clone(),
                    due,
                    self.inner.stop.clone(),
                ));
            }
        }
        tracing::info!(
            transport = self.inner.runtime.transport.name(),
            endpoints = ?self.endpoint_names(),
            "bus started"
        );
        Ok(())
    }

    /// Stop taking new messages, let in-flight handlers finish within the grace period, and
    /// abandon the rest to be redelivered.
    pub async fn shutdown(&self) -> ShutdownReport {
        let started = std::time::Instant::now();
        self.inner.stop.fire();
        self.inner.runtime.replies.close();
        self.inner.relays.cancel();
        self.inner.tracker.close();
        let finished = tokio::time::timeout(self.inner.grace, self.inner.tracker.wait())
            .await
            .is_ok();
        // Handlers abandoned early (a second stop signal) did not drain either.
        let drained = finished && !self.inner.abort.is_fired();
        if !finished {
            tracing::warn!(grace = ?self.inner.grace, "handlers still running after the grace period; abandoning them for redelivery");
            self.inner.abort.fire();
            self.inner.tracker.wait().await;
        }
        self.inner.abort.fire();
        ShutdownReport {
            drained,
            elapsed: started.elapsed(),
        }
    }

    /// Start (if not started yet), run until `signal` completes, then [shut down](Bus::shutdown)
    /// gracefully, as axum's `with_graceful_shutdown` does for a server.
    ///
    /// ```
    /// # use bus_core::Bus;
    /// # use bus_transport_memory::MemoryTransport;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let bus = Bus::builder()
    ///     .transport(MemoryTransport::new())
    ///     .without_discovery()
    ///     .build()
    ///     .await?;
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// # stop.send(()).unwrap();
    /// // In a service: `bus.run_until_stop_signal().await?` (Ctrl-C or SIGTERM).
    /// let report = bus.run_until(async { stopped.await.ok(); }).await?;
    /// assert!(report.drained);
    /// # Ok::<(), bus_core::BusError>(())
    /// # }).unwrap();
    /// ```
    pub async fn run_until<F: Future<Output = ()>>(
        &self,
        signal: F,
    ) -> Result<ShutdownReport, BusError> {
        self.start().await?;
        signal.await;
        Ok(self.shutdown().await)
    }

    /// [`Bus::run_until`] Ctrl-C or SIGTERM ([`crate::stop_signal`]). A second signal during
    /// the grace period abandons the handlers still running at once; their messages are
    /// redelivered.
    pub async fn run_until_stop_signal(&self) -> Result<ShutdownReport, BusError> {
        self.start().await?;
        let first = crate::signal::stop_signal().await;
        tracing::info!(signal = %first, "stopping: finishing the messages in flight");
        let mut shutdown = std::pin::pin!(self.shutdown());
        tokio::select! {
            biased;
            report = &mut shutdown => return Ok(report),
            again = crate::signal::stop_signal() => {
                tracing::warn!(signal = %again, "stopping now: the messages in flight will be redelivered");
                self.inner.abort.fire();
            }
        }
        Ok(shutdown.await)
    }

    /// Readiness: transport connected and every endpoint consuming.
    pub fn health(&self) -> Health {
        Health {
            running: self.inner.started.load(Ordering::SeqCst) && !self.inner.stop.is_fired(),
            transport_connected: self.inner.runtime.transport.is_connected(),
            endpoints: self.inner.endpoints.len(),
            consumers_running: self.inner.consumers.load(Ordering::SeqCst),
        }
    }

    /// Names of the endpoints this bus hosts.
    pub fn endpoint_names(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|e| e.name.to_string())
            .collect()
    }

    /// The topology this bus declared.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The endpoint that owns a command, by wire name.
    pub fn route_of(&self, command: &str) -> Option<&str> {
        self.inner.runtime.routes.get(command).map(|e| &**e)
    }

    /// The codecs this bus knows.
    pub fn codecs(&self) -> &Codecs {
        &self.inner.runtime.codecs
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.runtime.transport
    }

    /// What this bus instance has done so far.
    pub fn stats(&self) -> BusStats {
        let c = &self.inner.runtime.counters;
        BusStats {
            handled: c.handled.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            delayed_retries: c.delayed_retries.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            duplicates_skipped: c.duplicates_skipped.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("transport", &self.inner.runtime.transport.name())
            .field("endpoints", &self.endpoint_names())
            .finish()
    }
}

//! [`TestHarness`]: a bus started for one test, what it saw, and its teardown;
//! [`HarnessBuilder`]: where it runs and what it hosts.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_core::{
    Bus, BusBuilder, Command, Declared, Envelope, Event, Message, QueueKind, ShutdownReport,
    Transport, TransportError,
};
use bus_transport_config::{ConfiguredTransport, TransportSettings};
use bus_transport_memory::MemoryTransport;

use crate::error::HarnessError;
use crate::observe::{Observer, Recording, Shared};
use crate::records::{decode_as, Activity, Attempt, Failed, Seen};
use crate::wait::Wait;

/// How long a wait lasts unless told otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// How long nothing may happen before [`TestHarness::wait_until_quiet`] calls the bus quiet,
/// unless told otherwise.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(50);

/// The most messages [`TestHarness::error_queue`] reads.
const ERROR_QUEUE_LIMIT: usize = 10_000;

/// A bus started for one test, and everything it did: the messages it sent and published,
/// each handler attempt and its outcome, and what it moved to an error queue.
///
/// Start one with [`TestHarness::start`] (the in-memory transport, encoding every message as a
/// broker would) or [`TestHarness::builder`] (another transport, the configured broker under a
/// namespace of its own, state, layers, endpoint settings). Act through [`TestHarness::bus`]
/// (or [`TestHarness::send`] and [`TestHarness::publish`]), wait for what should follow (every
/// wait has a deadline), look at what was seen, then [`TestHarness::stop`].
///
/// ```
/// use bus_core::{Command, Event, HandlerError, MessageContext};
/// use bus_testing::TestHarness;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
/// #[command(name = "doc.harness.PlaceOrder", endpoint = "doc-harness-sales")]
/// struct PlaceOrder { id: u32 }
///
/// #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
/// #[event(name = "doc.harness.OrderPlaced")]
/// struct OrderPlaced { id: u32 }
///
/// #[bus_core::handler]
/// async fn place(cmd: PlaceOrder, ctx: MessageContext) -> Result<(), HandlerError> {
///     ctx.publish(OrderPlaced { id: cmd.id }).await?;
///     Ok(())
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let harness = TestHarness::start(["doc-harness-sales"]).await?;
/// harness.send(PlaceOrder { id: 7 }).await?;
/// assert_eq!(harness.wait_for_published::<OrderPlaced>().await?, OrderPlaced { id: 7 });
/// harness.wait_until_quiet().await?;
/// assert_eq!(harness.sent::<PlaceOrder>(), [PlaceOrder { id: 7 }]);
/// assert_eq!(harness.handled::<PlaceOrder>(), [PlaceOrder { id: 7 }]);
/// harness.stop().await?;
/// # Ok::<(), bus_testing::HarnessError>(())
/// # }).unwrap();
/// ```
pub struct TestHarness {
    bus: Bus,
    shared: Arc<Shared>,
    transport: Arc<dyn Transport>,
    memory: Option<MemoryTransport>,
    configured: Option<ConfiguredTransport>,
    namespace: Option<String>,
    timeout: Duration,
    settle: Duration,
    teardown: bool,
    stopped: AtomicBool,
}

/// What [`TestHarness::stop`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopReport {
    /// How the bus shut down.
    pub shutdown: ShutdownReport,
    /// What was removed from the broker: the queues, streams, exchanges... the bus declared.
    /// Empty when the transport cannot tear down (nothing outlives the in-memory one anyway)
    /// or [`HarnessBuilder::keep_topology`] asked to keep them.
    pub removed: Vec<Declared>,
}

impl TestHarness {
    /// Configure a harness: by default on a new in-memory transport that encodes every message
    /// as a broker would, hosting every endpoint that has a `#[handler]` in the test binary.
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder::new()
    }

    /// A harness on a new in-memory transport (encoding every message as a broker would),
    /// hosting `endpoints` with the handlers `#[handler]` put in them.
    pub async fn start<I, S>(endpoints: I) -> Result<TestHarness, HarnessError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        HarnessBuilder::new().host(endpoints).start().await
    }

    /// The bus, to send and publish as the code under test would, or to read its counters.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Send a command through the bus.
    pub async fn send<C: Command>(&self, command: C) -> Result<(), HarnessError> {
        Ok(self.bus.send(command).await?)
    }

    /// Publish an event through the bus.
    pub async fn publish<E: Event>(&self, event: E) -> Result<(), HarnessError> {
        Ok(self.bus.publish(event).await?)
    }

    /// The transport the bus runs on (as opened or given; the harness's recording wrapper
    /// is not part of it).
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// The in-memory transport, when the harness runs on one it knows as such.
    pub fn memory(&self) -> Option<&MemoryTransport> {
        self.memory.as_ref()
    }

    /// The transport the configuration opened, when the harness was started from settings.
    pub fn configured(&self) -> Option<&ConfiguredTransport> {
        self.configured.as_ref()
    }

    /// The namespace every broker name of this harness lives under, when it was started from
    /// settings: `test-` and a random suffix unless [`HarnessBuilder::namespace`] chose one,
    /// after the configured prefix if there is one.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The waits with `timeout` as their deadline, instead of the harness's default.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use bus_core::{Command, HandlerError};
    /// # use bus_testing::TestHarness;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Command, Serialize, Deserialize, Clone, Debug)]
    /// # #[command(name = "doc.within.Ping", endpoint = "doc-within")]
    /// # struct Ping;
    /// # #[bus_core::handler]
    /// # async fn ping(_: Ping) -> Result<(), HandlerError> { Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let harness = TestHarness::start(["doc-within"]).await?;
    /// // Nothing sends a Ping: the wait gives up after 100 ms, saying what it saw.
    /// let error = harness
    ///     .within(Duration::from_millis(100))
    ///     .wait_for_handled::<Ping>()
    ///     .await
    ///     .unwrap_err();
    /// let timeout = error.as_timeout().expect("a timeout");
    /// assert_eq!(timeout.what, "a handled doc.within.Ping");
    /// assert!(timeout.seen.activity.is_empty());
    /// harness.stop().await?;
    /// # Ok::<(), bus_testing::HarnessError>(())
    /// # }).unwrap();
    /// ```
    pub fn within(&self, timeout: Duration) -> Wait<'_> {
        Wait::new(self, timeout)
    }

    fn wait(&self) -> Wait<'_> {
        Wait::new(self, self.timeout)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn settle_window(&self) -> Duration {
        self.settle
    }

    /// Everything the harness saw, in order.
    pub fn activity(&self) -> Vec<Activity> {
        self.shared.activity()
    }

    /// What the harness saw so far, with the attempts running and the messages not handled
    /// yet: what a timed-out wait reports, and its `Display` the same summary.
    pub fn seen(&self) -> Seen {
        self.shared.seen()
    }

    /// The `T`s among the envelopes `pick` takes from the activity, in order.
    fn typed<T: Message>(&self, pick: impl Fn(&Activity) -> Option<&Envelope>) -> Vec<T> {
        let codecs = self.bus.codecs();
        self.shared.with_activity(|all| {
            all.iter()
                .filter_map(&pick)
                .filter_map(|envelope| decode_as::<T>(codecs, envelope))
                .collect()
        })
    }

    /// The `C`s the bus sent (the test's and its handlers' sends alike), in order.
    pub fn sent<C: Command>(&self) -> Vec<C> {
        self.typed(|a| match a {
            Activity::Sent { envelope, .. } => Some(envelope),
            _ => None,
        })
    }

    /// The `E`s the bus published, in order.
    pub fn published<E: Event>(&self) -> Vec<E> {
        self.typed(|a| match a {
            Activity::Published { envelope } => Some(envelope),
            _ => None,
        })
    }

    /// The `M`s handled (an attempt succeeded), in order: an event handled by two endpoints is
    /// there twice, and a duplicate an endpoint's inbox skipped counts as handled.
    pub fn handled<M: Message>(&self) -> Vec<M> {
        self.typed(|a| match a {
            Activity::Attempted(r) if r.outcome.is_ok() => Some(&r.envelope),
            _ => None,
        })
    }

    /// Every handler attempt at an `M`, with its outcome, in order.
    pub fn attempts<M: Message>(&self) -> Vec<Attempt<M>> {
        let codecs = self.bus.codecs();
        self.shared.with_activity(|all| {
            all.iter()
                .filter_map(|a| match a {
                    Activity::Attempted(r) => Some(Attempt {
                        message: decode_as::<M>(codecs, &r.envelope)?,
                        endpoint: r.endpoint.clone(),
                        attempt: r.attempt,
                        outcome: r.outcome.clone(),
                        headers: r.envelope.headers.clone(),
                    }),
                    _ => None,
                })
                .collect()
        })
    }

    /// The `M`s this bus moved to an error queue, with why, in order.
    pub fn failed<M: Message>(&self) -> Vec<Failed<M>> {
        let codecs = self.bus.codecs();
        self.shared.with_activity(|all| {
            all.iter()
                .filter_map(|a| match a {
                    Activity::Failed { envelope, .. } => Failed::from_envelope(codecs, envelope),
                    _ => None,
                })
                .collect()
        })
    }

    /// Up to `limit` messages waiting in `endpoint`'s error queue, oldest first, left there:
    /// whatever put them there (this bus, another process, an earlier run).
    pub async fn error_queue_envelopes(
        &self,
        endpoint: &str,
        limit: usize,
    ) -> Result<Vec<Envelope>, HarnessError> {
        Ok(self
            .transport
            .browse(endpoint, QueueKind::Errors, limit)
            .await?)
    }

    /// The `M`s waiting in `endpoint`'s error queue, with why they are there, oldest first;
    /// messages of other types, or whose body does not decode, are left out (see
    /// [`TestHarness::error_queue_envelopes`]). Read through the transport
    /// ([`Transport::browse`]), so it also sees what other processes moved there.
    pub async fn error_queue<M: Message>(
        &self,
        endpoint: &str,
    ) -> Result<Vec<Failed<M>>, HarnessError> {
        let envelopes = self
            .error_queue_envelopes(endpoint, ERROR_QUEUE_LIMIT)
            .await?;
        let codecs = self.bus.codecs();
        Ok(envelopes
            .iter()
            .filter_map(|e| Failed::from_envelope(codecs, e))
            .collect())
    }

    /// Wait until `condition` holds (see [`Wait::wait_until`]), with the default deadline.
    pub async fn wait_until(
        &self,
        what: &str,
        condition: impl FnMut(&TestHarness) -> bool,
    ) -> Result<(), HarnessError> {
        self.wait().wait_until(what, condition).await
    }

    /// Wait for a `C` to be sent, with the default deadline; the first one sent.
    pub async fn wait_for_sent<C: Command>(&self) -> Result<C, HarnessError> {
        self.wait().wait_for_sent().await
    }

    /// Wait for a `C` matching `predicate` to be sent, with the default deadline.
    pub async fn wait_for_sent_where<C: Command>(
        &self,
        predicate: impl FnMut(&C) -> bool,
    ) -> Result<C, HarnessError> {
        self.wait().wait_for_sent_where(predicate).await
    }

    /// Wait for an `E` to be published, with the default deadline; the first one published.
    pub async fn wait_for_published<E: Event>(&self) -> Result<E, HarnessError> {
        self.wait().wait_for_published().await
    }

    /// Wait for an `E` matching `predicate` to be published, with the default deadline.
    pub async fn wait_for_published_where<E: Event>(
        &self,
        predicate: impl FnMut(&E) -> bool,
    ) -> Result<E, HarnessError> {
        self.wait().wait_for_published_where(predicate).await
    }

    /// Wait for an `M` to be handled, with the default deadline; the first one handled.
    pub async fn wait_for_handled<M: Message>(&self) -> Result<M, HarnessError> {
        self.wait().wait_for_handled().await
    }

    /// Wait for an `M` matching `predicate` to be handled, with the default deadline.
    pub async fn wait_for_handled_where<M: Message>(
        &self,
        predicate: impl FnMut(&M) -> bool,
    ) -> Result<M, HarnessError> {
        self.wait().wait_for_handled_where(predicate).await
    }

    /// Wait for an `M` to be moved to an error queue, with the default deadline.
    pub async fn wait_for_failed<M: Message>(&self) -> Result<Failed<M>, HarnessError> {
        self.wait().wait_for_failed().await
    }

    /// Wait for an `M` matching `predicate` to be moved to an error queue, with the default
    /// deadline.
    pub async fn wait_for_failed_where<M: Message>(
        &self,
        predicate: impl FnMut(&Failed<M>) -> bool,
    ) -> Result<Failed<M>, HarnessError> {
        self.wait().wait_for_failed_where(predicate).await
    }

    /// Wait until the bus is quiet (see [`Wait::wait_until_quiet`]), with the default deadline.
    pub async fn wait_until_quiet(&self) -> Result<(), HarnessError> {
        self.wait().wait_until_quiet().await
    }

    /// Shut the bus down (handlers running finish within its grace period), remove what it
    /// declared on the broker ([`Transport::teardown`], unless
    /// [`HarnessBuilder::keep_topology`]), and close the connection the harness opened. What
    /// was seen stays readable afterwards. Stopping again does no harm.
    pub async fn stop(&self) -> Result<StopReport, HarnessError> {
        self.stopped.store(true, Ordering::SeqCst);
        let shutdown = self.bus.shutdown().await;
        let removed = if self.teardown {
            match self.transport.teardown(self.bus.topology(), false).await {
                Ok(removed) => Ok(removed),
                // Nothing to remove where the transport cannot (an in-memory one ends with
                // the test anyway).
                Err(TransportError::Unsupported { .. }) => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        } else {
            Ok(Vec::new())
        };
        // RabbitMQ's events exchange is the namespace's, kept by a teardown of endpoints; it
        // goes once nothing is bound to it (the broker checks), so a harness under a
        // namespace of its own leaves nothing behind.
        let removed = match (removed, &self.configured) {
            (Ok(mut removed), Some(ConfiguredTransport::Amqp(amqp))) if self.teardown => {
                match amqp.delete_events_exchange(false).await {
                    Ok(exchange) => {
                        removed.extend(exchange);
                        Ok(removed)
                    }
                    Err(e) => Err(e),
                }
            }
            (removed, _) => removed,
        };
        let closed = match &self.configured {
            Some(configured) => configured.close().await,
            None => Ok(()),
        };
        let removed = removed?;
        closed?;
        Ok(StopReport { shutdown, removed })
    }
}

impl Drop for TestHarness {
    fn drop(&mut self) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        // A test that failed before `stop` still should not leave the bus taking messages
        // while the runtime lives on; a broker keeps what was declared, so say where.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let bus = self.bus.clone();
            runtime.spawn(async move {
                bus.shutdown().await;
            });
        }
        if let Some(namespace) = &self.namespace {
            if self.transport.name() != "memory" {
                eprintln!(
                    "bus-testing: a harness was dropped without `stop()`; what it declared under `{namespace}` on the {} broker stays there",
                    self.transport.name()
                );
            }
        }
    }
}

impl std::fmt::Debug for TestHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHarness")
            .field("bus", &self.bus)
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("settle", &self.settle)
            .finish()
    }
}

/// Where the harness's transport comes from.
enum Source {
    Memory(MemoryTransport),
    Given(Arc<dyn Transport>),
    /// `None`: [`TransportSettings::load`] when the harness starts. Boxed: the settings are
    /// large and the other sources small.
    Settings(Option<Box<TransportSettings>>),
}

/// Configures a [`TestHarness`]: the transport, the endpoints, the bus's settings, the
/// deadlines.
///
/// ```
/// use std::time::Duration;
/// use bus_core::{Command, HandlerError, State};
/// use bus_testing::TestHarness;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Command, Serialize, Deserialize, Clone, Debug)]
/// #[command(name = "doc.builder.Count", endpoint = "doc-builder")]
/// struct Count;
///
/// #[derive(Clone, Default)]
/// struct Counter(std::sync::Arc<std::sync::atomic::AtomicU32>);
///
/// #[bus_core::handler]
/// async fn count(_: Count, State(counter): State<Counter>) -> Result<(), HandlerError> {
///     counter.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     Ok(())
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let counter = Counter::default();
/// let harness = TestHarness::builder()
///     .host(["doc-builder"])
///     .configure({
///         let counter = counter.clone();
///         move |bus| bus.state(counter).endpoint("doc-builder", |e| e.concurrency(1))
///     })
///     .wait_timeout(Duration::from_secs(5))
///     .start()
///     .await?;
/// harness.send(Count).await?;
/// harness.send(Count).await?;
/// harness.wait_until("two counts", |h| h.handled::<Count>().len() == 2).await?;
/// assert_eq!(counter.0.load(std::sync::atomic::Ordering::Relaxed), 2);
/// harness.stop().await?;
/// # Ok::<(), bus_testing::HarnessError>(())
/// # }).unwrap();
/// ```
pub struct HarnessBuilder {
    source: Source,
    bus: BusBuilder,
    shared: Arc<Shared>,
    namespace: Option<String>,
    timeout: Duration,
    settle: Duration,
    teardown: bool,
}

impl HarnessBuilder {
    fn new() -> Self {
        let shared = Shared::new();
        HarnessBuilder {
            source: Source::Memory(MemoryTransport::new().serialize(true)),
            // The harness's layer comes first, so it sees what the test's layers refuse.
            bus: Bus::builder().layer(Observer(shared.clone())),
            shared,
            namespace: None,
            timeout: DEFAULT_WAIT,
            settle: DEFAULT_SETTLE,
            teardown: true,
        }
    }

    /// Host only these endpoints ([`BusBuilder::host`]); by default every endpoint that has a
    /// `#[handler]` in the test binary.
    pub fn host<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.bus = self.bus.host(endpoints);
        self
    }

    /// Configure the bus: state, handlers added by hand, layers, endpoint settings, routes,
    /// codecs. Its transport is the harness's, whatever this sets.
    pub fn configure(mut self, configure: impl FnOnce(BusBuilder) -> BusBuilder) -> Self {
        self.bus = configure(self.bus);
        self
    }

    /// Start from this bus builder (the application's own, say) instead of a new one; what was
    /// configured before on this harness builder is dropped, the harness's recording layer
    /// excepted. Its transport is replaced by the harness's. Layers it already has run outside
    /// the harness's: an attempt one of them refuses is not recorded as an attempt (the message
    /// is still recorded when it reaches the error queue).
    pub fn bus_builder(mut self, builder: BusBuilder) -> Self {
        self.bus = builder.layer(Observer(self.shared.clone()));
        self
    }

    /// Run on this in-memory transport (typed or encoding, shared with other buses...).
    pub fn memory(mut self, transport: MemoryTransport) -> Self {
        self.source = Source::Memory(transport);
        self
    }

    /// Run on this transport.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.source = match (&transport as &dyn Any).downcast_ref::<MemoryTransport>() {
            Some(memory) => Source::Memory(memory.clone()),
            None => Source::Given(Arc::new(transport)),
        };
        self
    }

    /// Run on this transport, already shared.
    pub fn transport_arc(mut self, transport: Arc<dyn Transport>) -> Self {
        self.source = Source::Given(transport);
        self
    }

    /// Run on the transport these settings name, under a namespace of the harness's own (see
    /// [`HarnessBuilder::namespace`]): on a broker, every queue, stream, exchange and subject
    /// of this harness is then apart from those of other tests and runs. In memory, messages
    /// are encoded as a broker would unless the settings say otherwise.
    pub fn settings(mut self, settings: TransportSettings) -> Self {
        self.source = Source::Settings(Some(Box::new(settings)));
        self
    }

    /// Run on the configured transport ([`TransportSettings::load`]: `bus.toml`, then the
    /// `BUS_*` variables; in-memory when nothing is configured), as
    /// [`HarnessBuilder::settings`] does. The settings are read when the harness starts.
    pub fn from_config(mut self) -> Self {
        self.source = Source::Settings(None);
        self
    }

    /// The namespace of a harness started from settings, instead of `test-` and a random
    /// suffix. It goes after the configured prefix, if any. Letters, digits, `-` and `_`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The deadline of the harness's waits (default [`DEFAULT_WAIT`]).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long nothing may happen before the bus counts as quiet (default
    /// [`DEFAULT_SETTLE`]), on top of nothing running and nothing left to handle.
    pub fn settle(mut self, window: Duration) -> Self {
        self.settle = window;
        self
    }

    /// Leave what the bus declared on the broker when the harness stops (by default it is
    /// removed).
    pub fn keep_topology(mut self) -> Self {
        self.teardown = false;
        self
    }

    /// Open the transport, build and start the bus.
    pub async fn start(self) -> Result<TestHarness, HarnessError> {
        let (transport, memory, configured, namespace) = match self.source {
            Source::Memory(memory) => {
                let shared: Arc<dyn Transport> = Arc::new(memory.clone());
                (shared, Some(memory), None, None)
            }
            Source::Given(transport) => (transport, None, None, None),
            Source::Settings(settings) => {
                let mut settings = match settings {
                    Some(settings) => *settings,
                    None => TransportSettings::load()?,
                };
                let own = self.namespace.unwrap_or_else(new_namespace);
                let namespace = match settings.prefix.take() {
                    Some(prefix) => format!("{prefix}-{own}"),
                    None => own,
                };
                settings.prefix = Some(namespace.clone());
                if settings.is_memory() && settings.memory_serialize.is_none() {
                    settings.memory_serialize = Some(true);
                }
                let opened = settings.open(&format!("bus-testing-{namespace}")).await?;
                (
                    opened.shared(),
                    opened.as_memory().cloned(),
                    Some(opened),
                    Some(namespace),
                )
            }
        };
        let recording = Arc::new(Recording {
            inner: transport.clone(),
            shared: self.shared.clone(),
        });
        let started = async {
            let bus = self.bus.transport_arc(recording).build().await?;
            self.shared.set_topology(bus.topology());
            bus.start().await?;
            Ok::<_, HarnessError>(bus)
        }
        .await;
        let bus = match started {
            Ok(bus) => bus,
            Err(e) => {
                if let Some(configured) = &configured {
                    let _ = configured.close().await;
                }
                return Err(e);
            }
        };
        Ok(TestHarness {
            bus,
            shared: self.shared,
            transport,
            memory,
            configured,
            namespace,
            timeout: self.timeout,
            settle: self.settle,
            teardown: self.teardown,
            stopped: AtomicBool::new(false),
        })
    }
}

impl std::fmt::Debug for HarnessBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Memory(_) => "memory",
            Source::Given(t) => t.name(),
            Source::Settings(_) => "settings",
        };
        f.debug_struct("HarnessBuilder")
            .field("transport", &source)
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("settle", &self.settle)
            .field("teardown", &self.teardown)
            .finish()
    }
}

/// `test-` and 12 random hexadecimal digits: unique enough that tests running at once on one
/// broker never meet.
fn new_namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("test-{}", &id[..12])
}

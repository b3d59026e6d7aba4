//! The bus: built once from handlers, endpoints and a transport; sends, publishes and hosts.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::task::TaskTracker;

use crate::codec::{Codec, Codecs};
use crate::endpoint::EndpointConfig;
use crate::envelope::{header, Body, Envelope, Headers, MessageId};
use crate::error::{BusError, CodecError};
use crate::extract::StateMap;
use crate::handler::{
    Handler, HandlerDescriptor, HandlerRegistration, MessageInfo, MessageRegistration,
};
use crate::message::{AnyMessage, Command, Event, Message, MessageKind};
use crate::receive::{self, EndpointRuntime, Signal};
use crate::transport::{
    Destination, EndpointTopology, Outgoing, SubscribeOptions, Topology, Transport,
};

/// Per-message options for [`Bus::send_with`], [`Bus::publish_with`] and their context twins.
///
/// ```
/// use bus_core::SendOptions;
/// let options = SendOptions::new().correlation_id("order-42").header("tenant", "acme");
/// # drop(options);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    message_id: Option<String>,
    correlation_id: Option<String>,
    headers: BTreeMap<String, String>,
}

impl SendOptions {
    /// No options.
    pub fn new() -> Self {
        SendOptions::default()
    }

    /// Use this message id instead of a new UUIDv7 (e.g. to make a retried send idempotent).
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Set the correlation id (otherwise inherited from the handled message, or the message id).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Add a custom header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

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

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) handled: AtomicU64,
    pub(crate) failed_attempts: AtomicU64,
    pub(crate) delayed_retries: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) duplicates_skipped: AtomicU64,
}

/// A map keyed by a message or endpoint name, looked up on every send and every delivery.
pub(crate) type NameMap<V> = fnv::FnvHashMap<String, V>;

/// What every part of a running bus shares.
pub(crate) struct Shared {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) routes: NameMap<String>,
    pub(crate) codecs: Codecs,
    pub(crate) typed: bool,
    pub(crate) state: StateMap,
    pub(crate) max_body_size: usize,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn route<C: Command>(&self) -> Result<Destination, BusError> {
        self.routes
            .get(C::NAME)
            .map(|e| Destination::Endpoint(e.clone()))
            .ok_or_else(|| BusError::NoRoute(C::NAME.to_string()))
    }

    pub(crate) fn body_of<M: Message>(
        &self,
        message: M,
    ) -> Result<(Body, Cow<'static, str>), BusError> {
        if self.typed {
            return Ok((
                Body::Message(Arc::new(message)),
                self.codecs.default_content_type(),
            ));
        }
        let default = self.codecs.default_codec();
        let codec: &dyn Codec = default.as_ref();
        let bytes = if self.codecs.is_builtin_json(default) {
            crate::codec::encode_json(&message)?
        } else {
            codec.encode(&message)?
        };
        self.check_size(bytes.len())?;
        Ok((Body::Bytes(bytes), self.codecs.default_content_type()))
    }

    fn check_size(&self, size: usize) -> Result<(), CodecError> {
        if size > self.max_body_size {
            return Err(CodecError::TooLarge {
                size,
                limit: self.max_body_size,
            });
        }
        Ok(())
    }

    /// Wrap a message in an envelope, inheriting ids from the message being handled.
    pub(crate) fn outgoing<M: Message>(
        &self,
        message: M,
        destination: Destination,
        parent: Option<&Headers>,
        options: SendOptions,
    ) -> Result<Outgoing, BusError> {
        let (body, content_type) = self.body_of(message)?;
        let headers = new_headers(M::NAME, content_type, parent, options);
        Ok(Outgoing {
            destination,
            envelope: Envelope {
                headers: Arc::new(headers),
                body,
            },
            delay: None,
        })
    }
}

fn new_headers(
    message_type: &'static str,
    content_type: Cow<'static, str>,
    parent: Option<&Headers>,
    options: SendOptions,
) -> Headers {
    let sent_at = SystemTime::now();
    let message_id = options
        .message_id
        .map_or_else(|| new_message_id(sent_at), MessageId::from);
    let mut custom = options.headers;
    // A root message starts its conversation and carries neither a correlation id (unless
    // given one) nor the conversation header: its message id is both (see
    // `Headers::correlation_id()` and `Headers::conversation_id()`). Nothing to build, encode or
    // parse for the most common message there is; what it causes carries both explicitly.
    let correlation_id = options
        .correlation_id
        .or_else(|| parent.and_then(|p| p.correlation_id()).map(str::to_string));
    if let Some(parent) = parent {
        if let Some(conversation) = parent.conversation_id() {
            custom.insert(
                header::CONVERSATION_ID.to_string(),
                conversation.to_string(),
            );
        }
        custom.insert(
            header::CAUSATION_ID.to_string(),
            parent.message_id.to_string(),
        );
    }
    Headers {
        message_id,
        message_type: Cow::Borrowed(message_type),
        content_type,
        correlation_id,
        sent_at: Some(sent_at),
        custom,
    }
}

/// A new message id: a UUIDv7 as text (48 bits of Unix milliseconds, 74 random bits).
///
/// Built with `uuid::Builder` from a thread-local random generator (`fastrand`), because
/// `Uuid::now_v7` takes a global lock and asks the OS for random bytes on every call, which
/// was the largest single cost of a send. Ids are ordered by time to the millisecond; within
/// one millisecond their order is random.
fn new_message_id(now: SystemTime) -> MessageId {
    let millis = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    MessageId::from(&*id.hyphenated().encode_lower(&mut buf))
}

/// Configures and builds a [`Bus`].
///
/// Handlers annotated with `#[handler]` anywhere in the binary are discovered automatically;
/// [`BusBuilder::handler`] adds more by hand. Each handler belongs to an endpoint (a logical
/// service): the one named in its attribute, else the owning endpoint its command declares,
/// else the builder's default endpoint.
pub struct BusBuilder {
    transport: Option<Arc<dyn Transport>>,
    discover: bool,
    handlers: Vec<HandlerDescriptor>,
    default_endpoint: String,
    hosted: Option<HashSet<String>>,
    endpoint_defaults: EndpointConfig,
    endpoint_configs: HashMap<String, Box<dyn FnOnce(EndpointConfig) -> EndpointConfig + Send>>,
    routes: HashMap<String, String>,
    state: StateMap,
    codecs: Codecs,
    max_body_size: usize,
    shutdown_grace: Duration,
}

impl Default for BusBuilder {
    fn default() -> Self {
        BusBuilder {
            transport: None,
            discover: true,
            handlers: Vec::new(),
            default_endpoint: "main".to_string(),
            hosted: None,
            endpoint_defaults: EndpointConfig::default(),
            endpoint_configs: HashMap::new(),
            routes: HashMap::new(),
            state: StateMap::default(),
            codecs: Codecs::default(),
            max_body_size: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl BusBuilder {
    /// The transport to run on.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// The transport to run on, already shared.
    pub fn transport_arc(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The endpoint of handlers that name none and handle no command with a declared owner.
    /// Defaults to `main`.
    pub fn default_endpoint(mut self, name: impl Into<String>) -> Self {
        self.default_endpoint = name.into();
        self
    }

    /// Host only these endpoints in this process (by default, every endpoint that has a
    /// handler). Use it to run one service of a binary that links several.
    pub fn host<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosted = Some(endpoints.into_iter().map(Into::into).collect());
        self
    }

    /// Do not pick up `#[handler]` functions automatically; only explicit ones are hosted.
    pub fn without_discovery(mut self) -> Self {
        self.discover = false;
        self
    }

    /// Register a handler function in an endpoint by hand.
    pub fn handler<M, Args>(
        mut self,
        endpoint: impl Into<Cow<'static, str>>,
        handler: impl Handler<M, Args>,
    ) -> Self {
        self.handlers
            .push(handler.into_descriptor().in_endpoint(endpoint));
        self
    }

    /// Register a handler descriptor (what `#[handler]` produces) by hand.
    pub fn handler_descriptor(mut self, descriptor: HandlerDescriptor) -> Self {
        self.handlers.push(descriptor);
        self
    }

    /// Settings every endpoint starts from.
    pub fn endpoint_defaults(mut self, config: EndpointConfig) -> Self {
        self.endpoint_defaults = config;
        self
    }

    /// Adjust one endpoint's settings.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = bus_core::Bus::builder()
    ///     .endpoint("billing", |e| e.concurrency(4).delayed_retries(3, Duration::from_secs(2)));
    /// # drop(builder);
    /// ```
    pub fn endpoint(
        mut self,
        name: impl Into<String>,
        configure: impl FnOnce(EndpointConfig) -> EndpointConfig + Send + 'static,
    ) -> Self {
        self.endpoint_configs
            .insert(name.into(), Box::new(configure));
        self
    }

    /// Send command `C` to `endpoint`, overriding the owner the command declares.
    pub fn route<C: Command>(mut self, endpoint: impl Into<String>) -> Self {
        self.routes.insert(C::NAME.to_string(), endpoint.into());
        self
    }

    /// Shared state for the [`crate::State`] extractor.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Add a codec; with `default`, outgoing messages are encoded with it.
    pub fn codec(mut self, codec: impl Codec, default: bool) -> Self {
        self.codecs.register(Arc::new(codec), default);
        self
    }

    /// Largest body accepted on send and on receive (default 4 MiB).
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// How long [`Bus::shutdown`] waits for in-flight handlers (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Check the configuration, declare the topology on the transport, and return the bus
    /// (not consuming yet: call [`Bus::start`]).
    pub async fn build(self) -> Result<Bus, BusError> {
        let transport = self.transport.clone().ok_or(BusError::NoTransport)?;
        let messages = registered_messages()?;

        let mut descriptors: Vec<HandlerDescriptor> = Vec::new();
        if self.discover {
            descriptors.extend(inventory::iter::<HandlerRegistration>().map(|r| (r.factory)()));
        }
        descriptors.extend(self.handlers.iter().cloned());

        // Routes: declared owners, then explicit routes, then where the handler lives.
        let mut routes: HashMap<String, String> = HashMap::new();
        for info in messages.values() {
            if let (MessageKind::Command, Some(owner)) = (info.kind, info.endpoint) {
                routes.insert(info.name.to_string(), owner.to_string());
            }
        }
        routes.extend(self.routes.clone());

        // Place each handler in its endpoint.
        for d in &mut descriptors {
            if d.endpoint.is_none() {
                let owner = match d.message.kind {
                    MessageKind::Command => routes.get(d.message.name).cloned(),
                    MessageKind::Event => None,
                };
                d.endpoint = Some(Cow::Owned(
                    owner.unwrap_or_else(|| self.default_endpoint.clone()),
                ));
            }
        }
        let endpoint_of =
            |d: &HandlerDescriptor| d.endpoint.as_deref().unwrap_or_default().to_string();
        if let Some(hosted) = &self.hosted {
            descriptors.retain(|d| hosted.contains(&endpoint_of(d)));
        }

        check_commands(&descriptors, &messages, &mut routes, self.hosted.as_ref())?;
        for d in &descriptors {
            for req in &d.requires {
                if !self.state.contains(req.type_id) {
                    return Err(BusError::MissingState {
                        handler: d.name.to_string(),
                        state: req.type_name.to_string(),
                    });
                }
            }
        }

        // Group by endpoint, in a stable order.
        let mut by_endpoint: BTreeMap<String, Vec<HandlerDescriptor>> = BTreeMap::new();
        for d in descriptors {
            by_endpoint.entry(endpoint_of(&d)).or_default().push(d);
        }
        if let Some(hosted) = &self.hosted {
            for name in hosted {
                by_endpoint.entry(name.clone()).or_default();
            }
        }

        let shared = Arc::new(Shared {
            typed: transport.carries_typed_messages(),
            transport: transport.clone(),
            routes: routes.into_iter().collect(),
            codecs: self.codecs.clone(),
            state: self.state.clone(),
            max_body_size: self.max_body_size,
            counters: Counters::default(),
        });

        let mut configs = self.endpoint_configs;
        let mut topology = Topology::default();
        let mut endpoints = Vec::new();
        for (name, handlers) in by_endpoint {
            let config = match configs.remove(&name) {
                Some(configure) => configure(self.endpoint_defaults.clone()),
                None => self.endpoint_defaults.clone(),
            };
            let mut ep_topology = EndpointTopology {
                name: name.clone(),
                ..EndpointTopology::default()
            };
            let mut table: NameMap<Vec<HandlerDescriptor>> = NameMap::default();
            for h in handlers {
                let list = match h.message.kind {
                    MessageKind::Command => &mut ep_topology.commands,
                    MessageKind::Event => &mut ep_topology.events,
                };
                if !list.iter().any(|m| m == h.message.name) {
                    list.push(h.message.name.to_string());
                }
                table.entry(h.message.name.to_string()).or_default().push(h);
            }
            topology.endpoints.push(ep_topology);
            endpoints.push(Arc::new(EndpointRuntime {
                name: Arc::from(name.as_str()),
                config,
                handlers: table,
                shared: shared.clone(),
                in_flight: std::sync::Mutex::new(HashSet::new()),
            }));
        }

        transport.declare(&topology).await?;
        tracing::debug!(
            transport = transport.name(),
            endpoints = endpoints.len(),
            "bus built"
        );

        Ok(Bus {
            inner: Arc::new(BusInner {
                shared,
                endpoints,
                topology,
                stop: Signal::default(),
                abort: Signal::default(),
                tracker: TaskTracker::new(),
                started: AtomicBool::new(false),
                consumers: Arc::new(AtomicUsize::new(0)),
                grace: self.shutdown_grace,
            }),
        })
    }

    /// [`BusBuilder::build`], then [`Bus::start`].
    pub async fn start(self) -> Result<Bus, BusError> {
        let bus = self.build().await?;
        bus.start().await?;
        Ok(bus)
    }
}

/// Every message type derived in the binary, by wire name; two types with one name is an error.
fn registered_messages() -> Result<HashMap<&'static str, MessageInfo>, BusError> {
    let mut out: HashMap<&'static str, MessageInfo> = HashMap::new();
    for reg in inventory::iter::<MessageRegistration>() {
        let info = reg.info;
        if let Some(prev) = out.get(info.name) {
            if (prev.type_id)() != (info.type_id)() {
                return Err(BusError::DuplicateWireName {
                    name: info.name.to_string(),
                    first: (prev.rust_type)().to_string(),
                    second: (info.rust_type)().to_string(),
                });
            }
        }
        out.insert(info.name, info);
    }
    Ok(out)
}

/// A command has exactly one handler, in its owning endpoint.
fn check_commands(
    descriptors: &[HandlerDescriptor],
    messages: &HashMap<&'static str, MessageInfo>,
    routes: &mut HashMap<String, String>,
    hosted: Option<&HashSet<String>>,
) -> Result<(), BusError> {
    let mut by_command: BTreeMap<&str, Vec<&HandlerDescriptor>> = BTreeMap::new();
    for d in descriptors
        .iter()
        .filter(|d| d.message.kind == MessageKind::Command)
    {
        by_command.entry(d.message.name).or_default().push(d);
    }
    for (name, handlers) in &by_command {
        if handlers.len() > 1 {
            return Err(BusError::DuplicateHandler {
                message: name.to_string(),
                handlers: handlers
                    .iter()
                    .map(|d| format!("{}::{}", d.endpoint().unwrap_or_default(), d.name))
                    .collect(),
            });
        }
        let handler = handlers[0];
        let at = handler.endpoint().unwrap_or_default();
        match routes.get(*name) {
            Some(owner) if owner != at => {
                return Err(BusError::MisplacedHandler {
                    message: name.to_string(),
                    handler: handler.name.to_string(),
                    endpoint: at.to_string(),
                    owner: owner.clone(),
                })
            }
            Some(_) => {}
            None => {
                routes.insert(name.to_string(), at.to_string());
            }
        }
    }
    let hosted_endpoints: HashSet<String> = match hosted {
        Some(h) => h.clone(),
        None => descriptors
            .iter()
            .filter_map(|d| d.endpoint().map(str::to_string))
            .collect(),
    };
    let mut names: Vec<&&str> = messages.keys().collect();
    names.sort();
    for name in names {
        let info = &messages[*name];
        if info.kind != MessageKind::Command || by_command.contains_key(*name) {
            continue;
        }
        if let Some(owner) = routes.get(*name) {
            if hosted_endpoints.contains(owner) {
                return Err(BusError::NoHandler {
                    message: name.to_string(),
                    endpoint: owner.clone(),
                });
            }
        }
    }
    Ok(())
}

struct BusInner {
    shared: Arc<Shared>,
    endpoints: Vec<Arc<EndpointRuntime>>,
    topology: Topology,
    stop: Signal,
    abort: Signal,
    tracker: TaskTracker,
    started: AtomicBool,
    consumers: Arc<AtomicUsize>,
    grace: Duration,
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
    /// Start configuring a bus.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
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
        let shared = &self.inner.shared;
        let out = shared.outgoing(command, shared.route::<C>()?, None, options)?;
        self.dispatch(out).await
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
        let out = self.inner.shared.outgoing(
            event,
            Destination::Event(E::NAME.to_string()),
            None,
            options,
        )?;
        self.dispatch(out).await
    }

    /// Send or publish a message whose type is known only at run time (e.g. one decoded from
    /// an error queue with [`crate::decode_any`]), according to its kind.
    pub async fn dispatch_any(
        &self,
        message: &dyn AnyMessage,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let shared = &self.inner.shared;
        let name = message.message_name();
        let destination = match message.message_kind() {
            MessageKind::Command => Destination::Endpoint(
                shared
                    .routes
                    .get(name)
                    .cloned()
                    .ok_or_else(|| BusError::NoRoute(name.to_string()))?,
            ),
            MessageKind::Event => Destination::Event(name.to_string()),
        };
        let content_type = shared.codecs.default_content_type();
        let body = if shared.typed {
            Body::Message(Arc::from(message.clone_message()))
        } else {
            let bytes = shared
                .codecs
                .default_codec()
                .encode(message.as_serialize())?;
            shared.check_size(bytes.len())?;
            Body::Bytes(bytes)
        };
        let headers = new_headers(name, content_type, None, options);
        self.dispatch(Outgoing {
            destination,
            envelope: Envelope {
                headers: Arc::new(headers),
                body,
            },
            delay: None,
        })
        .await
    }

    async fn dispatch(&self, out: Outgoing) -> Result<(), BusError> {
        if self.inner.stop.is_fired() && self.inner.abort.is_fired() {
            return Err(BusError::ShutDown);
        }
        let transport = &self.inner.shared.transport;
        match transport.send_now(out) {
            Ok(done) => {
                done?;
                // Nothing waited: count the send against the task's cooperative budget, as
                // tokio's own channels do, so a task that sends in a loop still yields now and
                // then (to the consumers it woke, among others) while the queue has room.
                tokio::task::coop::consume_budget().await;
            }
            Err(out) => transport.send(out).await?,
        }
        Ok(())
    }

    /// Start consuming every hosted endpoint. Calling it again does nothing.
    pub async fn start(&self) -> Result<(), BusError> {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        for ep in &self.inner.endpoints {
            let sub = self
                .inner
                .shared
                .transport
                .subscribe(
                    &ep.name,
                    SubscribeOptions {
                        prefetch: ep.config.prefetch,
                    },
                )
                .await?;
            let tracker = self.inner.tracker.clone();
            tracker.spawn(receive::consume(
                ep.clone(),
                sub,
                self.inner.stop.clone(),
                self.inner.abort.clone(),
                self.inner.tracker.clone(),
                self.inner.consumers.clone(),
            ));
        }
        tracing::info!(
            transport = self.inner.shared.transport.name(),
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
        self.inner.tracker.close();
        let drained = tokio::time::timeout(self.inner.grace, self.inner.tracker.wait())
            .await
            .is_ok();
        if !drained {
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

    /// Readiness: transport connected and every endpoint consuming.
    pub fn health(&self) -> Health {
        Health {
            running: self.inner.started.load(Ordering::SeqCst) && !self.inner.stop.is_fired(),
            transport_connected: self.inner.shared.transport.is_connected(),
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
        self.inner.shared.routes.get(command).map(String::as_str)
    }

    /// The codecs this bus knows.
    pub fn codecs(&self) -> &Codecs {
        &self.inner.shared.codecs
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.shared.transport
    }

    /// What this bus instance has done so far.
    pub fn stats(&self) -> BusStats {
        let c = &self.inner.shared.counters;
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
            .field("transport", &self.inner.shared.transport.name())
            .field("endpoints", &self.endpoint_names())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root message carries no correlation id (unless given one) and no conversation
    /// header; what it causes carries both, and the causation id, explicitly.
    #[test]
    fn a_root_carries_no_implied_ids_and_its_children_carry_them_all() {
        let root = new_headers(
            "t.Root",
            "application/json".into(),
            None,
            SendOptions::default(),
        );
        assert_eq!(root.correlation_id, None);
        assert!(root.custom.is_empty(), "{:?}", root.custom);
        assert_eq!(root.correlation_id(), Some(root.message_id.as_str()));
        assert_eq!(root.conversation_id(), Some(root.message_id.as_str()));

        let child = new_headers(
            "t.Child",
            "application/json".into(),
            Some(&root),
            SendOptions::default(),
        );
        let id = Some(root.message_id.to_string());
        assert_eq!(child.correlation_id, id);
        assert_eq!(child.get(header::CONVERSATION_ID), id.as_deref());
        assert_eq!(child.get(header::CAUSATION_ID), id.as_deref());

        let given = new_headers(
            "t.Root",
            "application/json".into(),
            None,
            SendOptions::new().correlation_id("order-7"),
        );
        assert_eq!(given.correlation_id.as_deref(), Some("order-7"));
        let grandchild = new_headers(
            "t.Child",
            "application/json".into(),
            Some(&child),
            SendOptions::default(),
        );
        assert_eq!(
            grandchild.correlation_id, id,
            "the root's, through its child"
        );
        assert_eq!(grandchild.get(header::CONVERSATION_ID), id.as_deref());
        assert_eq!(
            grandchild.get(header::CAUSATION_ID),
            Some(child.message_id.as_str())
        );
    }

    #[test]
    fn message_ids_are_unique_uuid_v7_with_the_send_time() {
        let now = SystemTime::now();
        let millis = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: HashSet<MessageId> = (0..10_000).map(|_| new_message_id(now)).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            let (secs, nanos) = uuid.get_timestamp().expect("v7 timestamp").to_unix();
            assert_eq!(secs * 1_000 + u64::from(nanos) / 1_000_000, millis, "{id}");
        }
    }
}

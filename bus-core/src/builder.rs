//! Building a bus: handlers found by discovery or given by hand, placed in their endpoints,
//! checked (one handler per command, in its owning endpoint; state present), the topology
//! declared on the transport.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::bus::Bus;
use crate::cloudevents::CloudEvents;
use crate::codec::{Codec, Codecs};
use crate::endpoint::EndpointConfig;
use crate::error::BusError;
use crate::handler::{
    Handler, HandlerDescriptor, HandlerRegistration, MessageInfo, MessageRegistration,
};
use crate::layer::Layer;
use crate::message::{Command, MessageKind};
use crate::pipeline::EndpointRuntime;
use crate::runtime::{Counters, NameMap, Runtime};
use crate::state::StateMap;
use crate::storage::Storage;
use crate::telemetry::Telemetry;
use crate::transport::{EndpointTopology, Topology, Transport};

impl Bus {
    /// Start configuring a bus.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }
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
    storage: Option<Arc<dyn Storage>>,
    endpoint_configs: HashMap<String, Box<dyn FnOnce(EndpointConfig) -> EndpointConfig + Send>>,
    routes: HashMap<String, String>,
    state: StateMap,
    codecs: Codecs,
    max_body_size: Option<usize>,
    shutdown_grace: Duration,
    layers: Vec<Arc<dyn Layer>>,
    telemetry: bool,
    cloudevents: crate::cloudevents::Rules,
    pub(crate) masstransit: crate::masstransit::Rules,
    pub(crate) nservicebus: crate::nservicebus::Rules,
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
            storage: None,
            endpoint_configs: HashMap::new(),
            routes: HashMap::new(),
            state: StateMap::default(),
            codecs: Codecs::default(),
            max_body_size: None,
            shutdown_grace: Duration::from_secs(30),
            layers: Vec::new(),
            telemetry: true,
            cloudevents: Default::default(),
            masstransit: Default::default(),
            nservicebus: Default::default(),
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
    ///
    /// Each hosted endpoint must have a handler, or [`BusBuilder::build`] fails with
    /// [`BusError::EmptyEndpoint`]. The usual cause is handlers in a crate of their own that
    /// the binary never names: the linker then leaves that crate out, `#[handler]`
    /// registrations included. Name it once in the binary to link it:
    ///
    /// ```ignore
    /// use audit_handlers as _; // links the crate, and with it its `#[handler]`s
    /// ```
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

    /// Register saga `S`'s handler of message `M` in `endpoint` (what `#[bus_core::saga]` on
    /// the `impl SagaHandles<M> for S` registers by itself).
    pub fn saga<S, M>(mut self, endpoint: impl Into<Cow<'static, str>>) -> Self
    where
        S: crate::SagaHandles<M>,
        M: crate::Message,
    {
        self.handlers.push(crate::saga::descriptor::<S, M>(
            std::any::type_name::<S>(),
            Some(endpoint.into()),
        ));
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

    /// Largest body accepted on send and on receive. By default 4 MiB, or less where the
    /// broker takes less ([`Transport::limits`](crate::Transport::limits): NATS's
    /// `max_payload`, less [`BusBuilder::HEADER_ROOM`] for the headers). A limit set here
    /// above what the broker takes fails the build with [`BusError::BodyLimitAboveBroker`]:
    /// better at start than at the first large message.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = Some(bytes);
        self
    }

    /// The default body limit.
    pub const DEFAULT_MAX_BODY_SIZE: usize = 4 * 1024 * 1024;

    /// What the body limit leaves of the broker's message limit for the headers.
    pub const HEADER_ROOM: usize = 8 * 1024;

    /// The body limit for `transport`: the one set, or the default lowered to fit the broker.
    fn body_limit(&self, transport: &dyn Transport) -> Result<usize, BusError> {
        let broker = transport
            .limits()
            .max_message_size
            .map(|max| max.saturating_sub(Self::HEADER_ROOM));
        match (self.max_body_size, broker) {
            (Some(limit), Some(broker)) if limit > broker => Err(BusError::BodyLimitAboveBroker {
                limit,
                broker,
                transport: transport.name().to_string(),
            }),
            (Some(limit), _) => Ok(limit),
            (None, Some(broker)) if broker < Self::DEFAULT_MAX_BODY_SIZE => {
                tracing::info!(
                    transport = transport.name(),
                    limit = broker,
                    "body limit lowered to what the broker takes"
                );
                Ok(broker)
            }
            (None, _) => Ok(Self::DEFAULT_MAX_BODY_SIZE),
        }
    }

    /// How long [`Bus::shutdown`] waits for in-flight handlers (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Where units of work commit: every hosted endpoint runs each handler attempt in a
    /// session of `storage` (its writes, the saga state it changes, the messages it sends as
    /// outbox entries and the record that the message was handled, committed at once), unless
    /// its [`EndpointConfig::storage`] names another; [`crate::Bus::unit_of_work`] opens one
    /// outside handlers; and the running bus keeps the storage's outbox relay going. See the
    /// `storage` module docs and `docs/sagas.md`.
    ///
    /// ```
    /// use bus_core::{Bus, MemoryStorage};
    /// let builder = Bus::builder().storage(MemoryStorage::new());
    /// # drop(builder);
    /// ```
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    /// [`BusBuilder::storage`] with a storage that is shared already.
    pub fn storage_arc(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Add a layer around every handler attempt of every endpoint, outside the endpoints' own
    /// layers; layers run in the order added (see [`Layer`]).
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Whether the bus makes spans around what it sends and handles and, with the
    /// `opentelemetry` feature, carries their trace context in message headers and records
    /// metrics (see [`crate::telemetry`]). On by default: with no `tracing` subscriber
    /// interested and no meter provider installed it costs next to nothing. Off, the bus makes
    /// no span, writes no trace header and records no metric.
    pub fn telemetry(mut self, on: bool) -> Self {
        self.telemetry = on;
        self
    }

    /// Send every message as a CloudEvent, in `config`'s mode and with its attributes (see
    /// [`crate::cloudevents`]); [`BusBuilder::cloudevents_for`] and
    /// [`BusBuilder::cloudevents_to`] override it. Receiving needs no configuration: every
    /// endpoint reads CloudEvents.
    ///
    /// ```
    /// use bus_core::{Bus, CloudEvents};
    /// let builder = Bus::builder().cloudevents(CloudEvents::binary().source("urn:shop:sales"));
    /// # drop(builder);
    /// ```
    pub fn cloudevents(mut self, config: CloudEvents) -> Self {
        self.cloudevents.default = Some(config);
        self
    }

    /// Send messages of type `M` as CloudEvents per `config` (or not, with
    /// [`CloudEvents::off`]), whatever the other settings say.
    pub fn cloudevents_for<M: crate::Message>(mut self, config: CloudEvents) -> Self {
        self.cloudevents.by_type.insert(M::NAME.to_string(), config);
        self
    }

    /// Send the commands routed to `endpoint` as CloudEvents per `config`, unless their type
    /// has a setting of its own ([`BusBuilder::cloudevents_for`]).
    pub fn cloudevents_to(mut self, endpoint: impl Into<String>, config: CloudEvents) -> Self {
        self.cloudevents.by_endpoint.insert(endpoint.into(), config);
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
        let all_endpoints: Vec<String> = descriptors.iter().map(endpoint_of).collect();
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
            if let Some(empty) = hosted.iter().find(|name| !by_endpoint.contains_key(*name)) {
                return Err(BusError::EmptyEndpoint {
                    endpoint: empty.clone(),
                    others: with_handlers(&all_endpoints),
                });
            }
        }

        // Where each message type goes, for the attributes of what the bus sends.
        let destinations = messages.values().filter_map(|info| match info.kind {
            MessageKind::Command => routes.get(info.name).map(|to| (info.name, to.as_str())),
            MessageKind::Event => Some((info.name, info.name)),
        });
        let telemetry = Telemetry::new(self.telemetry, transport.name(), destinations);
        let runtime = Arc::new(Runtime {
            typed: transport.carries_typed_messages(),
            transport: transport.clone(),
            routes: routes
                .into_iter()
                .map(|(command, endpoint)| (command, Arc::from(endpoint)))
                .collect(),
            names: messages
                .keys()
                .map(|name| (name.to_string(), Arc::from(*name)))
                .collect(),
            codecs: self.codecs.clone(),
            state: self.state.clone(),
            max_body_size: self.body_limit(&*transport)?,
            counters: Counters::default(),
            telemetry,
            replies: crate::request::Replies::new(),
            storage: self.storage.clone(),
            cloudevents: self.cloudevents.any().then(|| {
                let binding = crate::cloudevents::Binding::for_transport(transport.name());
                Box::new((self.cloudevents.clone(), binding))
            }),
            masstransit: self.masstransit.built(),
            nservicebus: self.nservicebus.built(),
        });

        let mut configs = self.endpoint_configs;
        let mut topology = Topology::default();
        let mut endpoints = Vec::new();
        for (name, handlers) in by_endpoint {
            let mut config = match configs.remove(&name) {
                Some(configure) => configure(self.endpoint_defaults.clone()),
                None => self.endpoint_defaults.clone(),
            };
            if config.storage.is_none() {
                config.storage = self.storage.clone();
            }
            if config.storage.is_none() {
                if let Some(saga) = handlers.iter().find(|h| h.needs_storage) {
                    return Err(BusError::SagaWithoutStorage {
                        handler: saga.name.to_string(),
                        endpoint: name,
                    });
                }
            }
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
            endpoints.push(Arc::new(EndpointRuntime::new(
                &name,
                config,
                table,
                runtime.clone(),
                &self.layers,
            )));
        }

        transport.declare(&topology).await?;
        tracing::debug!(
            transport = transport.name(),
            endpoints = endpoints.len(),
            "bus built"
        );

        Ok(Bus::new(runtime, endpoints, topology, self.shutdown_grace))
    }

    /// [`BusBuilder::build`], then [`Bus::start`].
    pub async fn start(self) -> Result<Bus, BusError> {
        let bus = self.build().await?;
        bus.start().await?;
        Ok(bus)
    }
}

/// The distinct endpoint names in `names`, sorted.
fn with_handlers(names: &[String]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    names
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

//! The context a handler runs in: the incoming message's metadata and an outbox.
//!
//! Messages sent or published through the context are *held back* in the outbox and released
//! only after the handler succeeded, before the incoming message is acked. A failed attempt's
//! messages are discarded, so a retried handler never emits twice.
//!
//! [`MessageContext::for_test`] makes a context without a bus, for unit tests of one handler:
//! its outbox is never released, and [`MessageContext::staged`] shows what the handler sent.
//! It is an ordinary context over a runtime of its own (with a transport that carries
//! nothing), so the handling path knows nothing of tests and pays nothing for them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::codec::{Codec, Codecs};
use crate::envelope::{Headers, MessageId};
use crate::error::{BusError, TransportError};
use crate::handler::{HandlerRegistration, MessageRegistration};
use crate::message::{Command, Event, Message, MessageKind, Request};
use crate::outgoing::SendOptions;
use crate::request::RequestOptions;
use crate::runtime::{Counters, Runtime};
use crate::state::StateMap;
use crate::storage::Session;
use crate::telemetry::Telemetry;
use crate::transport::{Outgoing, SubscribeOptions, Subscription, Topology, Transport};

/// Metadata of the message being handled, and the way to send messages from a handler.
#[derive(Clone)]
pub struct MessageContext {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<Runtime>,
    headers: Arc<Headers>,
    endpoint: Arc<str>,
    attempt: u32,
    redelivered: bool,
    outbox: Mutex<Option<Vec<Outgoing>>>,
    /// The inbox found the message handled before: the attempt succeeded without handlers.
    duplicate: AtomicBool,
    /// The attempt's unit of work, when the endpoint has storage.
    session: tokio::sync::Mutex<Option<Box<dyn Session>>>,
}

impl MessageContext {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        headers: Arc<Headers>,
        endpoint: Arc<str>,
        attempt: u32,
        redelivered: bool,
    ) -> Self {
        MessageContext {
            inner: Arc::new(Inner {
                runtime,
                headers,
                endpoint,
                attempt,
                redelivered,
                outbox: Mutex::new(Some(Vec::new())),
                duplicate: AtomicBool::new(false),
                session: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// A context for one handler attempt, in `spare`'s allocation when nothing else holds
    /// that any more (a worker hands its previous context back for each message; a handler
    /// that kept a clone of it makes a new one necessary).
    pub(crate) fn for_attempt(
        spare: Option<MessageContext>,
        runtime: &Arc<Runtime>,
        headers: &Arc<Headers>,
        endpoint: &Arc<str>,
        attempt: u32,
        redelivered: bool,
    ) -> Self {
        if let Some(mut ctx) = spare {
            if let Some(inner) = Arc::get_mut(&mut ctx.inner) {
                if Arc::ptr_eq(&inner.runtime, runtime) && Arc::ptr_eq(&inner.endpoint, endpoint) {
                    inner.headers = headers.clone();
                    inner.attempt = attempt;
                    inner.redelivered = redelivered;
                    *inner.duplicate.get_mut() = false;
                    *inner.session.get_mut() = None;
                    let outbox = inner.outbox.get_mut().unwrap_or_else(|p| p.into_inner());
                    match outbox {
                        Some(list) => list.clear(),
                        None => *outbox = Some(Vec::new()),
                    }
                    return ctx;
                }
            }
        }
        MessageContext::new(
            runtime.clone(),
            headers.clone(),
            endpoint.clone(),
            attempt,
            redelivered,
        )
    }

    /// The incoming message's headers.
    pub fn headers(&self) -> &Headers {
        &self.inner.headers
    }

    /// The incoming message's id.
    pub fn message_id(&self) -> &str {
        &self.inner.headers.message_id
    }

    /// The correlation id (given to the root message, or its message id; copied to everything
    /// it causes).
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner.headers.correlation_id()
    }

    /// The conversation id.
    pub fn conversation_id(&self) -> Option<&str> {
        self.inner.headers.conversation_id()
    }

    /// The id of the message whose handler sent this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.inner.headers.causation_id()
    }

    /// The endpoint handling the message.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Which attempt this is, starting at 1, counting immediate and delayed retries.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Whether the transport delivered this message before without it being acked.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// Shared state of type `T`, as given to [`crate::BusBuilder::state`].
    pub fn state<T: Clone + 'static>(&self) -> Option<T> {
        self.inner.runtime.state.get::<T>()
    }

    /// The codecs of the bus the context belongs to, e.g. to decode what [`staged`] holds.
    ///
    /// [`staged`]: MessageContext::staged
    pub fn codecs(&self) -> &Codecs {
        &self.inner.runtime.codecs
    }

    /// What was sent or published through this context (or a clone of it) and is held back
    /// until the handler succeeds, in order. Empty once the attempt is over. A context made by
    /// [`MessageContext::for_test`] is never released: this is everything its handler sent.
    pub fn staged(&self) -> Vec<Outgoing> {
        let outbox = self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner());
        outbox.clone().unwrap_or_default()
    }

    /// Start building a context for a unit test of one handler, without a bus: what the
    /// handler sends or publishes through it is kept ([`MessageContext::staged`]), never
    /// delivered. Commands are routed as a bus with discovery would route them (their declared
    /// owner, else where their `#[handler]` lives), plus the routes given with
    /// [`TestContextBuilder::route`]; bodies are encoded with the default codec and held to
    /// the default body limit, as for a broker.
    ///
    /// ```
    /// use bus_core::{Command, Event, HandlerError, MessageContext};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Command, Serialize, Deserialize, Clone, Debug)]
    /// #[command(name = "docs.ctx.Reserve", endpoint = "docs-ctx-stock")]
    /// struct Reserve { sku: String }
    ///
    /// #[derive(Event, Serialize, Deserialize, Clone, Debug)]
    /// #[event(name = "docs.ctx.Reserved")]
    /// struct Reserved { sku: String }
    ///
    /// async fn reserve(cmd: Reserve, ctx: MessageContext) -> Result<(), HandlerError> {
    ///     if ctx.attempt() > 1 {
    ///         println!("retrying {}", cmd.sku);
    ///     }
    ///     ctx.publish(Reserved { sku: cmd.sku }).await?;
    ///     Ok(())
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let ctx = MessageContext::for_test().attempt(2).header("tenant", "acme").build();
    /// reserve(Reserve { sku: "lamp".into() }, ctx.clone()).await.unwrap();
    /// let staged = ctx.staged();
    /// assert_eq!(staged.len(), 1);
    /// assert_eq!(staged[0].envelope.headers.message_type, "docs.ctx.Reserved");
    /// // What the handler sends carries the ids of the message it handled.
    /// assert_eq!(staged[0].envelope.headers.causation_id(), Some(ctx.message_id()));
    /// # });
    /// ```
    pub fn for_test() -> TestContextBuilder {
        TestContextBuilder::default()
    }

    /// Send a command; it leaves only if the handler succeeds.
    pub async fn send<C: Command>(&self, command: C) -> Result<(), BusError> {
        self.send_with(command, SendOptions::default()).await
    }

    /// Send a command with options; it leaves only if the handler succeeds.
    pub async fn send_with<C: Command>(
        &self,
        command: C,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let destination = self.inner.runtime.route::<C>()?;
        let out = self.inner.runtime.outgoing(
            command,
            destination,
            Some(&self.inner.headers),
            options,
        )?;
        self.stage(out)
    }

    /// Publish an event; it leaves only if the handler succeeds.
    pub async fn publish<E: Event>(&self, event: E) -> Result<(), BusError> {
        self.publish_with(event, SendOptions::default()).await
    }

    /// Publish an event with options; it leaves only if the handler succeeds.
    pub async fn publish_with<E: Event>(
        &self,
        event: E,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let destination = self.inner.runtime.event(E::NAME);
        let out =
            self.inner
                .runtime
                .outgoing(event, destination, Some(&self.inner.headers), options)?;
        self.stage(out)
    }

    /// Answer the request being handled with `response`; it leaves, with the rest of what the
    /// handler sent, only if the handler succeeds. A handler of a request can also simply
    /// return its answer (`-> Result<QuoteReply, HandlerError>`). Answering a message that
    /// asked for no answer (it was sent, not requested) does nothing.
    ///
    /// ```
    /// use bus_core::{Command, HandlerError, MessageContext};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, Clone, Debug)]
    /// struct Status { shipped: bool }
    ///
    /// #[derive(Command, Serialize, Deserialize, Clone, Debug)]
    /// #[command(name = "docs.reply.GetStatus", endpoint = "docs-reply", response = Status)]
    /// struct GetStatus { order: u32 }
    ///
    /// #[bus_core::handler]
    /// async fn status(query: GetStatus, ctx: MessageContext) -> Result<(), HandlerError> {
    ///     ctx.reply(Status { shipped: query.order < 100 }).await?;
    ///     Ok(())
    /// }
    /// ```
    pub async fn reply<T: serde::Serialize>(&self, response: T) -> Result<(), BusError> {
        self.stage_reply(&response)
    }

    /// Stage the reply to the message being handled, if it asked for one.
    #[doc(hidden)]
    pub fn stage_reply<T: serde::Serialize>(&self, response: &T) -> Result<(), BusError> {
        match self.inner.runtime.reply_to(&self.inner.headers, response)? {
            Some(out) => self.stage(out),
            None => {
                tracing::debug!(message_id = %self.inner.headers.message_id, "the message asked for no answer; the reply is not sent");
                Ok(())
            }
        }
    }

    /// Send a request from this handler and wait for its answer (see [`crate::Bus::request`]).
    /// Unlike [`MessageContext::send`], the request leaves at once, not when the handler
    /// succeeds: the handler needs the answer now. It carries the handled message's ids.
    pub async fn request<R: Request>(&self, request: R) -> Result<R::Response, BusError> {
        self.request_with(request, RequestOptions::default()).await
    }

    /// Send a request from this handler with options, and wait for its answer.
    pub async fn request_with<R: Request>(
        &self,
        request: R,
        options: RequestOptions,
    ) -> Result<R::Response, BusError> {
        self.inner
            .runtime
            .request(request, Some(&self.inner.headers), options)
            .await
    }

    /// The unit of work this attempt runs in, when its endpoint has storage
    /// ([`crate::BusBuilder::storage`]): the database transaction that commits with the
    /// messages the handler sends. A storage crate reaches its own transaction through it
    /// (`bus_postgres::PostgresSession`); [`crate::Saga`] handlers keep their state there.
    /// [`BusError::NoStorage`] on an endpoint without storage.
    pub async fn session(&self) -> Result<SessionGuard<'_>, BusError> {
        let guard = self.inner.session.lock().await;
        if guard.is_none() {
            return Err(BusError::NoStorage);
        }
        Ok(SessionGuard(guard))
    }

    /// Give the attempt its unit of work.
    pub(crate) fn set_session(&self, session: Box<dyn Session>) {
        if let Ok(mut slot) = self.inner.session.try_lock() {
            *slot = Some(session);
        }
    }

    /// Take the attempt's unit of work back, once its handlers are done.
    pub(crate) fn take_session(&self) -> Option<Box<dyn Session>> {
        // A handler that kept a guard past its end would hold the lock: its work is lost.
        self.inner
            .session
            .try_lock()
            .ok()
            .and_then(|mut s| s.take())
    }

    /// Stage `out` under its producer span, made now, inside the handler's span: the
    /// message's handling continues the handler's trace, though the message leaves later.
    fn stage(&self, mut out: Outgoing) -> Result<(), BusError> {
        let span = self.inner.runtime.telemetry.send_span(&mut out);
        let mut outbox = self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner());
        match outbox.as_mut() {
            Some(list) => {
                list.push(out);
                Ok(())
            }
            None => {
                let error = BusError::ContextClosed;
                crate::telemetry::send_failed(&span, &error);
                Err(error)
            }
        }
    }

    /// Close the outbox and take what the handler staged, while others may hold the context
    /// (a layer's attempt).
    pub(crate) fn close_outbox(&self) -> Vec<Outgoing> {
        let mut outbox = self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner());
        outbox.take().unwrap_or_default()
    }

    /// Mark the attempt as a duplicate the inbox skipped.
    pub(crate) fn mark_duplicate(&self) {
        self.inner.duplicate.store(true, Ordering::Relaxed);
    }

    /// Whether the inbox skipped this attempt as a duplicate.
    pub(crate) fn is_duplicate(&self) -> bool {
        self.inner.duplicate.load(Ordering::Relaxed)
    }

    /// The runtime the context belongs to.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// Close the outbox and take what the handler staged.
    pub(crate) fn take_outbox(&mut self) -> Vec<Outgoing> {
        // Nobody else holds the context (the handler's clone is gone, as it usually is by
        // now): no lock needed.
        let outbox = match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.outbox.get_mut().unwrap_or_else(|p| p.into_inner()),
            None => &mut *self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner()),
        };
        outbox.take().unwrap_or_default()
    }
}

impl std::fmt::Debug for MessageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageContext")
            .field("message_id", &self.message_id())
            .field("message_type", &self.inner.headers.message_type)
            .field("endpoint", &self.endpoint())
            .field("attempt", &self.attempt())
            .finish()
    }
}

/// Builds a [`MessageContext`] for a unit test of one handler: see
/// [`MessageContext::for_test`].
///
/// By default the incoming message has a new id, no type, the JSON content type and no custom
/// headers; the endpoint is `test`, the attempt 1, and no state is given.
#[derive(Clone)]
pub struct TestContextBuilder {
    headers: Headers,
    endpoint: String,
    attempt: u32,
    redelivered: bool,
    state: StateMap,
    routes: HashMap<String, String>,
    codecs: Codecs,
}

impl Default for TestContextBuilder {
    fn default() -> Self {
        TestContextBuilder {
            headers: Headers {
                message_id: MessageId::from(uuid::Uuid::now_v7().to_string()),
                message_type: Cow::Borrowed(""),
                content_type: Cow::Borrowed(crate::codec::JSON),
                correlation_id: None,
                sent_at: Some(SystemTime::now()),
                custom: Default::default(),
            },
            endpoint: "test".to_string(),
            attempt: 1,
            redelivered: false,
            state: StateMap::default(),
            routes: HashMap::new(),
            codecs: Codecs::default(),
        }
    }
}

impl TestContextBuilder {
    /// The endpoint the handler runs in ([`MessageContext::endpoint`]).
    pub fn endpoint(mut self, name: impl Into<String>) -> Self {
        self.endpoint = name.into();
        self
    }

    /// Which attempt this is, starting at 1 ([`MessageContext::attempt`]).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Whether the message counts as redelivered ([`MessageContext::redelivered`]).
    pub fn redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }

    /// The incoming message is an `M`: its wire name becomes the message type header.
    pub fn message<M: Message>(mut self) -> Self {
        self.headers.message_type = Cow::Borrowed(M::NAME);
        self
    }

    /// The incoming message's id.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.headers.message_id = MessageId::from(id.into());
        self
    }

    /// The incoming message's correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.headers.correlation_id = Some(id.into());
        self
    }

    /// A custom header of the incoming message.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.custom.insert(name.into(), value.into());
        self
    }

    /// All the incoming message's headers at once, replacing what was set before.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Shared state for [`crate::State`] and [`MessageContext::state`], as
    /// [`crate::BusBuilder::state`] gives it.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Route command `C` to `endpoint`, as [`crate::BusBuilder::route`] does.
    pub fn route<C: Command>(mut self, endpoint: impl Into<String>) -> Self {
        self.routes.insert(C::NAME.to_string(), endpoint.into());
        self
    }

    /// Add a codec; with `default`, what the handler sends is encoded with it.
    pub fn codec(mut self, codec: impl Codec, default: bool) -> Self {
        self.codecs.register(Arc::new(codec), default);
        self
    }

    /// The context.
    pub fn build(self) -> MessageContext {
        let mut names = crate::runtime::NameMap::default();
        let mut routes: crate::runtime::NameMap<Arc<str>> = Default::default();
        for reg in inventory::iter::<MessageRegistration>() {
            let info = reg.info;
            names.insert(info.name.to_string(), Arc::from(info.name));
            if let (MessageKind::Command, Some(owner)) = (info.kind, info.endpoint) {
                routes.insert(info.name.to_string(), Arc::from(owner));
            }
        }
        // A command without a declared owner goes where its handler lives, as on a bus with
        // discovery (and a handler naming no endpoint lives in the default one).
        for reg in inventory::iter::<HandlerRegistration>() {
            let d = (reg.factory)();
            if d.message.kind == MessageKind::Command && !routes.contains_key(d.message.name) {
                let at = d.endpoint().unwrap_or(BUILDER_DEFAULT_ENDPOINT);
                routes.insert(d.message.name.to_string(), Arc::from(at));
            }
        }
        for (command, endpoint) in self.routes {
            routes.insert(command, Arc::from(endpoint));
        }
        let runtime = Arc::new(Runtime {
            transport: Arc::new(HeldBack),
            routes,
            names,
            codecs: self.codecs,
            typed: false,
            state: self.state,
            max_body_size: crate::BusBuilder::DEFAULT_MAX_BODY_SIZE,
            counters: Counters::default(),
            // A handler under test sends nothing anywhere: no spans, no trace headers in what
            // it stages, so that a test sees exactly what the handler wrote.
            telemetry: Telemetry::off(),
            replies: crate::request::Replies::new(),
            storage: None,
            cloudevents: None,
            masstransit: None,
            nservicebus: None,
        });
        MessageContext::new(
            runtime,
            Arc::new(self.headers),
            Arc::from(self.endpoint),
            self.attempt,
            self.redelivered,
        )
    }
}

impl std::fmt::Debug for TestContextBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestContextBuilder")
            .field("headers", &self.headers)
            .field("endpoint", &self.endpoint)
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .field("routes", &self.routes)
            .finish()
    }
}

/// Where [`crate::BusBuilder`] puts handlers that name no endpoint, unless told otherwise.
const BUILDER_DEFAULT_ENDPOINT: &str = "main";

/// The transport under a test context: the context's outbox is never released, so nothing
/// ever reaches it; it refuses everything, to say so should that change.
struct HeldBack;

impl HeldBack {
    fn refuse(&self) -> TransportError {
        TransportError::Unsupported {
            operation: "delivering messages from a test context",
            transport: self.name().to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Transport for HeldBack {
    fn name(&self) -> &str {
        "test-context"
    }

    async fn declare(&self, _: &Topology) -> Result<(), TransportError> {
        Err(self.refuse())
    }

    async fn send(&self, _: Outgoing) -> Result<(), TransportError> {
        Err(self.refuse())
    }

    async fn subscribe(
        &self,
        _: &str,
        _: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        Err(self.refuse())
    }
}

/// The unit of work of a handler attempt, borrowed: see [`MessageContext::session`].
pub struct SessionGuard<'a>(tokio::sync::MutexGuard<'a, Option<Box<dyn Session>>>);

impl SessionGuard<'_> {
    /// The session.
    pub fn session(&mut self) -> &mut dyn Session {
        self.0
            .as_deref_mut()
            .expect("a guard is made only over a session")
    }

    /// The session as the storage's own type, e.g. to reach its database transaction.
    pub fn downcast<T: Session>(&mut self) -> Option<&mut T> {
        self.session().as_any_mut().downcast_mut::<T>()
    }
}

impl std::fmt::Debug for SessionGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionGuard")
    }
}

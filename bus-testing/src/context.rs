//! [`TestContext`]: run one handler without a bus and see what it sent and published.

use std::sync::OnceLock;

use bus_core::{
    Codec, Command, Destination, Event, FromContext, HandlerError, Headers, Message,
    MessageContext, Outgoing, TestContextBuilder,
};

use crate::records::decode_as;

/// A [`MessageContext`] for a unit test of one handler, and what the handler sent and
/// published through it, typed. Nothing it sends goes anywhere.
///
/// Set up the incoming message (headers, attempt, endpoint) and the state, hand
/// [`TestContext::context`] (or what [`TestContext::extract`] makes) to the handler, call it,
/// then read [`TestContext::sent`] and [`TestContext::published`]. Built on
/// [`MessageContext::for_test`]: commands are routed as on a bus with discovery, bodies are
/// encoded as for a broker (a message that cannot be serialized fails here too).
///
/// ```
/// use bus_core::{Command, Event, HandlerError, MessageContext, State};
/// use bus_testing::TestContext;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
/// #[command(name = "doc.ctx.Bill", endpoint = "doc-ctx-billing")]
/// struct Bill { order: u32, cents: u64 }
///
/// #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
/// #[event(name = "doc.ctx.Billed")]
/// struct Billed { order: u32, cents: u64 }
///
/// #[derive(Clone)]
/// struct Vat(u64); // percent
///
/// #[bus_core::handler]
/// async fn bill(cmd: Bill, ctx: MessageContext, State(vat): State<Vat>) -> Result<(), HandlerError> {
///     if ctx.headers().get("tenant").is_none() {
///         return Err(HandlerError::unrecoverable("no tenant"));
///     }
///     let cents = cmd.cents + cmd.cents * vat.0 / 100;
///     ctx.publish(Billed { order: cmd.order, cents }).await?;
///     Ok(())
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let test = TestContext::new().message::<Bill>().header("tenant", "acme").state(Vat(20));
/// let cmd = Bill { order: 1, cents: 1_000 };
/// bill(cmd, test.context(), test.extract().unwrap()).await.unwrap();
/// assert_eq!(test.published::<Billed>(), [Billed { order: 1, cents: 1_200 }]);
///
/// let anonymous = TestContext::new().state(Vat(20));
/// let error = bill(Bill { order: 2, cents: 1 }, anonymous.context(), anonymous.extract().unwrap())
///     .await
///     .unwrap_err();
/// assert!(error.is_unrecoverable());
/// assert!(anonymous.published::<Billed>().is_empty());
/// # });
/// ```
pub struct TestContext {
    builder: TestContextBuilder,
    /// Made on first use, so the settings all apply.
    context: OnceLock<MessageContext>,
}

impl Default for TestContext {
    fn default() -> Self {
        TestContext::new()
    }
}

impl TestContext {
    /// A context for a first attempt at a message with a new id, in endpoint `test`, with no
    /// custom headers and no state.
    pub fn new() -> Self {
        TestContext {
            builder: MessageContext::for_test(),
            context: OnceLock::new(),
        }
    }

    fn with(self, set: impl FnOnce(TestContextBuilder) -> TestContextBuilder) -> Self {
        // Changing the settings starts over: a context made before would not show them.
        TestContext {
            builder: set(self.builder),
            context: OnceLock::new(),
        }
    }

    /// The endpoint the handler runs in.
    pub fn endpoint(self, name: impl Into<String>) -> Self {
        self.with(|b| b.endpoint(name))
    }

    /// Which attempt this is, from 1: to test what a handler does on a retry.
    pub fn attempt(self, attempt: u32) -> Self {
        self.with(|b| b.attempt(attempt))
    }

    /// Whether the message counts as redelivered.
    pub fn redelivered(self, redelivered: bool) -> Self {
        self.with(|b| b.redelivered(redelivered))
    }

    /// The incoming message is an `M` (its message type header).
    pub fn message<M: Message>(self) -> Self {
        self.with(|b| b.message::<M>())
    }

    /// The incoming message's id.
    pub fn message_id(self, id: impl Into<String>) -> Self {
        self.with(|b| b.message_id(id))
    }

    /// The incoming message's correlation id.
    pub fn correlation_id(self, id: impl Into<String>) -> Self {
        self.with(|b| b.correlation_id(id))
    }

    /// A custom header of the incoming message.
    pub fn header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.with(|b| b.header(name, value))
    }

    /// All the incoming message's headers, replacing what was set before.
    pub fn headers(self, headers: Headers) -> Self {
        self.with(|b| b.headers(headers))
    }

    /// Shared state, as [`bus_core::BusBuilder::state`] gives it.
    pub fn state<T: Clone + Send + Sync + 'static>(self, value: T) -> Self {
        self.with(|b| b.state(value))
    }

    /// Route command `C` to `endpoint`, as [`bus_core::BusBuilder::route`] does.
    pub fn route<C: Command>(self, endpoint: impl Into<String>) -> Self {
        self.with(|b| b.route::<C>(endpoint))
    }

    /// Add a codec; with `default`, what the handler sends is encoded with it.
    pub fn codec(self, codec: impl Codec, default: bool) -> Self {
        self.with(|b| b.codec(codec, default))
    }

    /// The context to hand to the handler. Every call returns the same context (clones
    /// share one outbox).
    pub fn context(&self) -> MessageContext {
        self.context
            .get_or_init(|| self.builder.clone().build())
            .clone()
    }

    /// An extractor's value from the context, as the bus would make it for the handler:
    /// `State<T>`, `Headers`, or your own [`FromContext`] type.
    pub fn extract<T: FromContext>(&self) -> Result<T, HandlerError> {
        T::from_context(&self.context())
    }

    /// Everything the handler sent and published, in order, with destinations and headers.
    pub fn outgoing(&self) -> Vec<Outgoing> {
        self.context().staged()
    }

    /// The `C`s the handler sent, in order.
    pub fn sent<C: Command>(&self) -> Vec<C> {
        self.typed::<C>(|d| matches!(d, Destination::Endpoint(_)))
    }

    /// The `C`s the handler sent, with the endpoint each went to, in order.
    pub fn sent_to<C: Command>(&self) -> Vec<(String, C)> {
        let ctx = self.context();
        ctx.staged()
            .into_iter()
            .filter_map(|out| match &out.destination {
                Destination::Endpoint(endpoint) => Some((
                    endpoint.to_string(),
                    decode_as::<C>(ctx.codecs(), &out.envelope)?,
                )),
                _ => None,
            })
            .collect()
    }

    /// The `E`s the handler published, in order.
    pub fn published<E: Event>(&self) -> Vec<E> {
        self.typed::<E>(|d| matches!(d, Destination::Event(_)))
    }

    fn typed<M: Message>(&self, going: impl Fn(&Destination) -> bool) -> Vec<M> {
        let ctx = self.context();
        ctx.staged()
            .into_iter()
            .filter(|out| going(&out.destination))
            .filter_map(|out| decode_as::<M>(ctx.codecs(), &out.envelope))
            .collect()
    }
}

impl std::fmt::Debug for TestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestContext")
            .field("context", &self.context())
            .field("outgoing", &self.outgoing().len())
            .finish()
    }
}

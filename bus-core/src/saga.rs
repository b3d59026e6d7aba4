//! Sagas (process managers): a long-running business process whose state the storage keeps
//! between the messages that move it on.
//!
//! A saga is a serializable state type ([`Saga`]) and, for each message it handles, how the
//! message finds its instance and what it does to it ([`SagaHandles`]). Handling a message
//! loads the instance (or starts one, for a message that may start it), runs the handler on
//! its state, and saves the state in the same unit of work as the messages the handler sent:
//! the endpoint must have storage ([`crate::BusBuilder::storage`]). Two messages for one
//! instance at the same time cannot both win: the second to commit finds the version it read
//! gone ([`crate::StorageError::Conflict`]), and its attempt is retried on the new state. A
//! timeout is a message the saga schedules to itself (`ctx.send_with(.., deliver_after)`); a
//! finished saga calls [`SagaContext::complete`] and its state is removed.
//!
//! ```
//! use bus_core::{Command, Event, HandlerError, Saga, SagaContext, SagaHandles};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, Clone, Debug)]
//! #[event(name = "docs.saga.OrderPlaced")]
//! struct OrderPlaced { order: u32 }
//!
//! #[derive(Event, Serialize, Deserialize, Clone, Debug)]
//! #[event(name = "docs.saga.PaymentReceived")]
//! struct PaymentReceived { order: u32 }
//!
//! #[derive(Command, Serialize, Deserialize, Clone, Debug)]
//! #[command(name = "docs.saga.ShipOrder", endpoint = "docs-saga-shipping")]
//! struct ShipOrder { order: u32 }
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct Fulfilment { placed: bool, paid: bool }
//!
//! impl Saga for Fulfilment {
//!     const NAME: &'static str = "docs.Fulfilment";
//! }
//!
//! impl Fulfilment {
//!     async fn ship_when_ready(&self, order: u32, ctx: &SagaContext) -> Result<(), HandlerError> {
//!         if self.placed && self.paid {
//!             ctx.send(ShipOrder { order }).await?;
//!             ctx.complete();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! #[bus_core::saga(endpoint = "docs-saga-fulfilment")]
//! impl SagaHandles<OrderPlaced> for Fulfilment {
//!     const STARTS: bool = true;
//!     fn correlate(message: &OrderPlaced) -> String {
//!         message.order.to_string()
//!     }
//!     async fn handle(&mut self, message: OrderPlaced, ctx: &SagaContext) -> Result<(), HandlerError> {
//!         self.placed = true;
//!         self.ship_when_ready(message.order, ctx).await
//!     }
//! }
//!
//! #[bus_core::saga(endpoint = "docs-saga-fulfilment")]
//! impl SagaHandles<PaymentReceived> for Fulfilment {
//!     const STARTS: bool = true;
//!     fn correlate(message: &PaymentReceived) -> String {
//!         message.order.to_string()
//!     }
//!     async fn handle(&mut self, message: PaymentReceived, ctx: &SagaContext) -> Result<(), HandlerError> {
//!         self.paid = true;
//!         self.ship_when_ready(message.order, ctx).await
//!     }
//! }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::MessageContext;
use crate::error::HandlerError;
use crate::handler::{HandlerDescriptor, MessageInfo};
use crate::message::Message;

/// The state of a saga: what the process remembers between messages, serialized (JSON) into
/// the storage. A new instance starts from `Default`.
pub trait Saga: Serialize + DeserializeOwned + Default + Send + Sync + 'static {
    /// The saga's stable name: instances are stored under it, so renaming the Rust type
    /// changes nothing.
    const NAME: &'static str;
}

/// How a saga handles message `M`. Implement it once per message, with `#[bus_core::saga]`
/// on the `impl` to register it as a handler (or [`crate::BusBuilder::saga`]).
#[async_trait]
pub trait SagaHandles<M: Message>: Saga {
    /// Whether `M` starts a new instance when none is stored for it. A message that does not
    /// start one, and finds none (the saga completed, or never started), is dropped with a
    /// log line.
    const STARTS: bool;

    /// The instance `message` belongs to: a property of the message that every message of
    /// one process carries (an order id).
    fn correlate(message: &M) -> String;

    /// Handle `message`: change the state, send, publish, schedule through `ctx`, and
    /// [`complete`](SagaContext::complete) when the process is over.
    async fn handle(&mut self, message: M, ctx: &SagaContext) -> Result<(), HandlerError>;
}

/// The context of a saga's handler: the handled message's [`MessageContext`] (it derefs to
/// it: `send`, `publish`, `send_with` for timeouts), the instance's id, and completion.
pub struct SagaContext {
    ctx: MessageContext,
    id: String,
    completed: AtomicBool,
}

impl SagaContext {
    /// The instance's id, as [`SagaHandles::correlate`] found it.
    pub fn saga_id(&self) -> &str {
        &self.id
    }

    /// The process is over: the instance's state is removed when the handler succeeds, and
    /// later messages for it find none.
    pub fn complete(&self) {
        self.completed.store(true, Ordering::Relaxed);
    }

    /// Whether [`SagaContext::complete`] was called.
    pub fn is_completed(&self) -> bool {
        self.completed.load(Ordering::Relaxed)
    }
}

impl std::ops::Deref for SagaContext {
    type Target = MessageContext;

    fn deref(&self) -> &MessageContext {
        &self.ctx
    }
}

impl std::fmt::Debug for SagaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaContext")
            .field("id", &self.id)
            .field("completed", &self.is_completed())
            .finish()
    }
}

/// Handle `message` with its instance of saga `S`: load (or start), run, save (or remove),
/// all in the attempt's unit of work.
pub(crate) async fn handle<S, M>(message: M, ctx: MessageContext) -> Result<(), HandlerError>
where
    S: SagaHandles<M>,
    M: Message,
{
    let id = S::correlate(&message);
    let loaded = {
        let mut session = ctx.session().await?;
        session.session().load_saga(S::NAME, &id).await?
    };
    let (mut state, read) = match loaded {
        Some(record) => {
            let state: S = serde_json::from_slice(&record.state).map_err(|e| {
                HandlerError::unrecoverable(format!(
                    "the stored state of saga `{}` instance `{id}` does not read as `{}`: {e}",
                    S::NAME,
                    std::any::type_name::<S>()
                ))
            })?;
            (state, Some(record.version))
        }
        None if S::STARTS => (S::default(), None),
        None => {
            tracing::info!(
                saga = S::NAME,
                saga_id = %id,
                message_type = M::NAME,
                message_id = ctx.message_id(),
                "no instance of the saga for this message (completed, or never started); the message is dropped"
            );
            return Ok(());
        }
    };
    let saga_ctx = SagaContext {
        ctx: ctx.clone(),
        id,
        completed: AtomicBool::new(false),
    };
    state.handle(message, &saga_ctx).await?;
    let mut session = ctx.session().await?;
    let session = session.session();
    match (saga_ctx.is_completed(), read) {
        (true, Some(version)) => {
            session
                .complete_saga(S::NAME, &saga_ctx.id, version)
                .await?
        }
        // Started and finished by one message: nothing was stored.
        (true, None) => {}
        (false, read) => {
            let state = serde_json::to_vec(&state).map_err(|e| {
                HandlerError::unrecoverable(format!(
                    "the state of saga `{}` does not serialize: {e}",
                    S::NAME
                ))
            })?;
            session
                .save_saga(S::NAME, &saga_ctx.id, state, read)
                .await?;
        }
    }
    Ok(())
}

/// The handler descriptor of saga `S` for message `M`.
pub(crate) fn descriptor<S, M>(
    name: &'static str,
    endpoint: Option<std::borrow::Cow<'static, str>>,
) -> HandlerDescriptor
where
    S: SagaHandles<M>,
    M: Message,
{
    let mut descriptor = HandlerDescriptor::new::<M, _, _>(
        name,
        endpoint,
        MessageInfo::of::<M>(),
        Vec::new(),
        |message: M, ctx: MessageContext| handle::<S, M>(message, ctx),
    );
    descriptor.needs_storage = true;
    descriptor
}

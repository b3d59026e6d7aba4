//! Handlers: plain async functions turned into type-erased, registrable values.
//!
//! `#[handler]` expands a function into a [`HandlerRegistration`] submitted to `inventory`, so
//! [`crate::BusBuilder`] finds every handler linked into the binary. Explicit registration
//! ([`crate::BusBuilder::handler`]) goes through the [`Handler`] trait, implemented for async
//! functions of every supported arity in the style of axum, and yields the same
//! [`HandlerDescriptor`].

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::codec::{self, Codec};
use crate::context::MessageContext;
use crate::envelope::Body;
use crate::error::{CodecError, HandlerError};
use crate::extract::FromContext;
use crate::message::{Message, MessageKind};
use crate::state::StateRequirement;

/// A boxed, sendable future, as handlers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What is known about a message type without a value of it.
#[derive(Clone, Copy, Debug)]
pub struct MessageInfo {
    /// Wire name.
    pub name: &'static str,
    /// Command or event.
    pub kind: MessageKind,
    /// The owning endpoint a command declares.
    pub endpoint: Option<&'static str>,
    /// The Rust type's name, for error messages.
    pub rust_type: fn() -> &'static str,
    /// The Rust type's id.
    pub type_id: fn() -> TypeId,
}

impl MessageInfo {
    /// Info for a message type.
    pub const fn of<M: Message>() -> Self {
        MessageInfo {
            name: M::NAME,
            kind: M::KIND,
            endpoint: M::ENDPOINT,
            rust_type: std::any::type_name::<M>,
            type_id: TypeId::of::<M>,
        }
    }
}

/// A body decoded for a handler.
pub(crate) enum Decoded {
    /// The value, decoded from bytes.
    Value(Box<dyn Any + Send>),
    /// A typed in-process body, checked to be the handler's type: the call clones it from the
    /// body itself, so it is not boxed on the way.
    InBody,
}

/// Decodes a body for the handler; the flag says the codec is the built-in JSON one.
type DecodeFn = fn(&Body, &dyn Codec, bool) -> Result<Decoded, CodecError>;
type InvokeFn =
    dyn Fn(Decoded, &Body, MessageContext) -> BoxFuture<Result<(), HandlerError>> + Send + Sync;

/// A handler ready to be hosted by an endpoint.
#[derive(Clone)]
pub struct HandlerDescriptor {
    pub(crate) name: Cow<'static, str>,
    pub(crate) endpoint: Option<Cow<'static, str>>,
    pub(crate) message: MessageInfo,
    pub(crate) requires: Vec<StateRequirement>,
    /// A saga's handler: its endpoint needs storage for the saga's state.
    pub(crate) needs_storage: bool,
    decode: DecodeFn,
    invoke: Arc<InvokeFn>,
}

impl std::fmt::Debug for HandlerDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerDescriptor")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("message", &self.message.name)
            .finish()
    }
}

impl HandlerDescriptor {
    /// Build a descriptor from a function taking the message and its context.
    pub fn new<M, F, Fut>(
        name: impl Into<Cow<'static, str>>,
        endpoint: Option<Cow<'static, str>>,
        message: MessageInfo,
        requires: Vec<StateRequirement>,
        f: F,
    ) -> Self
    where
        M: Message,
        F: Fn(M, MessageContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        HandlerDescriptor {
            name: name.into(),
            endpoint,
            message,
            requires,
            needs_storage: false,
            decode: decode_body::<M>,
            invoke: Arc::new(move |msg, body, ctx| {
                let msg = match (msg, body) {
                    (Decoded::Value(value), _) => value.downcast::<M>().ok().map(|m| *m),
                    (Decoded::InBody, Body::Message(m)) => m.downcast_ref::<M>().cloned(),
                    (Decoded::InBody, Body::Bytes(_)) => None,
                };
                match msg {
                    Some(msg) => Box::pin(f(msg, ctx)),
                    None => Box::pin(async {
                        Err(HandlerError::unrecoverable(
                            "internal: decoded value of the wrong type",
                        ))
                    }),
                }
            }),
        }
    }

    /// The handler's name (its function path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The message it handles.
    pub fn message(&self) -> &MessageInfo {
        &self.message
    }

    /// The endpoint it was declared for, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Put the handler in an endpoint.
    pub fn in_endpoint(mut self, endpoint: impl Into<Cow<'static, str>>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Decode a body for this handler; `builtin_json` says `codec` is the built-in JSON codec,
    /// which is then called typed.
    pub(crate) fn decode(
        &self,
        body: &Body,
        codec: &dyn Codec,
        builtin_json: bool,
    ) -> Result<Decoded, CodecError> {
        (self.decode)(body, codec, builtin_json)
    }

    /// Call the handler with what [`HandlerDescriptor::decode`] made of `body`.
    pub(crate) fn invoke(
        &self,
        msg: Decoded,
        body: &Body,
        ctx: MessageContext,
    ) -> BoxFuture<Result<(), HandlerError>> {
        (self.invoke)(msg, body, ctx)
    }
}

fn decode_body<M: Message>(
    body: &Body,
    codec: &dyn Codec,
    builtin_json: bool,
) -> Result<Decoded, CodecError> {
    match body {
        Body::Message(m) => match m.downcast_ref::<M>() {
            Some(_) => Ok(Decoded::InBody),
            None => Err(CodecError::Decode(format!(
                "in-process body is a `{}`, not a `{}`",
                m.message_name(),
                M::NAME
            ))),
        },
        Body::Bytes(bytes) if builtin_json => {
            Ok(Decoded::Value(Box::new(codec::decode_json::<M>(bytes)?)))
        }
        Body::Bytes(bytes) => Ok(Decoded::Value(Box::new(codec::decode::<M>(codec, bytes)?))),
    }
}

/// What `#[handler]` submits to `inventory`: a function building the descriptor.
pub struct HandlerRegistration {
    /// Builds the descriptor.
    pub factory: fn() -> HandlerDescriptor,
}

inventory::collect!(HandlerRegistration);

/// Every message type derived in the binary, for build-time checks.
pub struct MessageRegistration {
    /// Its info.
    pub info: MessageInfo,
}

inventory::collect!(MessageRegistration);

/// Converts what a handler returns into the bus's result. Implemented for `Result<(), E>`
/// where `E` converts into [`HandlerError`].
#[diagnostic::on_unimplemented(
    message = "a handler must return `Result<(), E>` where `E` converts into `HandlerError`",
    label = "this return type is not supported",
    note = "`HandlerError`, `anyhow::Error`, `Box<dyn Error + Send + Sync>`, `String` and any `std::error::Error + Send + Sync + 'static` work as `E`"
)]
pub trait IntoHandlerResult {
    /// Convert.
    fn into_handler_result(self) -> Result<(), HandlerError>;
}

impl<E: Into<HandlerError>> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        self.map_err(Into::into)
    }
}

/// An async function usable as a handler: its first argument is the message, the others are
/// extractors ([`FromContext`]), and it returns `Result<(), E>`.
///
/// ```
/// use bus_core::{Bus, Event, HandlerError, MessageContext};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, Clone, Debug)]
/// #[event(name = "docs.Ticked")]
/// struct Ticked;
///
/// async fn on_tick(_: Ticked, ctx: MessageContext) -> Result<(), HandlerError> {
///     println!("tick {}", ctx.message_id());
///     Ok(())
/// }
///
/// let builder = Bus::builder().handler("clock", on_tick);
/// # drop(builder);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid bus handler",
    label = "not a handler",
    note = "a handler is an `async fn(message, extractors...) -> Result<(), E>`: the first argument is a `#[derive(Command)]` or `#[derive(Event)]` type, the others implement `FromContext` (e.g. `MessageContext`, `State<T>`, `Headers`)"
)]
pub trait Handler<M, Args>: Send + Sync + 'static {
    /// Turn the function into a descriptor.
    fn into_descriptor(self) -> HandlerDescriptor;
}

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        #[allow(non_snake_case, unused_variables, unused_mut)]
        impl<M, F, Fut, E, $($arg,)*> Handler<M, ($($arg,)*)> for F
        where
            M: Message,
            F: Fn(M, $($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<(), E>> + Send + 'static,
            E: Into<HandlerError> + 'static,
            $($arg: FromContext + Send + 'static,)*
        {
            fn into_descriptor(self) -> HandlerDescriptor {
                let mut requires = Vec::new();
                $( requires.extend(<$arg as FromContext>::requires()); )*
                HandlerDescriptor::new::<M, _, _>(
                    std::any::type_name::<F>(),
                    None,
                    MessageInfo::of::<M>(),
                    requires,
                    move |msg: M, ctx: MessageContext| {
                        let f = self.clone();
                        async move {
                            $( let $arg = <$arg as FromContext>::from_context(&ctx)?; )*
                            f(msg, $($arg),*).await.map_err(Into::into)
                        }
                    },
                )
            }
        }
    };
}

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);
impl_handler!(A1, A2, A3, A4, A5, A6);

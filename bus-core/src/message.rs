//! Message types: the traits the derive macros implement, and the type-erased form typetag decodes.
//!
//! A message has a *wire name*: a stable, language-neutral string that travels in the envelope's
//! message-type header and decides routing. It is never Rust's `type_name`, so renaming or moving
//! a Rust type does not break a running system.

use std::any::Any;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Whether a message is a command (point-to-point) or an event (pub/sub).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Sent to exactly one logical endpoint; handled by exactly one handler instance.
    Command,
    /// Published to every endpoint that subscribes; each endpoint gets its own copy.
    Event,
}

impl MessageKind {
    /// The lowercase name used in logs and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Command => "command",
            MessageKind::Event => "event",
        }
    }
}

/// A message the bus can carry. Implemented by `#[derive(Command)]` and `#[derive(Event)]`;
/// do not implement it by hand (the derive also registers the type for dynamic decoding).
///
/// Messages are plain data: `Clone` lets the in-memory transport hand one value to several
/// subscribers and to retries without a serialization round trip.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a bus message",
    label = "not a message type",
    note = "derive it with `#[derive(Command)]` or `#[derive(Event)]` (plus `Serialize, Deserialize, Clone, Debug`)"
)]
pub trait Message:
    AnyMessage + Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static
{
    /// The stable wire name, e.g. `"sales.PlaceOrder"`.
    const NAME: &'static str;
    /// Command or event.
    const KIND: MessageKind;
    /// For a command, the endpoint that owns (handles) it, when the type declares one; always
    /// `None` for events. Routes set on the bus builder take precedence.
    const ENDPOINT: Option<&'static str>;
}

/// A command: sent (never published) to the one endpoint that owns it.
///
/// ```
/// use bus_core::Command;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Command, Serialize, Deserialize, Clone, Debug)]
/// #[command(name = "sales.PlaceOrder", endpoint = "sales")]
/// struct PlaceOrder { order_id: u32 }
///
/// assert_eq!(<PlaceOrder as bus_core::Message>::NAME, "sales.PlaceOrder");
/// assert_eq!(<PlaceOrder as bus_core::Message>::ENDPOINT, Some("sales"));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "only commands can be sent; events are published",
    note = "derive it with `#[derive(Command)]`, or call `publish` if `{Self}` is an event"
)]
pub trait Command: Message {}

/// An event: published (never sent); every subscribing endpoint gets a copy.
///
/// ```
/// use bus_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, Clone, Debug)]
/// #[event(name = "sales.OrderPlaced")]
/// struct OrderPlaced { order_id: u32 }
///
/// assert_eq!(<OrderPlaced as bus_core::Message>::NAME, "sales.OrderPlaced");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "only events can be published; commands are sent",
    note = "derive it with `#[derive(Event)]`, or call `send` if `{Self}` is a command"
)]
pub trait Event: Message {}

/// A command that expects an answer: sent with [`crate::Bus::request`], its handler returns
/// a [`Request::Response`] (or answers with [`crate::MessageContext::reply`]), and the answer
/// travels back to the caller on its bus instance's own reply address. Declared in the
/// derive with `response`:
///
/// ```
/// use bus_core::Command;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
/// struct Quote { cents: u64 }
///
/// #[derive(Command, Serialize, Deserialize, Clone, Debug)]
/// #[command(name = "pricing.GetQuote", endpoint = "pricing", response = Quote)]
/// struct GetQuote { sku: String }
///
/// fn answer_type<R: bus_core::Request<Response = Quote>>() {}
/// answer_type::<GetQuote>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a request: it declares no response type",
    label = "only a command with a response can be requested",
    note = "declare its response in the derive: `#[command(name = \"...\", response = MyReply)]`; or `send` it if no answer is expected"
)]
pub trait Request: Command {
    /// What the handler answers with: any serializable type.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// Object-safe view of any message, implemented for every [`Message`].
pub trait DynMessage: Debug + Send + Sync + 'static {
    /// The wire name.
    fn message_name(&self) -> &'static str;
    /// Command or event.
    fn message_kind(&self) -> MessageKind;
    /// For downcasting to the concrete type.
    fn as_any(&self) -> &dyn Any;
    /// The message itself as a serializable value (no type tag around it).
    fn as_serialize(&self) -> &dyn erased_serde::Serialize;
    /// A boxed copy.
    fn clone_message(&self) -> Box<dyn AnyMessage>;
}

impl<T: Message> DynMessage for T {
    fn message_name(&self) -> &'static str {
        T::NAME
    }
    fn message_kind(&self) -> MessageKind {
        T::KIND
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_serialize(&self) -> &dyn erased_serde::Serialize {
        self
    }
    fn clone_message(&self) -> Box<dyn AnyMessage> {
        Box::new(self.clone())
    }
}

/// A message whose type is known only at run time: what [`crate::decode_any`] returns.
///
/// Every derived message is registered with typetag under its wire name, so a
/// `Box<dyn AnyMessage>` can be decoded from (wire name, bytes), printed with `{:?}`, downcast
/// to its concrete type, and sent or published again with [`crate::Bus::dispatch_any`].
#[typetag::serde]
pub trait AnyMessage: DynMessage {}

impl dyn AnyMessage {
    /// Downcast to a concrete message type.
    pub fn downcast_ref<T: Message>(&self) -> Option<&T> {
        self.as_any().downcast_ref::<T>()
    }
}

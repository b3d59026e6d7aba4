//! # bus-core: a typed service bus for Rust
//!
//! Declare messages with `#[derive(Command)]` / `#[derive(Event)]`, write handlers as plain
//! async functions with `#[handler]`, and let a [`Bus`] route **commands point-to-point** (one
//! handler instance per command; instances of an endpoint compete for its queue) and **events
//! pub/sub** (every subscribing endpoint gets its own copy) over a pluggable [`Transport`].
//!
//! ```
//! use bus_core::{Bus, Command, Event, HandlerError, MessageContext};
//! use bus_transport_memory::MemoryTransport;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Command, Serialize, Deserialize, Clone, Debug)]
//! #[command(name = "intro.PlaceOrder", endpoint = "intro-sales")]
//! struct PlaceOrder { id: u32 }
//!
//! #[derive(Event, Serialize, Deserialize, Clone, Debug)]
//! #[event(name = "intro.OrderPlaced")]
//! struct OrderPlaced { id: u32 }
//!
//! #[bus_core::handler]
//! async fn place(cmd: PlaceOrder, ctx: MessageContext) -> Result<(), HandlerError> {
//!     ctx.publish(OrderPlaced { id: cmd.id }).await?; // released once this handler succeeds
//!     Ok(())
//! }
//!
//! #[bus_core::handler(endpoint = "intro-billing")]
//! async fn bill(evt: OrderPlaced) -> Result<(), HandlerError> {
//!     println!("billing order {}", evt.id);
//!     Ok(())
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let bus = Bus::builder()
//!     .transport(MemoryTransport::new())
//!     .host(["intro-sales", "intro-billing"])
//!     .start()
//!     .await?;
//! bus.send(PlaceOrder { id: 1 }).await?;
//! bus.shutdown().await;
//! # Ok::<(), bus_core::BusError>(())
//! # }).unwrap();
//! ```
//!
//! ## Where things live
//! From the bottom up (nothing imports a module above it; `docs/architecture.md` has the
//! whole picture):
//! - Vocabulary: [`message`](crate::Message) ([`Message`], [`Command`], [`Event`],
//!   [`AnyMessage`]), `envelope` ([`Headers`], [`Envelope`], [`Body`], the [`header`] names),
//!   `codec` ([`Codec`], [`JsonCodec`]), `codecs_extra` (`MessagePackCodec`, `CborCodec`:
//!   features `msgpack`, `cbor`), `error`, `failure` ([`Failure`], [`FailureReason`]),
//!   `state`, `transport` (the [`Transport`] contract every transport implements), `failed`
//!   ([`FailedMessage`]: an error-queue entry read back), [`probe`] (which protocol a server
//!   speaks, for clear connection errors), [`telemetry`] (the spans, trace context and metrics
//!   of what the bus sends and handles).
//! - `runtime`: what a running bus shares (transport, routes, codecs, state, counters,
//!   telemetry).
//! - `outgoing`: [`SendOptions`], the headers and ids of a new message.
//! - [`cloudevents`]: CloudEvents 1.0 read on every endpoint and, where configured
//!   ([`CloudEvents`]), written on what the bus sends.
//! - [`masstransit`]: MassTransit's JSON envelope read on every endpoint and, per type, written.
//! - [`nservicebus`]: NServiceBus headers read on every endpoint and, per type, written.
//! - `request`: request/response ([`RequestOptions`]): the instance's reply address, the
//!   callers waiting on it, replies and failure replies.
//! - `schedule`: handing scheduled messages that fell due on a broker to their destination.
//! - `context`, `extract`, `handler`: [`MessageContext`], extractors ([`State`]), handlers.
//! - `storage`, `memory_storage`: units of work ([`Storage`], [`Session`]: outbox, inbox
//!   and saga state in one transaction), and [`MemoryStorage`].
//! - `layer`, `recoverability`, `inbox`, `endpoint`: [`Layer`], [`RecoverabilityPolicy`],
//!   [`Inbox`], [`EndpointConfig`].
//! - `saga`: [`Saga`], [`SagaHandles`], [`SagaContext`]: long-running processes whose state
//!   lives in the storage; `unit_of_work`: [`UnitOfWork`], a unit of work outside handlers.
//! - `pipeline`: one delivery through checks, layers, handlers, the policy, settlement.
//! - `worker`: the receive loop of an endpoint.
//! - `bus` and `builder`: the [`Bus`] facade and the [`BusBuilder`]; `signal`: [`stop_signal`].
//! - [`asyncapi`]: an AsyncAPI 3.0 document of the linked message types and handlers.
//! - `bridge`: [`Bridge`], forwarding chosen commands and events from one transport to another.

extern crate self as bus_core;

pub mod asyncapi;
mod bridge;
mod builder;
mod bus;
pub mod cloudevents;
mod codec;
#[cfg(any(feature = "msgpack", feature = "cbor"))]
mod codecs_extra;
mod context;
mod endpoint;
mod envelope;
mod error;
mod extract;
mod failed;
mod failure;
mod handler;
mod inbox;
mod layer;
pub mod masstransit;
mod memory_storage;
mod message;
pub mod nservicebus;
mod outgoing;
mod pipeline;
pub mod probe;
mod recoverability;
mod redact;
mod request;
mod runtime;
mod saga;
mod schedule;
mod signal;
mod state;
mod storage;
pub mod telemetry;
mod transport;
mod unit_of_work;
mod worker;

pub use bridge::{Bridge, BridgeError, BridgeStats};
pub use builder::BusBuilder;
pub use bus::{Bus, BusStats, Health, ShutdownReport};
pub use cloudevents::{CloudEvents, CloudEventsMode};
pub use codec::{
    decode, decode_any, decode_envelope, decode_envelope_as, encode, Codec, Codecs, JsonCodec, JSON,
};
#[cfg(feature = "cbor")]
pub use codecs_extra::{CborCodec, CBOR};
#[cfg(feature = "msgpack")]
pub use codecs_extra::{MessagePackCodec, MSGPACK};
pub use context::{MessageContext, SessionGuard, TestContextBuilder};
pub use endpoint::EndpointConfig;
pub use envelope::{header, Body, Envelope, Headers, MessageId};
pub use error::{BusError, CodecError, HandlerError, StorageError, TransportError, Unrecoverable};
pub use extract::{FromContext, State};
pub use failed::FailedMessage;
pub use failure::{Failure, FailureReason};
pub use handler::{
    BoxFuture, Handler, HandlerDescriptor, HandlerRegistration, IntoHandlerResult, MessageInfo,
    MessageRegistration,
};
#[cfg(feature = "postgres")]
pub use inbox::postgres;
pub use inbox::{Inbox, MemoryInbox};
pub use layer::{Layer, LayerFuture, Next, Run};
pub use masstransit::MassTransit;
pub use memory_storage::MemoryStorage;
pub use message::{AnyMessage, Command, DynMessage, Event, Message, MessageKind, Request};
pub use nservicebus::NServiceBus;
pub use outgoing::SendOptions;
pub use recoverability::{Attempts, Decision, Recoverability, RecoverabilityPolicy};
pub use redact::{redact_url, scrub_urls};
pub use request::{RequestOptions, DEFAULT_REQUEST_TIMEOUT};
pub use saga::{Saga, SagaContext, SagaHandles};
pub use signal::{stop_signal, StopSignal};
pub use state::StateRequirement;
pub use storage::{SagaRecord, Session, Storage};
pub use transport::{
    Acker, Declared, Delivery, Destination, EndpointInfo, EndpointTopology, Outgoing, QueueKind,
    ReplyChannel, SharedAcker, SubscribeOptions, Subscription, Topology, Transport,
    TransportLimits,
};
pub use unit_of_work::UnitOfWork;

/// Derive macros and the handler attribute.
pub use bus_macros::{handler, saga, Command, Event};

/// Re-exported so transports and tests need not add it themselves.
pub use async_trait::async_trait;
/// Re-exported for transports.
pub use bytes::Bytes;

/// What the macros' generated code uses. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use typetag;

    pub use crate::asyncapi::{HasSchema, NoSchema, SchemaProbe, SchemaRegistration};
    pub use crate::handler::{
        HandlerDescriptor, HandlerRegistration, MessageInfo, MessageRegistration,
    };
    pub use crate::{FromContext, HandlerError, IntoHandlerResult, MessageContext};
    pub use std::borrow::Cow;
    pub use std::option::Option::{self, None, Some};
    pub use std::result::Result::{Err, Ok};
    pub use std::vec::Vec;

    /// An extractor's functions, checked once against `FromContext` (at the user's type).
    pub struct Extractor<T> {
        /// Builds the value.
        pub extract: fn(&MessageContext) -> Result<T, HandlerError>,
        /// State it needs.
        pub requires: fn() -> Option<crate::StateRequirement>,
    }

    impl<T> Clone for Extractor<T> {
        fn clone(&self) -> Self {
            *self
        }
    }

    impl<T> Copy for Extractor<T> {}

    /// The extractor functions of `T`.
    #[inline]
    pub fn extractor<T: FromContext>() -> Extractor<T> {
        Extractor {
            extract: T::from_context,
            requires: T::requires,
        }
    }

    /// Converts a handler's return value; the span points at the user's return type.
    #[inline]
    pub fn into_result<R: IntoHandlerResult>(r: R) -> Result<(), HandlerError> {
        r.into_handler_result()
    }

    /// The descriptor of saga `S`'s handler of `M`, as `#[saga]` registers it.
    pub fn saga_descriptor<S, M>(
        name: &'static str,
        endpoint: Option<Cow<'static, str>>,
    ) -> HandlerDescriptor
    where
        S: crate::SagaHandles<M>,
        M: crate::Message,
    {
        crate::saga::descriptor::<S, M>(name, endpoint)
    }

    /// Converts the return value of a request's handler: its answer is the reply, held back
    /// with what else the handler sent until it succeeded. The types say that `M` is a request
    /// and that the handler answers with its response type.
    #[inline]
    pub fn into_reply<M, E>(
        ctx: &MessageContext,
        r: Result<<M as crate::Request>::Response, E>,
    ) -> Result<(), HandlerError>
    where
        M: crate::Request,
        E: Into<HandlerError>,
    {
        let response = r.map_err(Into::into)?;
        ctx.stage_reply(&response).map_err(HandlerError::from)
    }

    /// The descriptor of a `#[handler]` function; `M: Message` is checked here, once.
    pub fn descriptor<M, F, Fut>(
        name: &'static str,
        endpoint: Option<Cow<'static, str>>,
        requires: Vec<Option<crate::StateRequirement>>,
        f: F,
    ) -> HandlerDescriptor
    where
        M: crate::Message,
        F: Fn(M, MessageContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        HandlerDescriptor::new::<M, F, Fut>(
            name,
            endpoint,
            MessageInfo::of::<M>(),
            requires.into_iter().flatten().collect(),
            f,
        )
    }
}

/// The README's code blocks, compiled and run as doctests so the quick start never rots.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The architecture page's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/architecture.md")]
pub struct ArchitectureDoctests;

/// The code blocks of the page on requests and scheduled messages, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/scheduling.md")]
pub struct SchedulingDoctests;

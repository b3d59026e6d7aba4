//! Procedural macros for `bus-core`: `#[derive(Command)]`, `#[derive(Event)]` and `#[handler]`.
//!
//! Use them through `bus-core`, which re-exports them. The generated code names only
//! `::bus_core::__private::...`, so users never depend on `inventory` or `typetag` themselves.
//! Each macro is split into parse / validate / expand; errors are spanned at the user's tokens,
//! and on error the original item is still emitted so one mistake gives one message.

use proc_macro::TokenStream;

mod endpoint;
mod handler;
mod message;
mod saga;

/// Derive a command: a message sent point-to-point to the one endpoint that owns it.
///
/// `#[command(name = "...", endpoint = "...")]`, both optional:
/// - `name`: the stable wire name. Defaults to the type's identifier (e.g. `PlaceOrder`); set
///   it explicitly so renaming the Rust type never changes what travels on the wire.
/// - `endpoint`: the owning endpoint, where the command is routed and handled: a string
///   literal, or a `&'static str` constant (`endpoint = names::BILLING`).
///
/// The type must also derive `Serialize`, `Deserialize`, `Clone` and `Debug`.
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    message::derive(input.into(), message::Kind::Command).into()
}

/// Derive an event: a message published to every endpoint that subscribes.
///
/// `#[event(name = "...")]`: the stable wire name; defaults to the type's identifier.
///
/// The type must also derive `Serialize`, `Deserialize`, `Clone` and `Debug`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    message::derive(input.into(), message::Kind::Event).into()
}

/// Register an async function as a message handler.
///
/// ```ignore
/// #[handler(endpoint = "billing")]
/// async fn on_order_placed(evt: OrderPlaced, ctx: MessageContext, State(db): State<Db>) -> Result<(), HandlerError> { ... }
/// ```
///
/// The first argument is the message; the others are extractors. `endpoint` (a string literal
/// or a `&'static str` constant) is optional: by
/// default a command's handler goes to the command's owning endpoint, others to the bus's
/// default endpoint. The function stays callable as written.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(attr.into(), item.into()).into()
}

/// Register a saga's handler of one message: goes on `impl SagaHandles<M> for S` (which it
/// makes an `async_trait` impl, so `handle` is written as a plain `async fn`).
///
/// ```ignore
/// #[bus_core::saga(endpoint = "fulfilment")]
/// impl SagaHandles<OrderPlaced> for Fulfilment {
///     const STARTS: bool = true;
///     fn correlate(m: &OrderPlaced) -> String { m.order_id.to_string() }
///     async fn handle(&mut self, m: OrderPlaced, ctx: &SagaContext) -> Result<(), HandlerError> { ... }
/// }
/// ```
///
/// `endpoint` (a string literal or a `&'static str` constant) is where the saga runs; by
/// default a command goes to its owning endpoint. The endpoint needs storage
/// (`BusBuilder::storage`).
#[proc_macro_attribute]
pub fn saga(attr: TokenStream, item: TokenStream) -> TokenStream {
    saga::expand(attr.into(), item.into()).into()
}

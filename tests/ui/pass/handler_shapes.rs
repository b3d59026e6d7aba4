// Every handler shape `#[handler]` accepts must compile.
use bus_core::{Command, Event, HandlerError, Headers, MessageContext, State};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "ui.OrderPlaced")]
struct OrderPlaced {
    id: u32,
}

#[derive(Clone, Default)]
struct Db;

// No extractors.
#[bus_core::handler]
async fn zero(_cmd: PlaceOrder) -> Result<(), HandlerError> {
    Ok(())
}

// One extractor.
#[bus_core::handler]
async fn one(cmd: PlaceOrder, ctx: MessageContext) -> Result<(), HandlerError> {
    ctx.publish(OrderPlaced { id: cmd.id }).await?;
    Ok(())
}

// Three extractors, one of them destructured; an explicit endpoint.
#[bus_core::handler(endpoint = "x")]
async fn three(
    _evt: OrderPlaced,
    _ctx: MessageContext,
    State(_db): State<Db>,
    _headers: Headers,
) -> Result<(), HandlerError> {
    Ok(())
}

// The imported attribute, and any `std::error::Error` as the error type.
use bus_core::handler;

#[handler(endpoint = "ui-io")]
async fn io_error(_evt: OrderPlaced) -> Result<(), std::io::Error> {
    Ok(())
}

// A handler written by a `macro_rules!` macro (its tokens carry that macro's hygiene).
macro_rules! handler_for {
    ($name:ident, $msg:ty) => {
        #[bus_core::handler]
        async fn $name(_msg: $msg, _ctx: MessageContext) -> Result<(), HandlerError> {
            Ok(())
        }
    };
}

handler_for!(from_macro, OrderPlaced);

// Endpoint names from constants, for the command and for a handler.
mod names {
    pub const SHIPPING: &str = "ui-shipping";
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.Ship", endpoint = names::SHIPPING)]
struct Ship;

#[handler]
async fn ship(_cmd: Ship) -> Result<(), HandlerError> {
    Ok(())
}

#[handler(endpoint = names::SHIPPING)]
async fn shipped_too(_evt: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

// The error types services commonly use.
#[handler(endpoint = "ui-errors")]
async fn anyhow_error(_evt: OrderPlaced) -> anyhow::Result<()> {
    Ok(())
}

#[handler(endpoint = "ui-errors")]
async fn boxed_error(_evt: OrderPlaced) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

#[handler(endpoint = "ui-errors")]
async fn string_error(_evt: OrderPlaced) -> Result<(), String> {
    Ok(())
}

// A request's handler answers with its response type, whatever its error type.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Quote {
    cents: u64,
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.GetQuote", endpoint = "ui-pricing", response = Quote)]
struct GetQuote {
    sku: String,
}

#[handler]
async fn quote(query: GetQuote, _ctx: MessageContext) -> Result<Quote, HandlerError> {
    Ok(Quote {
        cents: query.sku.len() as u64,
    })
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.GetQuoteToo", endpoint = "ui-pricing", response = Quote)]
struct GetQuoteToo {
    sku: String,
}

#[handler]
async fn quote_anyhow(query: GetQuoteToo) -> anyhow::Result<Quote> {
    Ok(Quote {
        cents: query.sku.len() as u64,
    })
}

fn main() {
    // The functions stay callable as written.
    let _ = zero(PlaceOrder { id: 1 });
    let _ = io_error(OrderPlaced { id: 1 });
}

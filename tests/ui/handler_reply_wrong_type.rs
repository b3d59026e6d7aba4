use bus_core::{Command, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Quote {
    cents: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Receipt {
    id: u32,
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.GetQuote", endpoint = "ui-pricing", response = Quote)]
struct GetQuote {
    sku: String,
}

#[bus_core::handler]
async fn quote(_query: GetQuote) -> Result<Receipt, HandlerError> {
    Ok(Receipt { id: 1 })
}

fn main() {}

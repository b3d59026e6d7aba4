use bus_core::{Command, HandlerError, MessageContext};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

struct Sales;

impl Sales {
    #[bus_core::handler]
    async fn place(&self, _cmd: PlaceOrder, _ctx: MessageContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}

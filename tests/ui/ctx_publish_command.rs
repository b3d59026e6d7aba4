use bus_core::{Command, HandlerError, MessageContext};
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
struct PlaceOrder {
    id: u32,
}

#[bus_core::handler]
async fn place(cmd: PlaceOrder, ctx: MessageContext) -> Result<(), HandlerError> {
    ctx.publish(PlaceOrder { id: cmd.id + 1 }).await?;
    Ok(())
}

fn main() {}

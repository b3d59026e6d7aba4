use bus_core::{HandlerError, MessageContext};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct NotAMessage {
    id: u32,
}

#[bus_core::handler]
async fn place(_cmd: NotAMessage, _ctx: MessageContext) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}

use bus_core::{HandlerError, MessageContext};

#[bus_core::handler]
async fn place(_cmd: u32, _ctx: MessageContext) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}

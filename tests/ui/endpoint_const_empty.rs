use bus_core::{Command, HandlerError};
use serde::{Deserialize, Serialize};

const NOWHERE: &str = "";

// An endpoint name from a constant is checked like a literal: it must not be empty.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.Lost", endpoint = NOWHERE)]
struct Lost;

#[bus_core::handler]
async fn lost(_cmd: Lost) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}

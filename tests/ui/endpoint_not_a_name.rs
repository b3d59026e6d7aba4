use bus_core::Command;
use serde::{Deserialize, Serialize};

// An endpoint is a string literal or a constant, nothing else.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.Lost", endpoint = 42)]
struct Lost;

fn main() {}

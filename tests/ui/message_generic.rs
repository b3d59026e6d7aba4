use bus_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.Wrap", endpoint = "ui-sales")]
struct Wrap<T> {
    inner: T,
}

fn main() {}

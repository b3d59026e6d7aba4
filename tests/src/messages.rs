//! Messages shared by the tests and the worker process they start.

use bus_core::{Command, Event};
use serde::{Deserialize, Serialize};

/// A unit of work for the worker process.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "tests.Work")]
pub struct Work {
    /// Identifies the unit.
    pub n: u64,
    /// Attempts that fail before one succeeds.
    pub fail_first: u32,
}

/// An event for fan-out tests.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "tests.Noticed")]
pub struct Noticed {
    /// Identifies the event.
    pub n: u64,
}

/// A command whose handler misbehaves on request, for recoverability tests.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "tests.Risky")]
pub struct Risky {
    /// Identifies the command.
    pub n: u64,
    /// `ok`, `panic`, `hang`, `fail` (always), or `send-then-fail` (sends a `Work` for the same
    /// `n`, then fails the first two attempts).
    pub mode: String,
}

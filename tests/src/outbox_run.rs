//! What the outbox fault tests and their worker process (`bus-outbox-worker`) share: the
//! messages, the endpoint names, which deposits are refused, and how a crash point is spelled
//! in the worker's environment.

use bus_core::Command;
use serde::{Deserialize, Serialize};

/// The endpoint the worker process hosts, with the outbox in PostgreSQL.
pub const LEDGER: &str = "ledger";

/// The endpoint the test process hosts, receiving what the ledger records.
pub const AUDIT: &str = "audit";

/// Asks the ledger to record `n`: a row in its business table and a `Recorded` to the audit.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "tests.outbox.Deposit")]
pub struct Deposit {
    /// The amount, also the deposit's identity.
    pub n: u64,
}

/// Sent by the ledger's handler, through its outbox, once deposit `n` is recorded.
#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "tests.outbox.Recorded")]
pub struct Recorded {
    /// The deposit recorded.
    pub n: u64,
}

/// Whether the ledger refuses deposit `n`: it writes and sends, then fails for good, so its
/// row and its `Recorded` must both be rolled back (one in 97 deposits, 0 included).
pub fn refused(n: u64) -> bool {
    n % 97 == 0
}

/// Where a worker is killed, on the K-th transport call that carries a `Recorded`
/// (`WORKER_CRASH=after-commit:K` or `after-send:K`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// Before the call reaches the broker: the unit of work committed, nothing was sent.
    AfterCommit(u64),
    /// Once the broker confirmed the call: sent, and its outbox rows not deleted.
    AfterSend(u64),
}

impl Crash {
    /// The call's number.
    pub fn at(self) -> u64 {
        match self {
            Crash::AfterCommit(k) | Crash::AfterSend(k) => k,
        }
    }

    /// As `WORKER_CRASH` spells it.
    pub fn to_env(self) -> String {
        match self {
            Crash::AfterCommit(k) => format!("after-commit:{k}"),
            Crash::AfterSend(k) => format!("after-send:{k}"),
        }
    }

    /// From `WORKER_CRASH`; `None` when it does not read as a crash point.
    pub fn from_env(text: &str) -> Option<Crash> {
        let (point, k) = text.split_once(':')?;
        let k = k.parse().ok().filter(|&k| k > 0)?;
        match point {
            "after-commit" => Some(Crash::AfterCommit(k)),
            "after-send" => Some(Crash::AfterSend(k)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_env())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_points_round_trip_through_the_environment() {
        for crash in [Crash::AfterCommit(3), Crash::AfterSend(250)] {
            assert_eq!(Crash::from_env(&crash.to_env()), Some(crash));
        }
        assert_eq!(Crash::from_env("after-send:0"), None);
        assert_eq!(Crash::from_env("before-anything:4"), None);
        assert!(refused(0) && refused(194) && !refused(96));
    }
}

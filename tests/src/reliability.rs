//! The reliability kit: a tally of what happened to every message (sent, confirmed, delivered,
//! handled) and the checker that turns it into lost / phantom / duplicate figures; the test
//! tier (quick in CI, full on demand); and fault injection on the shared RabbitMQ that always
//! puts the broker back.
//!
//! Every reliability test prints one line:
//! `RELIABILITY test=.. transport=.. messages=.. faults=".." lost=0 phantom=0 duplicates=N result=PASS`
//! and appends it as JSON to `target/reliability/<tier>.jsonl`, from which
//! `docs/reliability.md` takes its table.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{HandlerError, MessageContext, State};

use crate::messages::{Risky, Work};

/// Small counts for CI, or the counts of RELIABILITY.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// `BUS_RELIABILITY` unset: minutes in CI.
    Quick,
    /// `BUS_RELIABILITY=full`.
    Full,
}

impl Tier {
    /// From `BUS_RELIABILITY`.
    pub fn current() -> Tier {
        match std::env::var("BUS_RELIABILITY").as_deref() {
            Ok("full") => Tier::Full,
            _ => Tier::Quick,
        }
    }

    /// `quick` figure in the quick tier, `full` in the full one.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Tier::Quick => quick,
            Tier::Full => full,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tier::Quick => "quick",
            Tier::Full => "full",
        }
    }
}

/// What happened to each message of a test, by message number.
#[derive(Clone, Default)]
pub struct Tally {
    inner: Arc<Mutex<TallyInner>>,
}

#[derive(Default)]
struct TallyInner {
    sent: HashSet<u64>,
    confirmed: HashSet<u64>,
    deliveries: u64,
    redelivered: u64,
    max_attempt: u32,
    handled: HashMap<u64, u32>,
}

/// The figures of a finished test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Messages the test tried to send.
    pub sent: usize,
    /// Sends the transport confirmed.
    pub confirmed: usize,
    /// Distinct messages handled.
    pub handled: usize,
    /// Confirmed but never handled.
    pub lost: usize,
    /// Handled but never sent.
    pub phantom: usize,
    /// Extra handlings beyond the first.
    pub duplicates: usize,
    /// Deliveries the transport marked as redelivered.
    pub redelivered: u64,
    /// Highest attempt number seen.
    pub max_attempt: u32,
}

impl Tally {
    /// A new tally.
    pub fn new() -> Self {
        Tally::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut TallyInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    /// About to send message `n`.
    pub fn sent(&self, n: u64) {
        self.with(|t| t.sent.insert(n));
    }

    /// The transport accepted message `n`.
    pub fn confirmed(&self, n: u64) {
        self.with(|t| t.confirmed.insert(n));
    }

    /// A handler received message `n`.
    pub fn delivered(&self, _n: u64, redelivered: bool, attempt: u32) {
        self.with(|t| {
            t.deliveries += 1;
            t.redelivered += u64::from(redelivered);
            t.max_attempt = t.max_attempt.max(attempt);
        });
    }

    /// A handler finished message `n` successfully.
    pub fn handled(&self, n: u64) {
        self.with(|t| *t.handled.entry(n).or_default() += 1);
    }

    /// Distinct messages handled so far.
    pub fn handled_count(&self) -> usize {
        self.with(|t| t.handled.len())
    }

    /// Whether every confirmed message has been handled.
    pub fn all_confirmed_handled(&self) -> bool {
        self.with(|t| t.confirmed.iter().all(|n| t.handled.contains_key(n)))
    }

    /// The figures now.
    pub fn summary(&self) -> Summary {
        self.with(|t| Summary {
            sent: t.sent.len(),
            confirmed: t.confirmed.len(),
            handled: t.handled.len(),
            lost: t
                .confirmed
                .iter()
                .filter(|n| !t.handled.contains_key(n))
                .count(),
            phantom: t.handled.keys().filter(|n| !t.sent.contains(n)).count(),
            duplicates: t
                .handled
                .values()
                .map(|&c| c.saturating_sub(1) as usize)
                .sum(),
            redelivered: t.redelivered,
            max_attempt: t.max_attempt,
        })
    }
}

/// Print the summary line, record it, and fail on any loss or phantom, or on more duplicates
/// than `max_duplicates`.
pub fn report(test: &str, transport: &str, faults: &str, summary: &Summary, max_duplicates: usize) {
    let pass = summary.lost == 0 && summary.phantom == 0 && summary.duplicates <= max_duplicates;
    let result = if pass { "PASS" } else { "FAIL" };
    println!(
        "RELIABILITY test={test:?} transport={transport} tier={} messages={} confirmed={} handled={} faults={faults:?} lost={} phantom={} duplicates={} redelivered={} result={result}",
        Tier::current().name(),
        summary.sent,
        summary.confirmed,
        summary.handled,
        summary.lost,
        summary.phantom,
        summary.duplicates,
        summary.redelivered,
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/reliability");
    if std::fs::create_dir_all(&dir).is_ok() {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.jsonl", Tier::current().name())))
        {
            let line = serde_json::json!({
                "test": test, "transport": transport, "tier": Tier::current().name(),
                "messages": summary.sent, "confirmed": summary.confirmed, "handled": summary.handled,
                "faults": faults, "lost": summary.lost, "phantom": summary.phantom,
                "duplicates": summary.duplicates, "result": result,
            });
            let _ = writeln!(f, "{line}");
        }
    }
    assert_eq!(summary.lost, 0, "{test}: confirmed messages lost");
    assert_eq!(summary.phantom, 0, "{test}: phantom messages handled");
    assert!(
        summary.duplicates <= max_duplicates,
        "{test}: {} duplicates, at most {max_duplicates} allowed",
        summary.duplicates
    );
}

/// Serializes tests that disturb the shared broker within one test binary (cargo runs test
/// binaries one at a time).
pub static BROKER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Run `rabbitmqctl` with arguments; panics if it cannot run or fails.
pub fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Force-close every client connection of the broker.
pub fn close_all_connections() {
    rabbitmqctl(&["close_all_connections", "reliability test"]);
}

/// Block until the broker runs its applications again and accepts connections.
pub fn wait_broker_ready() {
    for _ in 0..120 {
        let ok = Command::new("rabbitmqctl")
            .args(["-q", "await_startup", "--timeout", "5"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok
            && std::net::TcpStream::connect_timeout(
                &"127.0.0.1:5672".parse().unwrap(),
                Duration::from_secs(1),
            )
            .is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("RabbitMQ did not come back");
}

/// The broker's applications are stopped (`stop_app`) while this guard lives; dropping it,
/// also during a panic, starts them again and waits until the broker is ready.
pub struct BrokerStopped {
    restored: bool,
}

impl BrokerStopped {
    /// Stop the broker's applications.
    pub fn stop() -> BrokerStopped {
        rabbitmqctl(&["stop_app"]);
        BrokerStopped { restored: false }
    }

    /// Start them again now.
    pub fn restore(mut self) {
        self.start();
    }

    fn start(&mut self) {
        if !self.restored {
            self.restored = true;
            let _ = Command::new("rabbitmqctl").arg("start_app").status();
            wait_broker_ready();
        }
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        self.start();
    }
}

/// A memory alarm is raised (the high watermark set so low that publishers are blocked) while
/// this guard lives; dropping it puts the default watermark back.
pub struct MemoryAlarm {
    restored: bool,
}

impl MemoryAlarm {
    /// Raise the alarm.
    pub fn raise() -> MemoryAlarm {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
        MemoryAlarm { restored: false }
    }

    /// Clear it now.
    pub fn clear(mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        if !self.restored {
            self.restored = true;
            let _ = Command::new("rabbitmqctl")
                .args(["set_vm_memory_high_watermark", "0.4"])
                .status();
        }
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        self.reset();
    }
}

/// The handler of reliability tests: records the delivery, fails the first `fail_first`
/// attempts, then records the message as handled.
pub async fn tallied(
    cmd: Work,
    ctx: MessageContext,
    State(t): State<Tally>,
) -> Result<(), HandlerError> {
    t.delivered(cmd.n, ctx.redelivered(), ctx.attempt());
    if ctx.attempt() <= cmd.fail_first {
        return Err(HandlerError::new(format!(
            "work {} fails attempt {}",
            cmd.n,
            ctx.attempt()
        )));
    }
    t.handled(cmd.n);
    Ok(())
}

/// A handler that misbehaves as `Risky::mode` asks: panics, hangs, or sends a `Work` and
/// fails its first two attempts.
pub async fn risky(
    cmd: Risky,
    ctx: MessageContext,
    State(t): State<Tally>,
) -> Result<(), HandlerError> {
    t.delivered(cmd.n, ctx.redelivered(), ctx.attempt());
    match cmd.mode.as_str() {
        "panic" => panic!("risky {} panicked", cmd.n),
        "hang" => tokio::time::sleep(Duration::from_secs(3600)).await,
        "send-then-fail" => {
            ctx.send(Work {
                n: cmd.n,
                fail_first: 0,
            })
            .await?;
            if ctx.attempt() <= 2 {
                return Err(HandlerError::new("fails after sending"));
            }
        }
        _ => {}
    }
    t.handled(cmd.n);
    Ok(())
}

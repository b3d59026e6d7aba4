//! Driving a broker transport through faults, shared by the reliability tests of NATS and
//! Redis: sending `Work` with retries or in bursts (every send tallied), checking what the
//! sends returned, waiting for the handlers, and worker processes to kill.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{Bus, BusError, SendOptions, TransportError};

use crate::messages::Work;
use crate::reliability::Tally;

/// Which message id the sends of a test give `Work` number `n`.
#[derive(Clone, Debug)]
pub enum WorkIds {
    /// A new one on every send (the bus's own): a send tried again is a new message, so a
    /// failed try that did reach the broker shows as a duplicate.
    Fresh,
    /// `<run>-<n>`, the same on every try: a send tried again is the same message, as an
    /// application making its sends idempotent would send it.
    PerRun(String),
}

impl WorkIds {
    /// Ids of a new run, the same on every try of a message.
    pub fn per_run() -> WorkIds {
        WorkIds::PerRun(crate::broker::unique("run"))
    }

    /// Send `Work` number `n` with its id.
    pub async fn send(&self, bus: &Bus, n: u64) -> Result<(), BusError> {
        let work = Work { n, fail_first: 0 };
        match self {
            WorkIds::Fresh => bus.send(work).await,
            WorkIds::PerRun(run) => {
                bus.send_with(work, SendOptions::new().message_id(format!("{run}-{n}")))
                    .await
            }
        }
    }
}

/// What producing went through.
#[derive(Debug, Default)]
pub struct Produced {
    /// The slowest single send attempt.
    pub slowest: Duration,
    /// Send attempts that failed (and were tried again).
    pub failed: u64,
    /// Messages given up on (never confirmed).
    pub abandoned: u64,
    /// Failures that were not typed transport errors.
    pub untyped: Vec<String>,
}

/// Send `0..n` from `tasks` concurrent senders. A failed send is tried again after a pause,
/// with the id `ids` gives it, until it is confirmed or `give_up` passed since its first try.
/// Only `Ok` counts as confirmed.
pub async fn produce(
    bus: &Bus,
    tally: &Tally,
    ids: &WorkIds,
    n: u64,
    tasks: u64,
    give_up: Duration,
) -> Produced {
    let slowest = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let abandoned = Arc::new(AtomicU64::new(0));
    let untyped = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (bus, tally, ids) = (bus.clone(), tally.clone(), ids.clone());
        let (slowest, failed, abandoned, untyped) = (
            slowest.clone(),
            failed.clone(),
            abandoned.clone(),
            untyped.clone(),
        );
        handles.push(tokio::spawn(async move {
            for i in (t..n).step_by(tasks as usize) {
                tally.sent(i);
                let first = Instant::now();
                loop {
                    let started = Instant::now();
                    let result = ids.send(&bus, i).await;
                    slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    match result {
                        Ok(()) => {
                            tally.confirmed(i);
                            break;
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if !matches!(e, BusError::Transport(_)) {
                                untyped.lock().unwrap().push(format!("send {i}: {e}"));
                            }
                            if first.elapsed() > give_up {
                                eprintln!("send {i} failed, not tried again: {e}");
                                abandoned.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let untyped = std::mem::take(&mut *untyped.lock().unwrap());
    Produced {
        slowest: Duration::from_millis(slowest.load(Ordering::Relaxed)),
        failed: failed.load(Ordering::Relaxed),
        abandoned: abandoned.load(Ordering::Relaxed),
        untyped,
    }
}

/// Send `ns` one by one, each tried again (with the id `ids` gives it) until confirmed, at
/// most 20 s; returns how many attempts failed.
pub async fn produce_range(p: &Bus, tally: &Tally, ids: &WorkIds, ns: std::ops::Range<u64>) -> u64 {
    let mut failed = 0;
    for n in ns {
        tally.sent(n);
        let first = Instant::now();
        loop {
            match ids.send(p, n).await {
                Ok(()) => {
                    tally.confirmed(n);
                    break;
                }
                Err(e) => {
                    failed += 1;
                    assert!(
                        first.elapsed() < Duration::from_secs(20),
                        "publishing did not recover: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    failed
}

/// What one send returned, and how long it took.
pub type Outcome = (Result<(), BusError>, Duration);

/// Send `ns` at once, each with the producer's timeout; returns each outcome and its time.
pub async fn burst(
    p: &Bus,
    tally: &Tally,
    ids: &WorkIds,
    ns: std::ops::Range<u64>,
) -> Vec<Outcome> {
    let mut tasks = Vec::new();
    for n in ns {
        let (p, t, ids) = (p.clone(), tally.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            t.sent(n);
            let started = Instant::now();
            let r = ids.send(&p, n).await;
            if r.is_ok() {
                t.confirmed(n);
            }
            (r, started.elapsed())
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// Every outcome came within `limit`, and every failure is a connection error or a timeout.
pub fn check_outcomes(what: &str, outcomes: &[Outcome], limit: Duration) {
    for (r, took) in outcomes {
        assert!(*took <= limit, "{what}: a publish took {took:?}");
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    BusError::Transport(
                        TransportError::Connection { .. } | TransportError::Timeout { .. }
                    )
                ),
                "{what}: not a typed connection error or timeout: {e}"
            );
        }
    }
}

/// Wait until every confirmed message is handled, at most `limit`.
pub async fn all_handled(tally: &Tally, limit: Duration) -> bool {
    crate::eventually(limit, || tally.all_confirmed_handled()).await
}

/// Wait until at least `at` sends were confirmed.
pub async fn confirmed_reach(tally: &Tally, at: usize) {
    while tally.summary().confirmed < at {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Run `body`, failing the test if it takes longer than `limit` (a hang is a failure).
pub async fn within<F: Future>(test: &str, limit: Duration, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("{test}: no result within {limit:?}"),
    }
}

/// A worker process (the `bus-test-worker` binary), killed when dropped (also when the test
/// fails). Worker `i` writes the number of each message it handles, one a line, to `w<i>.txt`
/// in its directory.
pub struct Worker(std::process::Child);

impl Worker {
    /// Start worker `i` of `program` (a test's `env!("CARGO_BIN_EXE_bus-test-worker")`) with
    /// `env` and its output file in `dir`.
    pub fn spawn(program: &str, env: &[(&str, &str)], dir: &Path, i: u32) -> Worker {
        let child = std::process::Command::new(program)
            .envs(env.iter().copied())
            .env("WORKER_OUT", dir.join(format!("w{i}.txt")))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn worker");
        Worker(child)
    }

    /// The exit status, once it ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// `kill -9`, and reap it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// `SIGTERM` (graceful shutdown), and wait for it.
    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The numbers worker `i` wrote, one per handling.
pub fn worker_lines(dir: &Path, i: u32) -> Vec<u64> {
    std::fs::read_to_string(dir.join(format!("w{i}.txt")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').next().and_then(|v| v.parse().ok()))
        .collect()
}

/// The numbers workers 0 and 1 wrote.
pub fn handled_lines(dir: &Path) -> Vec<u64> {
    let mut all = worker_lines(dir, 0);
    all.extend(worker_lines(dir, 1));
    all
}

/// A directory of its own under the system's temporary one, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty directory named after `name` and made unique.
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(crate::broker::unique(name));
        std::fs::create_dir_all(&dir).expect("create the test's directory");
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Log to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=bus_transport_nats=debug`).
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// How long after being scheduled the messages of [`scheduled_across_restart`] are due.
pub const SCHEDULED_FOR: Duration = Duration::from_secs(10);

/// Scheduled messages outlive their sender and a restart of the broker: `producer` schedules
/// `Work` `0..n` for [`SCHEDULED_FOR`] from now, then goes away (its bus shut down and dropped,
/// as a sending process that stops); `restart` restarts the broker; then `consumer` starts a
/// bus hosting the endpoint (the endpoint must already exist on the broker). Every message is
/// handled, none before it was due. Returns the consumer's bus and when the messages were due.
pub async fn scheduled_across_restart<R, C, Started>(
    test: &str,
    producer: Bus,
    tally: &Tally,
    n: u64,
    restart: R,
    consumer: C,
) -> (Bus, std::time::SystemTime)
where
    R: Future<Output = ()>,
    C: FnOnce() -> Started,
    Started: Future<Output = Bus>,
{
    let due = std::time::SystemTime::now() + SCHEDULED_FOR;
    for i in 0..n {
        tally.sent(i);
        let options = SendOptions::new().deliver_at(due);
        match producer
            .send_with(
                Work {
                    n: i,
                    fail_first: 0,
                },
                options,
            )
            .await
        {
            Ok(()) => tally.confirmed(i),
            Err(e) => panic!("{test}: scheduling {i}: {e}"),
        }
    }
    producer.shutdown().await;
    drop(producer);
    println!("{test}: {n} messages scheduled; the sender is gone");
    restart.await;
    let bus = consumer().await;
    let deadline = Instant::now() + SCHEDULED_FOR + Duration::from_secs(60);
    while !tally.all_confirmed_handled() && Instant::now() < deadline {
        if tally.handled_count() > 0 {
            assert!(
                std::time::SystemTime::now() >= due,
                "{test}: a scheduled message was handled before it was due"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let late = std::time::SystemTime::now()
        .duration_since(due)
        .unwrap_or_default();
    println!("{test}: all {n} handled {late:?} after due");
    (bus, due)
}

//! A broker process of a test's own, on a free local port, for tests that kill, freeze or
//! restart it: the shared server stays untouched. [`ServerProcess`] does the process work
//! (start, `kill -9`, restart on the same port and data directory, `SIGSTOP` / `SIGCONT`);
//! a [`ServerKind`] says how to run one kind of server and when it serves.
//!
//! Dropping the guard (also while a failing test unwinds) kills the process and deletes its
//! data directory. When the server cannot be run the test is skipped with a printed reason,
//! or fails when `BUS_REQUIRE_BROKERS=1`.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{brokers_required, unique};

/// How to run one kind of server.
pub trait ServerKind: Send + Sync {
    /// Its name in messages, e.g. `redis-server`.
    const NAME: &'static str;
    /// Its log file, inside the data directory.
    const LOG: &'static str;
    /// Where the binary is looked for, in order.
    fn binaries(&self) -> &[&'static str];
    /// Command-line arguments for a port and a data directory.
    fn args(&self, port: u16, dir: &Path) -> Vec<String>;
    /// Whether the server on `port` answers, with its data recovered.
    fn serving(&self, port: u16) -> impl Future<Output = bool> + Send;
}

/// A running (or deliberately stopped) server child process.
pub struct ServerProcess<K: ServerKind> {
    kind: K,
    binary: &'static str,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    frozen: bool,
}

impl<K: ServerKind> ServerProcess<K> {
    /// Start a server on a free port with a fresh data directory, and wait until it serves.
    /// `None` (test skipped) when the binary cannot be run.
    pub async fn start_kind(test: &str, kind: K) -> Option<Self> {
        let mut why = String::new();
        let found = kind.binaries().iter().copied().find(|bin| {
            match Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
            {
                Ok(status) if status.success() => true,
                Ok(status) => {
                    why = format!("`{bin} --version` exited with {status}");
                    false
                }
                Err(e) => {
                    why = format!("{bin}: {e}");
                    false
                }
            }
        });
        let Some(binary) = found else {
            if brokers_required() {
                panic!(
                    "{test}: cannot run {} ({why}) and BUS_REQUIRE_BROKERS=1",
                    K::NAME
                );
            }
            eprintln!(
                "skipping {test}: cannot run {} ({why}); set BUS_REQUIRE_BROKERS=1 to fail instead",
                K::NAME
            );
            return None;
        };
        let dir = std::env::temp_dir().join(unique(&format!("bus-{}", K::NAME)));
        std::fs::create_dir_all(&dir).expect("create the server's data directory");
        let mut server = ServerProcess {
            kind,
            binary,
            port: 0,
            dir,
            child: None,
            frozen: false,
        };
        // Another process may take the port between the check and the bind: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn_and_wait().await.is_ok() {
                return Some(server);
            }
        }
        let why = server.spawn_and_wait().await.unwrap_err();
        panic!("{test}: {} did not start: {why}", K::NAME);
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The data directory (and log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process runs (it may be frozen).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9` the process and reap it: gone at once, with no chance to save or flush.
    pub fn kill(&mut self) {
        self.frozen = false;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port and directory (it recovers what it
    /// persisted), and wait until it serves. Kills the running one first, if any.
    pub async fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        // The port was just released; give the kernel a few tries to let it go.
        for _ in 0..20 {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "{} did not come back on port {}: {last}",
            K::NAME,
            self.port
        );
    }

    /// Freeze the process (`SIGSTOP`): connections stay open and connecting still succeeds
    /// (the kernel accepts), but nothing is answered, until [`ServerProcess::thaw`].
    pub fn freeze(&mut self) {
        if let Some(child) = &self.child {
            signal(child, "-STOP");
            self.frozen = true;
        }
    }

    /// Let a frozen process run again (`SIGCONT`).
    pub fn thaw(&mut self) {
        if let (Some(child), true) = (&self.child, self.frozen) {
            signal(child, "-CONT");
        }
        self.frozen = false;
    }

    /// Spawn the process and wait until it serves; on failure the process is gone again and
    /// the reason (with the tail of its log) is returned.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let child = Command::new(self.binary)
            .args(self.kind.args(self.port, &self.dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "{} exited ({status}) on port {}: {}",
                        K::NAME,
                        self.port,
                        self.log_tail()
                    ));
                }
            }
            if self.kind.serving(self.port).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        Err(format!(
            "{} on port {} not serving within 30 s: {}",
            K::NAME,
            self.port,
            self.log_tail()
        ))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join(K::LOG)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl<K: ServerKind> Drop for ServerProcess<K> {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(child: &Child, which: &str) {
    let _ = Command::new("kill")
        .args([which, &child.id().to_string()])
        .status();
}

/// A port that is free now, below the usual range of ephemeral ports (32768 and up), so the
/// source port of some client connection does not take it while the server is down.
fn free_port() -> u16 {
    let seed = uuid::Uuid::now_v7().as_u128();
    for i in 0..1000u128 {
        let port = 20_000 + ((seed.wrapping_add(i * 7919)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

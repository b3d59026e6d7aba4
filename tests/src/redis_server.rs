//! A `redis-server` process of a test's own, on a free local port, for tests that kill,
//! freeze or restart Redis: the shared server stays untouched.
//!
//! The process belongs to a [`RedisServer`] guard: dropping it (also while a failing test
//! unwinds) kills the process and deletes its data directory. When `redis-server` cannot be
//! started the test is skipped with a printed reason, or fails when `BUS_REQUIRE_BROKERS=1`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{brokers_required, unique};

/// What the server writes to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Append-only file, fsynced before every reply (`--appendonly yes --appendfsync always`),
    /// no snapshots: everything Redis acknowledged survives a `kill -9`.
    AppendOnly,
    /// Nothing (`--appendonly no --save ""`): a restart starts empty.
    Off,
}

/// A running (or deliberately stopped) `redis-server` child process.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
    child: Option<Child>,
    frozen: bool,
}

impl RedisServer {
    /// Start a server on a free port with a fresh data directory, and wait until it serves.
    /// `None` (test skipped) when `redis-server` cannot be run.
    pub async fn start(test: &str, persistence: Persistence) -> Option<RedisServer> {
        let probe = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = probe {
            if brokers_required() {
                panic!("{test}: cannot run redis-server ({e}) and BUS_REQUIRE_BROKERS=1");
            }
            eprintln!("skipping {test}: cannot run redis-server ({e}); set BUS_REQUIRE_BROKERS=1 to fail instead");
            return None;
        }
        let dir = std::env::temp_dir().join(unique("bus-redis"));
        std::fs::create_dir_all(&dir).expect("create the Redis data directory");
        let mut server = RedisServer {
            port: 0,
            dir,
            persistence,
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
        panic!("{test}: redis-server did not start: {why}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The data directory (append-only file, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process runs (it may be frozen).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9` the process and reap it: Redis is gone at once, with no chance to save.
    pub fn kill(&mut self) {
        self.frozen = false;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port and directory (it loads what it persisted),
    /// and wait until it serves. Kills the running one first, if any.
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
            "redis-server did not come back on port {}: {last}",
            self.port
        );
    }

    /// Freeze the process (`SIGSTOP`): connections stay open and connecting still succeeds
    /// (the kernel accepts), but nothing is answered, until [`RedisServer::thaw`].
    pub fn freeze(&mut self) {
        if let Some(child) = &self.child {
            signal(child, "-STOP");
            self.frozen = true;
        }
    }

    /// Let a frozen process run again (`SIGCONT`).
    pub fn thaw(&mut self) {
        if let Some(child) = &self.child {
            if self.frozen {
                signal(child, "-CONT");
            }
        }
        self.frozen = false;
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &self.dir.to_string_lossy(),
            "--save",
            "",
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match self.persistence {
            Persistence::AppendOnly => {
                args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from))
            }
            Persistence::Off => args.extend(["--appendonly", "no"].map(String::from)),
        }
        args
    }

    /// Spawn the process and wait until it answers with its data loaded; on failure the
    /// process is gone again and the reason (with the tail of its log) is returned.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "redis-server exited ({status}) on port {}: {}",
                        self.port,
                        self.log_tail()
                    ));
                }
            }
            if self.serving().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        Err(format!(
            "redis-server on port {} not serving within 30 s: {}",
            self.port,
            self.log_tail()
        ))
    }

    /// Whether the server answers and has finished loading its data.
    async fn serving(&self) -> bool {
        let url = self.url();
        let check = async {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("INFO")
                .arg("persistence")
                .query_async::<String>(&mut conn)
                .await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), check).await,
            Ok(Ok(info)) if info.contains("loading:0")
        )
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for RedisServer {
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

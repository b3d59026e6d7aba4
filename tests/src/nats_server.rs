//! A `nats-server` process of a test's own, with JetStream on file storage, on a free local
//! port, for tests that kill, freeze or restart NATS: the shared server stays untouched.
//!
//! The process belongs to a [`NatsServer`] guard: dropping it (also while a failing test
//! unwinds) kills the process and deletes its store directory. When `nats-server` cannot be
//! started the test is skipped with a printed reason, or fails when `BUS_REQUIRE_BROKERS=1`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bus_transport_nats::async_nats;

use crate::broker::{brokers_required, unique};

/// Where the server binary is looked for, in order.
const BINARIES: [&str; 2] = ["/usr/sbin/nats-server", "nats-server"];

/// A running (or deliberately stopped) `nats-server` child process with JetStream.
pub struct NatsServer {
    binary: &'static str,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    frozen: bool,
}

impl NatsServer {
    /// Start a server on a free port with JetStream storing in a fresh directory, and wait
    /// until JetStream answers. `None` (test skipped) when `nats-server` cannot be run.
    pub async fn start(test: &str) -> Option<NatsServer> {
        let mut why = String::new();
        let binary = BINARIES.into_iter().find(|bin| {
            let probe = Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match probe {
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
        let Some(binary) = binary else {
            if brokers_required() {
                panic!("{test}: cannot run nats-server ({why}) and BUS_REQUIRE_BROKERS=1");
            }
            eprintln!("skipping {test}: cannot run nats-server ({why}); set BUS_REQUIRE_BROKERS=1 to fail instead");
            return None;
        };
        let dir = std::env::temp_dir().join(unique("bus-nats"));
        std::fs::create_dir_all(&dir).expect("create the NATS store directory");
        let mut server = NatsServer {
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
        panic!("{test}: nats-server did not start: {why}");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The directory holding the JetStream store (`jetstream/`) and the log (`nats.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process runs (it may be frozen).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9` the process and reap it: the server is gone at once, with no chance to
    /// flush or close anything.
    pub fn kill(&mut self) {
        self.frozen = false;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port and store directory (JetStream recovers its
    /// streams and consumers from it), and wait until JetStream answers. Kills the running
    /// one first, if any.
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
            "nats-server did not come back on port {}: {last}",
            self.port
        );
    }

    /// Freeze the process (`SIGSTOP`): connections stay open and connecting still succeeds
    /// (the kernel accepts), but nothing is answered, until [`NatsServer::thaw`].
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
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-js".into(),
            "-sd".into(),
            self.dir.to_string_lossy().into_owned(),
            "-l".into(),
            self.dir.join("nats.log").to_string_lossy().into_owned(),
        ]
    }

    /// Spawn the process and wait until JetStream answers (with its store recovered); on
    /// failure the process is gone again and the reason (with the tail of its log) is
    /// returned.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let child = Command::new(self.binary)
            .args(self.args())
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
                        "nats-server exited ({status}) on port {}: {}",
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
            "nats-server on port {} not serving within 30 s: {}",
            self.port,
            self.log_tail()
        ))
    }

    /// Whether the server accepts a connection and JetStream answers. The server opens its
    /// client port only after JetStream recovered its store, so this also means recovered.
    async fn serving(&self) -> bool {
        let url = self.url();
        let check = async {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(1))
                .connect(url.as_str())
                .await
                .ok()?;
            let reply = client
                .request("$JS.API.INFO", Default::default())
                .await
                .ok();
            let _ = client.drain().await;
            let reply = reply?;
            let answer = String::from_utf8_lossy(&reply.payload).into_owned();
            (!answer.contains("\"error\"")).then_some(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(Some(()))
        )
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for NatsServer {
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

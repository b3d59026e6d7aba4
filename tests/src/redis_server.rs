//! A `redis-server` process of a test's own, on a free local port, for tests that kill,
//! freeze or restart Redis: the shared server stays untouched.
//!
//! The process belongs to a [`RedisServer`] guard: dropping it (also while a failing test
//! unwinds) kills the process and deletes its data directory. When `redis-server` cannot be
//! started the test is skipped with a printed reason, or fails when `BUS_REQUIRE_BROKERS=1`.

use std::path::Path;
use std::time::Duration;

use crate::server_process::{ServerKind, ServerProcess};

/// What the server writes to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Append-only file, fsynced before every reply (`--appendonly yes --appendfsync always`),
    /// no snapshots: everything Redis acknowledged survives a `kill -9`.
    AppendOnly,
    /// Nothing (`--appendonly no --save ""`): a restart starts empty.
    Off,
}

/// How to run `redis-server`.
pub struct Redis(Persistence);

/// A running (or deliberately stopped) `redis-server` child process.
pub type RedisServer = ServerProcess<Redis>;

impl ServerKind for Redis {
    const NAME: &'static str = "redis-server";
    const LOG: &'static str = "redis.log";

    fn binaries(&self) -> &[&'static str] {
        &["redis-server"]
    }

    fn args(&self, port: u16, dir: &Path) -> Vec<String> {
        let port = port.to_string();
        let dir = dir.to_string_lossy();
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--save",
            "",
            "--logfile",
            Self::LOG,
        ];
        match self.0 {
            Persistence::AppendOnly => {
                args.extend(["--appendonly", "yes", "--appendfsync", "always"])
            }
            Persistence::Off => args.extend(["--appendonly", "no"]),
        }
        args.into_iter().map(String::from).collect()
    }

    /// Answers `INFO` and has finished loading its data.
    async fn serving(&self, port: u16) -> bool {
        let url = format!("redis://127.0.0.1:{port}");
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
}

impl RedisServer {
    /// Start a server on a free port with a fresh data directory, and wait until it serves.
    /// `None` (test skipped) when `redis-server` cannot be run.
    pub async fn start(test: &str, persistence: Persistence) -> Option<RedisServer> {
        ServerProcess::start_kind(test, Redis(persistence)).await
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }
}

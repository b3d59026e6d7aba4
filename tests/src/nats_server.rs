//! A `nats-server` process of a test's own, with JetStream on file storage, on a free local
//! port, for tests that kill, freeze or restart NATS: the shared server stays untouched.
//!
//! The process belongs to a [`NatsServer`] guard: dropping it (also while a failing test
//! unwinds) kills the process and deletes its store directory. When `nats-server` cannot be
//! started the test is skipped with a printed reason, or fails when `BUS_REQUIRE_BROKERS=1`.

use std::path::Path;
use std::time::Duration;

use bus_transport_nats::async_nats;

use crate::server_process::{ServerKind, ServerProcess};

/// How to run `nats-server` with JetStream on file storage.
pub struct Nats;

/// A running (or deliberately stopped) `nats-server` child process with JetStream.
pub type NatsServer = ServerProcess<Nats>;

impl ServerKind for Nats {
    const NAME: &'static str = "nats-server";
    const LOG: &'static str = "nats.log";

    fn binaries(&self) -> &[&'static str] {
        &["/usr/sbin/nats-server", "nats-server"]
    }

    fn args(&self, port: u16, dir: &Path) -> Vec<String> {
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.to_string_lossy().into_owned(),
            "-l".into(),
            dir.join(Self::LOG).to_string_lossy().into_owned(),
        ]
    }

    /// Accepts a connection and JetStream answers. The server opens its client port only
    /// after JetStream recovered its store, so this also means recovered.
    async fn serving(&self, port: u16) -> bool {
        let url = format!("nats://127.0.0.1:{port}");
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
}

impl NatsServer {
    /// Start a server on a free port with JetStream storing in a fresh directory, and wait
    /// until JetStream answers. `None` (test skipped) when `nats-server` cannot be run.
    pub async fn start(test: &str) -> Option<NatsServer> {
        ServerProcess::start_kind(test, Nats).await
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }
}

//! Reaching the test NATS server (with JetStream): skip with a printed reason when it is
//! unreachable, fail instead when `BUS_REQUIRE_BROKERS=1`; and isolate each test's subjects and
//! streams on the shared server with a unique prefix, removed again afterwards.

use std::time::Duration;

use bus_transport_nats::async_nats;
use bus_transport_nats::{Naming, NatsConfig, NatsTransport};
use futures_lite::StreamExt;

use crate::broker::{brokers_required, unique};

/// The NATS server the tests use: `BUS_TEST_NATS_URL`, by default the local server.
pub fn nats_url() -> String {
    std::env::var("BUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// `Some(url)` when the NATS server accepts connections and answers JetStream requests;
/// otherwise prints why the test is skipped and returns `None`, or panics when brokers are
/// required.
pub async fn nats_or_skip(test: &str) -> Option<String> {
    let url = nats_url();
    let probe = async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .connect(url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let checked = match client.request("$JS.API.INFO", Default::default()).await {
            Ok(reply) if !String::from_utf8_lossy(&reply.payload).contains("\"error\"") => Ok(()),
            Ok(reply) => Err(format!(
                "JetStream refuses: {}",
                String::from_utf8_lossy(&reply.payload)
            )),
            Err(e) => Err(format!(
                "JetStream does not answer ({e}); is the server started with -js?"
            )),
        };
        let _ = client.drain().await;
        checked
    };
    let why = match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok(())) => return Some(url),
        Ok(Err(e)) => e,
        Err(_) => "no answer within 5 s".into(),
    };
    if brokers_required() {
        panic!("{test}: NATS at {url} is unusable ({why}) and BUS_REQUIRE_BROKERS=1");
    }
    eprintln!(
        "skipping {test}: NATS is unusable ({why}); set BUS_REQUIRE_BROKERS=1 to fail instead"
    );
    None
}

/// One test's private corner of the shared server: every subject and stream carries a unique
/// prefix, and [`NatsScope::cleanup`] deletes the streams.
#[derive(Clone, Debug)]
pub struct NatsScope {
    /// Server URL.
    pub url: String,
    /// The naming every transport of this test uses.
    pub naming: Naming,
}

impl NatsScope {
    /// A new scope, or `None` (test skipped) when NATS is unusable.
    pub async fn new(test: &str) -> Option<NatsScope> {
        let url = nats_or_skip(test).await?;
        let id = unique("t");
        let naming = Naming {
            subject_prefix: id.clone(),
            stream_prefix: id.to_uppercase(),
            ..Naming::default()
        };
        Some(NatsScope { url, naming })
    }

    /// A transport config in this scope.
    pub fn config(&self, name: &str) -> NatsConfig {
        NatsConfig::new(self.url.clone())
            .connection_name(name)
            .naming(self.naming.clone())
    }

    /// A connected transport in this scope.
    pub async fn transport(&self, name: &str) -> NatsTransport {
        NatsTransport::connect(self.config(name))
            .await
            .expect("connect to NATS")
    }

    /// A plain JetStream client of the server.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.url.as_str())
            .await
            .expect("plain NATS connection");
        async_nats::jetstream::new(client)
    }

    /// Messages stored in a stream of this scope (by its full name); 0 if it does not exist.
    pub async fn stored(&self, stream: &str) -> u64 {
        let js = self.jetstream().await;
        let n = match js.get_stream(stream).await {
            Ok(s) => s.cached_info().state.messages,
            Err(_) => 0,
        };
        let _ = js.client().drain().await;
        n
    }

    /// Delete every stream of this scope: the endpoints' input, delay and error streams, the
    /// event streams and the scheduled stream, with their consumers (all names start with the
    /// scope's stream prefix). Reply addresses are core subscriptions, nothing on the server
    /// outlives their connections.
    pub async fn cleanup(&self) {
        let work = async {
            let Ok(client) = async_nats::connect(self.url.as_str()).await else {
                return;
            };
            let js = async_nats::jetstream::new(client.clone());
            let mut names = Vec::new();
            let mut listing = js.stream_names();
            while let Some(Ok(name)) = listing.next().await {
                if name.starts_with(&self.naming.stream_prefix) {
                    names.push(name);
                }
            }
            for name in names {
                let _ = js.delete_stream(&name).await;
            }
            let _ = client.drain().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(20), work).await;
    }
}

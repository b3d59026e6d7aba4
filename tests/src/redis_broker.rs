//! Reaching the test Redis: skip with a printed reason when it is unreachable, fail instead
//! when `BUS_REQUIRE_BROKERS=1`; and isolate each test's keys on the shared server under a
//! unique prefix, deleted again afterwards.

use std::time::Duration;

use bus_transport_redis::{Keys, RedisConfig, RedisTransport};
use redis::aio::MultiplexedConnection;

use crate::broker::{brokers_required, unique};

/// The Redis the tests use: `BUS_TEST_REDIS_URL`, by default the local server.
pub fn redis_url() -> String {
    std::env::var("BUS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `Some(url)` when Redis answers a `PING`; otherwise prints why the test is skipped and
/// returns `None`, or panics when brokers are required.
pub async fn redis_or_skip(test: &str) -> Option<String> {
    let url = redis_url();
    let attempt = tokio::time::timeout(Duration::from_secs(5), async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    match attempt {
        Ok(Ok(_)) => Some(url),
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 5 s".into(),
            };
            if brokers_required() {
                panic!("{test}: Redis at {url} is unreachable ({why}) and BUS_REQUIRE_BROKERS=1");
            }
            eprintln!("skipping {test}: Redis is unreachable ({why}); set BUS_REQUIRE_BROKERS=1 to fail instead");
            None
        }
    }
}

/// One test's private corner of the shared Redis: every key starts with a unique prefix, and
/// [`RedisScope::cleanup`] deletes them.
#[derive(Clone, Debug)]
pub struct RedisScope {
    /// Server URL.
    pub url: String,
    /// The key names every transport of this test uses.
    pub keys: Keys,
}

impl RedisScope {
    /// A new scope, or `None` (test skipped) when Redis is unreachable.
    pub async fn new(test: &str) -> Option<RedisScope> {
        let url = redis_or_skip(test).await?;
        Some(RedisScope {
            url,
            keys: Keys::new(unique("t")),
        })
    }

    /// A transport config in this scope, with short timings so tests run quickly.
    pub fn config(&self, name: &str) -> RedisConfig {
        RedisConfig::new(self.url.clone())
            .key_prefix(self.keys.prefix.clone())
            .consumer_name(name)
            .block_timeout(Duration::from_millis(200))
            .claim_interval(Duration::from_millis(200))
            .operation_timeout(Duration::from_secs(5))
    }

    /// A connected transport in this scope.
    pub async fn transport(&self, name: &str) -> RedisTransport {
        RedisTransport::connect(self.config(name))
            .await
            .expect("connect to Redis")
    }

    /// A plain client connection, to look at keys directly.
    pub async fn raw(&self) -> MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("raw Redis connection")
    }

    /// Every key of this scope.
    pub async fn scope_keys(&self) -> Vec<String> {
        let mut conn = self.raw().await;
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.keys.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("SCAN");
            out.extend(batch);
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }

    /// Delete every key of this scope: everything a transport creates lives under the
    /// prefix, endpoint keys as well as the bus-wide ones (reply streams `<prefix>:reply:*`,
    /// the scheduler's `<prefix>:scheduled*`).
    pub async fn cleanup(&self) {
        let keys = self.scope_keys().await;
        if keys.is_empty() {
            return;
        }
        let mut conn = self.raw().await;
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
    }
}

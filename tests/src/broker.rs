//! Reaching the test brokers: skip with a printed reason when one is unreachable, fail instead
//! when `BUS_REQUIRE_BROKERS=1`; and isolate each test's queues and exchanges on the shared
//! broker with a unique name prefix, removed again afterwards.

use std::time::Duration;

use bus_transport_amqp::{AmqpConfig, AmqpTransport, Naming};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};

/// The RabbitMQ the tests use: `BUS_TEST_AMQP_URL`, by default the local broker.
pub fn amqp_url() -> String {
    std::env::var("BUS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Whether brokers are required (CI): an unreachable broker then fails the test.
pub fn brokers_required() -> bool {
    std::env::var("BUS_REQUIRE_BROKERS").is_ok_and(|v| v == "1")
}

/// `Some(url)` when RabbitMQ accepts connections; otherwise prints why the test is skipped and
/// returns `None`, or panics when brokers are required.
pub async fn rabbitmq_or_skip(test: &str) -> Option<String> {
    let url = amqp_url();
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await;
    match attempt {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "probe".into()).await;
            Some(url)
        }
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 5 s".into(),
            };
            if brokers_required() {
                panic!("{test}: RabbitMQ at 127.0.0.1:5672 is unreachable ({why}) and BUS_REQUIRE_BROKERS=1");
            }
            eprintln!("skipping {test}: RabbitMQ is unreachable ({why}); set BUS_REQUIRE_BROKERS=1 to fail instead");
            None
        }
    }
}

/// A unique name fragment for this test run.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}-{}", &id[id.len() - 10..])
}

/// One test's private corner of the shared broker: every queue and the events exchange carry
/// a unique prefix, and [`AmqpScope::cleanup`] deletes them.
#[derive(Clone, Debug)]
pub struct AmqpScope {
    /// Broker URL.
    pub url: String,
    /// The naming every transport of this test uses.
    pub naming: Naming,
}

impl AmqpScope {
    /// A new scope, or `None` (test skipped) when RabbitMQ is unreachable.
    pub async fn new(test: &str) -> Option<AmqpScope> {
        let url = rabbitmq_or_skip(test).await?;
        let prefix = format!("{}.", unique("t"));
        let naming = Naming {
            queue_prefix: prefix.clone(),
            events_exchange: format!("{prefix}bus.events"),
            ..Naming::default()
        };
        Some(AmqpScope { url, naming })
    }

    /// A transport config in this scope.
    pub fn config(&self, name: &str) -> AmqpConfig {
        AmqpConfig::new(self.url.clone())
            .connection_name(name)
            .naming(self.naming.clone())
            .publish_timeout(Duration::from_secs(10))
    }

    /// A connected transport in this scope.
    pub async fn transport(&self, name: &str) -> AmqpTransport {
        AmqpTransport::connect(self.config(name))
            .await
            .expect("connect to RabbitMQ")
    }

    /// A raw lapin connection to the broker.
    pub async fn raw(&self) -> Connection {
        raw_connection(&self.url)
            .await
            .expect("raw lapin connection")
    }

    /// Messages ready in a queue of this scope (by its full name).
    pub async fn ready(&self, queue: &str) -> u32 {
        let conn = self.raw().await;
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        let n = q.message_count();
        let _ = conn.close(200, "done".into()).await;
        n
    }

    /// Delete every queue and the exchange of this scope (best effort, bounded in time): every
    /// queue name carries the scope's prefix, the reply queues and the queues of scheduled
    /// messages (`{prefix}bus.schedule.*`) included. A reply queue still in use by a
    /// connection cannot be deleted from another one; it goes when its connection closes.
    pub async fn cleanup(&self) {
        if tokio::time::timeout(Duration::from_secs(60), self.delete_all())
            .await
            .is_err()
        {
            eprintln!(
                "cleanup of {} did not finish in time",
                self.naming.queue_prefix
            );
        }
    }

    async fn delete_all(&self) {
        let out = tokio::process::Command::new("rabbitmqctl")
            .args(["list_queues", "-q", "--no-table-headers", "name"])
            .output()
            .await;
        let names: Vec<String> = match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|n| n.starts_with(&self.naming.queue_prefix))
                .map(String::from)
                .collect(),
            Err(_) => Vec::new(),
        };
        let Ok(conn) = raw_connection(&self.url).await else {
            return;
        };
        for name in names {
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .exchange_delete(
                    self.naming.events_exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = conn.close(200, "cleanup".into()).await;
    }
}

/// A plain lapin connection, each attempt bounded in time (a connect that never answers is
/// retried, not waited on forever).
pub async fn raw_connection(url: &str) -> Result<Connection, String> {
    let mut last = String::new();
    for _ in 0..3 {
        match tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer within 10 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

/// The PostgreSQL the tests use: `BUS_TEST_POSTGRES`, by default the local server's `test` db.
pub fn postgres_config() -> String {
    std::env::var("BUS_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// `Some(config)` when PostgreSQL accepts connections; otherwise skip (or panic when brokers
/// are required).
pub async fn postgres_or_skip(test: &str) -> Option<String> {
    let config = postgres_config();
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(&config, tokio_postgres::NoTls),
    )
    .await;
    match attempt {
        Ok(Ok(_)) => Some(config),
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 5 s".into(),
            };
            if brokers_required() {
                panic!("{test}: PostgreSQL at 127.0.0.1:5432 is unreachable ({why}) and BUS_REQUIRE_BROKERS=1");
            }
            eprintln!("skipping {test}: PostgreSQL is unreachable ({why}); set BUS_REQUIRE_BROKERS=1 to fail instead");
            None
        }
    }
}

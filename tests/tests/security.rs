//! Security (RELIABILITY.md part D) against the running RabbitMQ: TLS through a TLS-terminating
//! proxy with a certificate authority made for the test (right CA connects; wrong CA or wrong
//! host name fails with a typed error within seconds), and a canary password that must never
//! appear in logs at trace level, errors, or `Debug` output.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::Bus;
use bus_tests::broker::AmqpScope;
use bus_tests::messages::Noticed;
use bus_tests::reliability::rabbitmqctl;
use bus_tests::tls::{tls_proxy, Ca};
use bus_transport_amqp::{AmqpConfig, AmqpError, AmqpTransport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d30_tls_connects_with_the_right_ca_and_fails_fast_otherwise() {
    let Some(scope) = AmqpScope::new("D30 TLS").await else {
        return;
    };
    let good = Ca::new("bus test CA");
    let proxy = tls_proxy(&good, "127.0.0.1:5672".parse().unwrap()).await;

    let config = AmqpConfig::new(format!(
        "amqps://guest:guest@localhost:{}/%2f",
        proxy.port()
    ))
    .naming(scope.naming.clone())
    .connect_timeout(Duration::from_secs(5))
    .tls_ca_pem(good.pem.clone());
    let transport = AmqpTransport::connect(config.clone())
        .await
        .expect("TLS with the right CA");
    let bus = Bus::builder()
        .transport(transport.clone())
        .without_discovery()
        .build()
        .await
        .unwrap();
    bus.publish(Noticed { n: 1 })
        .await
        .expect("publish over TLS");
    transport.close().await.unwrap();

    let other = Ca::new("some other CA");
    let started = Instant::now();
    let err = AmqpTransport::connect(config.clone().tls_ca_pem(other.pem.clone()))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, AmqpError::Connection { .. }),
        "wrong CA: {err}"
    );
    println!("wrong CA: {err}");

    let started = Instant::now();
    let wrong_host = AmqpConfig::new(format!(
        "amqps://guest:guest@127.0.0.1:{}/%2f",
        proxy.port()
    ))
    .connect_timeout(Duration::from_secs(5))
    .tls_ca_pem(good.pem.clone());
    let err = AmqpTransport::connect(wrong_host).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, AmqpError::Connection { .. }),
        "wrong host: {err}"
    );
    println!("wrong host name: {err}");
    println!("RELIABILITY test=\"D30 TLS\" transport=amqp result=PASS");
    scope.cleanup().await;
}

/// Everything logged, at every level, into a buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d31_d32_a_canary_password_never_leaks_and_bad_logins_fail_fast() {
    let Some(scope) = AmqpScope::new("D31 secrets").await else {
        return;
    };
    const CANARY: &str = "canary-Zx81-secret";
    let logs = Captured::default();
    // Global (the runtime's worker threads log too), and bridging the `log` records of the
    // client library.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .try_init()
        .expect("the only test in this binary that installs a subscriber");

    let user = bus_tests::broker::unique("canary");
    rabbitmqctl(&["add_user", &user, CANARY]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    let run = async {
        // A whole working flow with the canary as the password.
        let config = AmqpConfig::new(format!("amqp://{user}:{CANARY}@127.0.0.1:5672/%2f"))
            .naming(scope.naming.clone());
        assert!(!format!("{config:?}").contains(CANARY));
        let transport = AmqpTransport::connect(config)
            .await
            .expect("connect as the canary user");
        assert!(!format!("{transport:?}").contains(CANARY));
        let bus = Bus::builder()
            .transport(transport.clone())
            .without_discovery()
            .build()
            .await
            .unwrap();
        bus.publish(Noticed { n: 1 }).await.unwrap();
        transport.close().await.unwrap();

        // D32: a wrong password and a wrong vhost fail fast with a typed error, no retry storm.
        for url in [
            format!("amqp://{user}:{CANARY}-wrong@127.0.0.1:5672/%2f"),
            format!("amqp://{user}:{CANARY}@127.0.0.1:5672/no-such-vhost"),
        ] {
            let started = Instant::now();
            let err = AmqpTransport::connect(AmqpConfig::new(url))
                .await
                .unwrap_err();
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                started.elapsed()
            );
            assert!(matches!(err, AmqpError::Authentication { .. }), "{err:?}");
            assert!(!err.to_string().contains(CANARY), "{err}");
            assert!(!format!("{err:?}").contains(CANARY), "{err:?}");
        }
        let bad = AmqpConfig::new("amqp://u:p@127.0.0.1:5672/%2f")
            .credentials(user.clone(), format!("{CANARY}!"));
        let err = AmqpTransport::connect(bad).await.unwrap_err();
        assert!(!err.to_string().contains(CANARY), "{err}");
    };
    run.await;
    rabbitmqctl(&["delete_user", &user]);
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.len() > 1_000,
        "trace logging was captured ({} bytes)",
        text.len()
    );
    assert!(!text.contains(CANARY), "the password leaked into the logs");
    println!("RELIABILITY test=\"D31 secrets, D32 wrong credentials\" transport=amqp logged_bytes={} result=PASS", text.len());
    scope.cleanup().await;
}

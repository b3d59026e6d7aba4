//! A `BUS_TRANSPORT` URL that points at another server's port is reported as such, through
//! the configuration a service starts from: "127.0.0.1:4222 answered, but not as an AMQP
//! broker: it speaks NATS (is this the NATS port?)". Each case needs the server it points
//! at; it skips with a printed reason when that one is not listening, and fails instead when
//! `BUS_REQUIRE_BROKERS=1`.

use std::time::Duration;

use bus_tests::broker::brokers_required;
use bus_transport_config::TransportSettings;

/// Open a transport at `url` and return the error text; `None` when the server that should
/// answer at its port is not listening (the test is then skipped).
async fn error_opening(test: &str, url: &str, port: u16) -> Option<String> {
    let listening = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    if !listening {
        if brokers_required() {
            panic!("{test}: nothing listens on 127.0.0.1:{port} and BUS_REQUIRE_BROKERS=1");
        }
        eprintln!("skipping {test}: nothing listens on 127.0.0.1:{port}");
        return None;
    }
    let settings = TransportSettings {
        url: url.into(),
        connect_timeout: Some(Duration::from_secs(5)),
        ..TransportSettings::default()
    };
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(15), settings.open(test))
        .await
        .expect("connecting gives up within its timeout")
        .err()
        .unwrap_or_else(|| panic!("{test}: {url} must not connect"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{test}: the mix-up is reported within the connect timeout"
    );
    Some(err.to_string())
}

#[tokio::test]
async fn config_amqp_url_at_the_nats_port_says_nats_answered() {
    let test = "config_amqp_url_at_the_nats_port_says_nats_answered";
    let Some(text) = error_opening(test, "amqp://guest:s3cret@127.0.0.1:4222/%2f", 4222).await
    else {
        return;
    };
    assert!(text.contains("not as an AMQP broker"), "{text}");
    assert!(text.contains("is this the NATS port?"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn config_redis_url_at_the_amqp_port_says_amqp_answered() {
    let test = "config_redis_url_at_the_amqp_port_says_amqp_answered";
    let Some(text) = error_opening(test, "redis://:s3cret@127.0.0.1:5672", 5672).await else {
        return;
    };
    assert!(text.contains("not as a Redis server"), "{text}");
    assert!(text.contains("is this the AMQP port?"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn config_nats_url_at_the_redis_port_says_redis_answered() {
    let test = "config_nats_url_at_the_redis_port_says_redis_answered";
    let Some(text) = error_opening(test, "nats://127.0.0.1:6379", 6379).await else {
        return;
    };
    assert!(text.contains("not as a NATS broker"), "{text}");
    assert!(text.contains("is this the Redis port?"), "{text}");
}

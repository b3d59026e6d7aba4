//! A worker process for multi-process tests: hosts one endpoint that handles `tests.Work`,
//! appends each handled `n` (with its attempt) to a file, and shuts down gracefully on SIGTERM.
//!
//! Settings from the environment: `WORKER_AMQP_URL`, `WORKER_PREFIX` (queue name prefix),
//! `WORKER_ENDPOINT`, `WORKER_OUT` (file), `WORKER_DELAY_MS` (handler time, default 0).
//!
//! With `WORKER_REDIS_URL` set, the worker runs on Redis Streams instead (`WORKER_AMQP_URL` is
//! then not needed): `WORKER_PREFIX` is the key prefix, and `WORKER_RECLAIM_IDLE_MS` (default
//! 30000) how long the deliveries of a dead consumer wait before another takes them over.
//!
//! With `WORKER_NATS_URL` set, the worker runs on NATS JetStream instead: `WORKER_PREFIX` is
//! the subject prefix (streams are named with it in upper case), and `WORKER_ACK_WAIT_MS`
//! (default 30000) the ack wait of the endpoint's consumer when the worker creates it: how
//! long the deliveries of a dead consumer wait before JetStream hands them out again.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{Bus, HandlerError, MessageContext, State};
use bus_tests::messages::Work;
use bus_transport_amqp::{AmqpConfig, AmqpTransport, Naming};
use bus_transport_config::ConfiguredTransport;
use bus_transport_nats::{NatsConfig, NatsTransport};
use bus_transport_redis::{RedisConfig, RedisTransport};

#[derive(Clone)]
struct Out(Arc<Mutex<std::fs::File>>, u64);

async fn work(cmd: Work, ctx: MessageContext, State(out): State<Out>) -> Result<(), HandlerError> {
    if out.1 > 0 {
        tokio::time::sleep(Duration::from_millis(out.1)).await;
    }
    if ctx.attempt() <= cmd.fail_first {
        return Err(HandlerError::new("failing as asked"));
    }
    let mut f = out.0.lock().unwrap();
    writeln!(f, "{} {}", cmd.n, ctx.attempt())?;
    f.flush()?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set"));
    let millis = |k: &str, default: u64| {
        Duration::from_millis(
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default),
        )
    };
    let prefix = var("WORKER_PREFIX");
    let endpoint = var("WORKER_ENDPOINT");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(var("WORKER_OUT"))
        .expect("open the output file");
    let out = Out(
        Arc::new(Mutex::new(file)),
        millis("WORKER_DELAY_MS", 0).as_millis() as u64,
    );

    let transport = if let Ok(url) = std::env::var("WORKER_REDIS_URL") {
        let config = RedisConfig::new(url)
            .key_prefix(prefix)
            .consumer_name("worker")
            .reclaim_idle(millis("WORKER_RECLAIM_IDLE_MS", 30_000))
            .claim_interval(Duration::from_millis(500))
            .block_timeout(Duration::from_millis(200));
        ConfiguredTransport::Redis(RedisTransport::connect(config).await.expect("connect"))
    } else if let Ok(url) = std::env::var("WORKER_NATS_URL") {
        let naming = bus_transport_nats::Naming {
            subject_prefix: prefix.clone(),
            stream_prefix: prefix.to_uppercase(),
            ..bus_transport_nats::Naming::default()
        };
        let config = NatsConfig::new(url)
            .connection_name("worker")
            .naming(naming)
            .ack_wait(millis("WORKER_ACK_WAIT_MS", 30_000));
        ConfiguredTransport::Nats(NatsTransport::connect(config).await.expect("connect"))
    } else {
        let naming = Naming {
            queue_prefix: prefix.clone(),
            events_exchange: format!("{prefix}bus.events"),
            ..Naming::default()
        };
        let config = AmqpConfig::new(var("WORKER_AMQP_URL"))
            .connection_name("worker")
            .naming(naming);
        ConfiguredTransport::Amqp(AmqpTransport::connect(config).await.expect("connect"))
    };

    let bus = Bus::builder()
        .transport_arc(transport.shared())
        .without_discovery()
        .handler(endpoint.clone(), work)
        .route::<Work>(endpoint.clone())
        .state(out)
        .endpoint(endpoint, |e| {
            e.concurrency(8)
                .prefetch(50)
                .immediate_retries(0)
                .delayed_retries(0, Duration::ZERO)
        })
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("start the bus");
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    bus.shutdown().await;
    let _ = transport.close().await;
}

//! NATS JetStream end to end against the local server: the bus on the NATS transport against
//! raw async-nats doing the same work (a file-backed work-queue stream, publishes with their
//! PubAcks awaited, 1,000 in flight, one durable pull consumer pulling batches of up to 1,000,
//! an ack per message, one message handled at a time).
//!
//! Every run uses streams and subjects under a unique prefix and deletes its streams at the end.

use std::time::Duration;

use bus_transport_nats::async_nats::{self, jetstream};
use bus_transport_nats::{Naming, NatsConfig, NatsTransport};
use futures_util::StreamExt;
use jetstream::consumer::{pull, AckPolicy};
use jetstream::stream::{RetentionPolicy, StorageType};

use crate::amqp::{payload_of, warmed_run, Run};
use crate::probe::{handle, progress, runtime, stream_bus_run, Sink, StreamWork};
use crate::report::Row;
use crate::Scale;

/// Messages pulled at most per batch on both sides (the bus's prefetch).
const PREFETCH: usize = 1_000;
/// Messages before a measurement starts.
const WARMUP: u64 = 500;
/// Body size.
const BODY: usize = 200;
/// The bus endpoint.
const ENDPOINT: &str = "bench-stream";

/// Whether the server answers, so the NATS case can be skipped with a reason if not.
pub fn reachable(url: &str) -> Result<(), String> {
    runtime().block_on(async {
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url);
        match tokio::time::timeout(Duration::from_secs(6), connect).await {
            Ok(Ok(client)) => {
                let _ = client.drain().await;
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".into()),
        }
    })
}

/// A unique prefix: subjects `<p>.…`, streams `<P>_…`.
fn unique() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("bench_{}", &id[id.len() - 10..])
}

/// Delete every stream whose name starts with `prefix`.
async fn delete_streams(js: &jetstream::Context, prefix: &str) {
    let mut names = js.stream_names();
    let mut doomed = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if name.starts_with(prefix) {
            doomed.push(name);
        }
    }
    for name in doomed {
        if js.delete_stream(&name).await.is_err() {
            progress(format!("cleanup: stream {name} left behind"));
        }
    }
}

/// The bus's run with `concurrency` handlers at once (1 matches the raw loop; 16 is the
/// endpoint's default), its acks confirmed by the server (the default) or not (as raw).
fn bus_throughput(url: &str, n: u64, concurrency: usize, confirm_acks: bool) -> Run {
    runtime().block_on(async {
        let prefix = unique();
        let naming = Naming {
            subject_prefix: prefix.clone(),
            stream_prefix: prefix.to_uppercase(),
            ..Naming::default()
        };
        let transport = NatsTransport::connect(
            NatsConfig::new(url)
                .connection_name("bench-bus")
                .confirm_acks(confirm_acks)
                .naming(naming)
                .publish_timeout(Duration::from_secs(60)),
        )
        .await
        .expect("bus connects");
        let js = transport.jetstream().clone();
        let run = stream_bus_run(
            transport,
            ENDPOINT,
            (PREFETCH, concurrency),
            (BODY, WARMUP, n),
            "bus NATS run",
        )
        .await;
        delete_streams(&js, &prefix.to_uppercase()).await;
        run
    })
}

fn raw_throughput(url: &str, n: u64) -> Run {
    runtime().block_on(async {
        let prefix = unique();
        let client = async_nats::ConnectOptions::new()
            .name("bench-raw")
            .connect(url)
            .await
            .expect("raw async-nats connection");
        let js = jetstream::new(client.clone());
        let subject = format!("{prefix}.work");
        let stream_name = format!("{}_WORK", prefix.to_uppercase());
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: stream_name.clone(),
                subjects: vec![subject.clone()],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .expect("create raw stream");
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await
            .expect("create raw consumer");
        let sink = Sink::new();
        let s = sink.clone();
        let consuming = tokio::spawn(async move {
            loop {
                let mut batch = match consumer
                    .batch()
                    .max_messages(PREFETCH)
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await
                {
                    Ok(b) => b,
                    Err(e) => panic!("fetch failed: {e}"),
                };
                while let Some(m) = batch.next().await {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => panic!("fetch failed: {e}"),
                    };
                    let work: StreamWork =
                        serde_json::from_slice(&m.payload).expect("decode raw message");
                    handle(s.clone(), work.sent_ns)
                        .await
                        .expect("handler succeeds");
                    m.ack().await.expect("ack");
                }
            }
        });
        let payload = payload_of(BODY);
        let send = || {
            let js = js.clone();
            let subject = subject.clone();
            let payload = payload.clone();
            move |seq| {
                let js = js.clone();
                let subject = subject.clone();
                let payload = payload.clone();
                async move {
                    let body = serde_json::to_vec(&StreamWork {
                        seq,
                        sent_ns: 0,
                        payload: String::clone(&payload),
                    })
                    .map_err(|e| e.to_string())?;
                    js.publish(subject, body.into())
                        .await
                        .map_err(|e| e.to_string())?
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            }
        };
        let run = warmed_run(&sink, WARMUP, n, "raw NATS run", send).await;
        consuming.abort();
        delete_streams(&js, &stream_name).await;
        let _ = client.drain().await;
        run
    })
}

/// End-to-end throughput and client CPU, raw async-nats first, then the bus.
pub fn end_to_end(scale: &Scale, url: &str) -> Vec<Row> {
    let case = "nats end to end, 200 B";
    let n = scale.stream_messages;
    progress(format!("{case}: raw async-nats ({n} msgs)"));
    let raw = raw_throughput(url, n);
    progress(format!("{case}: bus ({n} msgs)"));
    let bus = bus_throughput(url, n, 1, true);
    progress(format!("{case}: bus, acks not confirmed ({n} msgs)"));
    let unconfirmed = bus_throughput(url, n, 1, false);
    progress(format!("{case}: bus, 16 handlers ({n} msgs)"));
    let bus16 = bus_throughput(url, n, 16, true);
    let note = "async-nats: work-queue stream, PubAcks, pull batches, acks";
    vec![
        Row::new(case, "throughput", "msg/s", bus.rate, raw.rate, true).note(note),
        Row::new(
            case,
            "client CPU per message",
            "µs",
            bus.cpu_us,
            raw.cpu_us,
            false,
        )
        .note(note),
        Row::new(
            format!("{case}, bus acks not confirmed"),
            "throughput",
            "msg/s",
            unconfirmed.rate,
            raw.rate,
            true,
        )
        .note("same, both acks sent and not awaited"),
        Row::new(
            format!("{case}, bus 16 handlers (its default)"),
            "throughput",
            "msg/s",
            bus16.rate,
            raw.rate,
            true,
        )
        .note("same, raw one message at a time"),
    ]
}

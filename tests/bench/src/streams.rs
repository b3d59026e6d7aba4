//! Redis Streams end to end against the local server: the bus on the Redis transport against
//! the raw `redis` crate doing the same work (XADD, 1,000 in flight pipelined on one
//! multiplexed connection; one consumer of a consumer group reading with `XREADGROUP COUNT 100
//! BLOCK 1000`, an `XACK` per message, one message handled at a time).
//!
//! Every run uses keys under a unique prefix and deletes them at the end.

use std::time::Duration;

use bus_transport_redis::{RedisConfig, RedisTransport};
use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::amqp::{payload_of, warmed_run, Run};
use crate::probe::{handle, progress, runtime, stream_bus_run, Sink, StreamWork};
use crate::report::Row;
use crate::Scale;

/// Entries read at most per `XREADGROUP` on both sides (the bus's prefetch).
const COUNT: usize = 100;
/// Messages before a measurement starts.
const WARMUP: u64 = 500;
/// Body size.
const BODY: usize = 200;
/// The bus endpoint.
const ENDPOINT: &str = "bench-stream";

async fn connection(url: &str) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    // Past the block timeout of XREADGROUP, and a full window of XADDs under load.
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())
}

/// Whether the server answers, so the Redis case can be skipped with a reason if not.
pub fn reachable(url: &str) -> Result<(), String> {
    runtime().block_on(async {
        let ping = async {
            let mut conn = connection(url).await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("no answer within 5 s".into()),
        }
    })
}

/// A unique key prefix.
fn unique() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("bench-{}", &id[id.len() - 10..])
}

/// Delete every key under `prefix`.
async fn delete_keys(url: &str, prefix: &str) {
    let Ok(mut conn) = connection(url).await else {
        progress("cleanup: Redis unreachable; keys left behind");
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let deleted: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        if deleted.is_err() {
            progress(format!("cleanup: keys under {prefix} left behind"));
        }
    }
}

/// The bus's run with `concurrency` handlers at once (1 matches the raw loop; 16 is the
/// endpoint's default).
fn bus_throughput(url: &str, n: u64, concurrency: usize) -> Run {
    runtime().block_on(async {
        let prefix = unique();
        let transport = RedisTransport::connect(
            RedisConfig::new(url)
                .key_prefix(prefix.clone())
                .consumer_name("bench-bus")
                .operation_timeout(Duration::from_secs(60)),
        )
        .await
        .expect("bus connects");
        let run = stream_bus_run(
            transport,
            ENDPOINT,
            (COUNT, concurrency),
            (BODY, WARMUP, n),
            "bus Redis run",
        )
        .await;
        delete_keys(url, &prefix).await;
        run
    })
}

/// The entries of an `XREADGROUP` reply of one stream: `(id, body)` pairs.
fn entries(reply: Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        let Some(Value::Array(items)) = parts.pop() else {
            continue;
        };
        for item in items {
            let Value::Array(mut pair) = item else {
                continue;
            };
            let (Some(Value::Array(fields)), Some(Value::BulkString(id))) =
                (pair.pop(), pair.pop())
            else {
                continue;
            };
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if let (Value::BulkString(name), Value::BulkString(value)) = (name, value) {
                    if name == b"body" {
                        out.push((id.clone(), value));
                    }
                }
            }
        }
    }
    out
}

fn raw_throughput(url: &str, n: u64) -> Run {
    runtime().block_on(async {
        let prefix = unique();
        let key = format!("{prefix}:raw");
        let mut publisher = connection(url).await.expect("raw redis connection");
        let () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg("raw")
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut publisher)
            .await
            .expect("create raw group");
        let mut reader = connection(url).await.expect("raw redis connection");
        let sink = Sink::new();
        let s = sink.clone();
        let read_key = key.clone();
        let consuming = tokio::spawn(async move {
            loop {
                let reply: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("raw")
                    .arg("raw-1")
                    .arg("COUNT")
                    .arg(COUNT)
                    .arg("BLOCK")
                    .arg(1_000)
                    .arg("STREAMS")
                    .arg(&read_key)
                    .arg(">")
                    .query_async(&mut reader)
                    .await
                    .expect("XREADGROUP");
                for (id, body) in entries(reply) {
                    let work: StreamWork =
                        serde_json::from_slice(&body).expect("decode raw message");
                    handle(s.clone(), work.sent_ns)
                        .await
                        .expect("handler succeeds");
                    let _: i64 = redis::cmd("XACK")
                        .arg(&read_key)
                        .arg("raw")
                        .arg(id)
                        .query_async(&mut reader)
                        .await
                        .expect("XACK");
                }
            }
        });
        let payload = payload_of(BODY);
        let send = || {
            let conn = publisher.clone();
            let key = key.clone();
            let payload = payload.clone();
            move |seq| {
                let mut conn = conn.clone();
                let key = key.clone();
                let payload = payload.clone();
                async move {
                    let body = serde_json::to_vec(&StreamWork {
                        seq,
                        sent_ns: 0,
                        payload: String::clone(&payload),
                    })
                    .map_err(|e| e.to_string())?;
                    redis::cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("body")
                        .arg(body)
                        .query_async::<String>(&mut conn)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            }
        };
        let run = warmed_run(&sink, WARMUP, n, "raw Redis run", send).await;
        consuming.abort();
        delete_keys(url, &prefix).await;
        run
    })
}

/// End-to-end throughput and client CPU, raw `redis` first, then the bus.
pub fn end_to_end(scale: &Scale, url: &str) -> Vec<Row> {
    let case = "redis end to end, 200 B";
    let n = scale.stream_messages;
    progress(format!("{case}: raw redis ({n} msgs)"));
    let raw = raw_throughput(url, n);
    progress(format!("{case}: bus ({n} msgs)"));
    let bus = bus_throughput(url, n, 1);
    progress(format!("{case}: bus, 16 handlers ({n} msgs)"));
    let bus16 = bus_throughput(url, n, 16);
    let note = "redis: XADD, XREADGROUP COUNT 100, XACK";
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

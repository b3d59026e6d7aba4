//! Delayed retries: the runtime sends a copy with a delay and acks the original, so the copy
//! must wait somewhere that outlives the process. Servers before 2.12 cannot schedule a
//! message, so the copy is published to the endpoint's delay stream with a `bus-deliver-at`
//! header; every running instance of the endpoint pulls from that stream's shared durable
//! consumer, parks a message that is not due with a nak delayed until it is (JetStream keeps
//! the timer, so no process holds it in memory), and republishes a due one to the endpoint's
//! command subject, acking it only after JetStream stored the copy. The copy keeps its
//! `Nats-Msg-Id`, so moving it twice (after a crash between publish and ack) stores it once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use bus_core::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::timeout;

use crate::acks::{settle, signal, ACK};
use crate::subscription::{is_stopped, pause_or_stop, reconnected, stopped};
use crate::topology::{ensure_consumer, ConsumerKind};
use crate::transport::NatsTransport;
use crate::wire;

/// Largest batch of waiting retries pulled at once.
const BATCH: usize = 64;
/// Due within this margin counts as due.
const EARLY: Duration = Duration::from_millis(5);
/// How long a retry that could not be moved waits before the next try.
const RETRY_MOVE: Duration = Duration::from_secs(1);

/// Move the endpoint's due delayed retries back to its input, until stopped.
pub(crate) async fn move_due(
    transport: NatsTransport,
    endpoint: String,
    mut stop: watch::Receiver<bool>,
) {
    let inner = &transport.inner;
    let config = &inner.config;
    let mut connections = inner.connections.clone();
    let mut consumer: Option<PullConsumer> = None;
    let mut pause = Duration::from_millis(200);
    while !is_stopped(&stop) {
        let c = match &consumer {
            Some(c) => c.clone(),
            None => {
                match ensure_consumer(&inner.js, config, &endpoint, ConsumerKind::Delay).await {
                    Ok(c) => {
                        consumer = Some(c.clone());
                        c
                    }
                    Err(error) => {
                        tracing::warn!(%endpoint, %error, "cannot reach the delay consumer; retrying");
                        if pause_or_stop(pause, &mut stop).await {
                            break;
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
        };
        // As for the input: a reconnect ends the pull, which the server may have forgotten.
        connections.mark_unchanged();
        let request = c
            .batch()
            .max_messages(BATCH)
            .expires(config.fetch_wait)
            .messages();
        let mut batch = match timeout(config.request_timeout, request).await {
            Ok(Ok(b)) => b,
            _ => {
                consumer = None;
                if pause_or_stop(pause, &mut stop).await {
                    break;
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        pause = Duration::from_millis(200);
        let limit = config.fetch_wait + Duration::from_secs(10);
        loop {
            // A retry that arrived is moved first; a stop ends the wait for more.
            let next = tokio::select! {
                biased;
                next = timeout(limit, batch.next()) => next,
                () = reconnected(&mut connections) => break,
                () = stopped(&mut stop) => break,
            };
            let Ok(Some(item)) = next else {
                break;
            };
            match item {
                Ok(message) => move_one(&transport, &endpoint, message).await,
                Err(error) => {
                    tracing::debug!(%endpoint, %error, "delay pull ended with an error");
                    consumer = None;
                }
            }
        }
    }
    tracing::debug!(%endpoint, "stopped moving delayed retries");
}

/// Park a retry until it is due, or move it to the endpoint's input.
async fn move_one(transport: &NatsTransport, endpoint: &str, message: jetstream::Message) {
    let inner = &transport.inner;
    let config = &inner.config;
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let client = &inner.client;
    let headers = message.headers.clone().unwrap_or_default();
    let due_ms: u64 = headers
        .get(wire::DELIVER_AT)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0);
    let due = UNIX_EPOCH + Duration::from_millis(due_ms);
    if let Ok(wait) = due.duration_since(SystemTime::now()) {
        if wait > EARLY {
            signal(client, reply, AckKind::Nak(Some(wait)).into()).await;
            return;
        }
    }
    let mut out = HeaderMap::new();
    for (name, values) in headers.iter() {
        let n: &str = name.as_ref();
        if n == wire::DELIVER_AT {
            continue;
        }
        for v in values {
            out.append(name.clone(), v.clone());
        }
    }
    let subject = config.naming.command_subject(endpoint);
    let publish = PublishMessage::build()
        .payload(message.payload.clone())
        .headers(out);
    let stored = async {
        inner
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    };
    match timeout(config.publish_timeout, stored).await {
        Ok(Ok(_)) => {
            if let Err(error) = settle(client, reply, ACK, config.request_timeout).await {
                // It comes back after the ack wait; the move is then deduplicated.
                tracing::debug!(%endpoint, %error, "ack of a moved retry failed");
            }
        }
        other => {
            let error = match other {
                Ok(Err(e)) => e,
                _ => "no publish ack in time".into(),
            };
            tracing::warn!(%endpoint, %error, "a due delayed retry could not be moved; trying again shortly");
            signal(client, reply, Bytes::from(AckKind::Nak(Some(RETRY_MOVE)))).await;
        }
    }
}

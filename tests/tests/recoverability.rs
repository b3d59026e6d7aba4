//! Recoverability on the in-memory transport: immediate and delayed retries with exact attempt
//! counts, the error queue (byte-identical body, failure headers), bad input, panics, timeouts,
//! and the outbox (a failed attempt's messages are never emitted).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_core::{
    decode_envelope, header, Body, Bus, Command, Destination, Envelope, Event, HandlerError,
    Headers, MessageContext, Outgoing, SendOptions, State, Transport,
};
use bus_tests::{eventually, Ledger};
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[command(name = "t.retry.Charge", endpoint = "t-retry")]
struct Charge {
    id: String,
    /// Attempts that fail before one succeeds; `u32::MAX` never succeeds.
    fail_times: u32,
}

#[bus_core::handler]
async fn charge(
    cmd: Charge,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    ledger.record(format!("attempt/{}", cmd.id), "charge");
    ledger.note(format!("{} attempt {}", cmd.id, ctx.attempt()));
    if ctx.attempt() <= cmd.fail_times {
        return Err(
            std::io::Error::other(format!("card service unavailable for {}", cmd.id)).into(),
        );
    }
    ledger.record(format!("done/{}", cmd.id), "charge");
    Ok(())
}

async fn retry_bus(transport: &MemoryTransport, ledger: &Ledger) -> Bus {
    Bus::builder()
        .transport(transport.clone())
        .host(["t-retry"])
        .state(ledger.clone())
        .endpoint("t-retry", |e| {
            e.immediate_retries(2)
                .delayed_retries(2, Duration::from_secs(10))
                .concurrency(4)
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_succeeds_on_retry_with_exact_attempts() {
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();
    let bus = retry_bus(&transport, &ledger).await;
    bus.send(Charge {
        id: "t1".into(),
        fail_times: 2,
    })
    .await
    .unwrap();
    // Five failures cross a delayed retry (10 s, paused clock).
    bus.send(Charge {
        id: "t2".into(),
        fail_times: 4,
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(120), || ledger.count("done/t1") == 1
            && ledger.count("done/t2") == 1)
        .await
    );
    bus.shutdown().await;
    assert_eq!(
        ledger.count("attempt/t1"),
        3,
        "fails twice, then succeeds: 3 attempts"
    );
    assert_eq!(ledger.count("attempt/t2"), 5);
    assert!(transport.error_queue("t-retry").is_empty());
    let stats = bus.stats();
    assert_eq!(stats.handled, 2);
    assert_eq!(stats.failed_attempts, 6);
    assert_eq!(stats.delayed_retries, 1);
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_end_in_the_error_queue_with_the_body_unchanged() {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    let bus = retry_bus(&transport, &ledger).await;
    // Published raw, with formatting the bus would never produce, to prove the bytes are kept.
    let body = br#"{ "id" : "poison",   "fail_times": 4294967295 }"#.to_vec();
    let headers = Headers {
        message_id: "m-poison".into(),
        message_type: "t.retry.Charge".into(),
        content_type: "application/json".into(),
        custom: [("tenant".to_string(), "acme".to_string())].into(),
        ..Headers::default()
    };
    transport
        .send(Outgoing {
            destination: Destination::Endpoint("t-retry".into()),
            envelope: Envelope::from_bytes(headers, body.clone()),
            delay: None,
            deliver_at: None,
        })
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(600), || transport
            .error_queue("t-retry")
            .len()
            == 1)
        .await
    );
    bus.shutdown().await;

    assert_eq!(
        ledger.count("attempt/poison"),
        9,
        "(2 immediate + 1) x (2 delayed + 1) attempts"
    );
    let attempts: Vec<String> = ledger.notes();
    assert_eq!(attempts.last().unwrap(), "poison attempt 9");
    // Backoff: 10 s then 20 s.
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    let dead = transport.error_queue("t-retry");
    let dead = &dead[0];
    match &dead.body {
        bus_core::Body::Bytes(b) => assert_eq!(b.as_ref(), body.as_slice(), "body byte-identical"),
        other => panic!("error queue must hold bytes, got {other:?}"),
    }
    let h = &dead.headers;
    assert_eq!(h.message_id, "m-poison");
    assert_eq!(h.get("tenant"), Some("acme"), "original headers kept");
    assert_eq!(h.get(header::FAILURE_REASON), Some("handler-error"));
    assert_eq!(
        h.get(header::FAILURE_ERROR_TYPE),
        Some("std::io::error::Error")
    );
    assert_eq!(
        h.get(header::FAILURE_ERROR),
        Some("card service unavailable for poison")
    );
    assert_eq!(h.get(header::FAILURE_ENDPOINT), Some("t-retry"));
    assert_eq!(h.get(header::FAILURE_ATTEMPTS), Some("9"));
    assert!(h
        .get(header::FAILURE_HANDLER)
        .unwrap()
        .ends_with("::charge"));
    assert!(h.get(header::FAILURE_TIME).unwrap().ends_with('Z'));
    assert_eq!(
        transport.depth("t-retry"),
        Some(0),
        "nothing left in the source queue"
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_queue_keeps_typed_messages_as_bytes_and_they_can_be_replayed() {
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();
    let bus = retry_bus(&transport, &ledger).await;
    let poison = Charge {
        id: "typed".into(),
        fail_times: u32::MAX,
    };
    bus.send(poison.clone()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(600), || transport
            .error_queue("t-retry")
            .len()
            == 1)
        .await
    );

    let dead = transport.drain_error_queue("t-retry").remove(0);
    match &dead.body {
        bus_core::Body::Bytes(b) => {
            assert_eq!(b.as_ref(), serde_json::to_vec(&poison).unwrap().as_slice())
        }
        other => panic!("error queue must hold bytes, got {other:?}"),
    }
    // typetag: decode without knowing the type, print it, inspect it, fix it, send it again.
    let mut any = decode_envelope(bus.codecs(), &dead).unwrap();
    assert_eq!(any.message_name(), "t.retry.Charge");
    assert!(format!("{any:?}").contains("typed"));
    assert_eq!(any.downcast_ref::<Charge>(), Some(&poison));
    let mut fixed = any.downcast_ref::<Charge>().unwrap().clone();
    fixed.fail_times = 0;
    any = Box::new(fixed);
    bus.dispatch_any(any.as_ref(), SendOptions::new())
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || ledger.count("done/typed") == 1).await);
    bus.shutdown().await;
}

// ---- bad input goes straight to the error queue ------------------------------------------

static BAD_CALLS: AtomicU32 = AtomicU32::new(0);

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.bad.Parse", endpoint = "t-bad")]
struct Parse {
    n: u32,
}

#[bus_core::handler]
async fn parse(cmd: Parse, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    BAD_CALLS.fetch_add(1, Ordering::SeqCst);
    ledger.record(cmd.n.to_string(), "parse");
    Ok(())
}

fn raw(message_type: &str, content_type: &str, body: &[u8], id: &str) -> Outgoing {
    Outgoing {
        destination: Destination::Endpoint("t-bad".into()),
        envelope: Envelope::from_bytes(
            Headers {
                message_id: id.into(),
                message_type: message_type.to_string().into(),
                content_type: content_type.to_string().into(),
                ..Headers::default()
            },
            body.to_vec(),
        ),
        delay: None,
        deliver_at: None,
    }
}

#[tokio::test]
async fn malformed_and_unknown_messages_go_to_the_error_queue_at_once_and_good_ones_flow() {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    let bus = Bus::builder()
        .transport(transport.clone())
        .host(["t-bad"])
        .state(ledger.clone())
        .endpoint("t-bad", |e| {
            e.immediate_retries(5)
                .delayed_retries(5, Duration::from_secs(1))
        })
        .start()
        .await
        .unwrap();
    let json = "application/json";
    let bad: Vec<(Outgoing, &str)> = vec![
        (
            raw("t.bad.Parse", json, b"[]", "b1"),
            "deserialization-failed",
        ),
        (
            raw("t.bad.Parse", json, b"", "b2"),
            "deserialization-failed",
        ),
        (
            raw("t.bad.Parse", json, &[0xff, 0xfe, 0x00, 0x9c], "b3"),
            "deserialization-failed",
        ),
        (
            raw("t.bad.Parse", json, br#"{"n": 1} trailing"#, "b4"),
            "deserialization-failed",
        ),
        (
            raw("t.bad.Nope", json, br#"{"n": 1}"#, "b5"),
            "unknown-message-type",
        ),
        (raw("", json, br#"{"n": 1}"#, "b6"), "missing-header"),
        (
            raw("t.bad.Parse", json, br#"{"n": 1}"#, ""),
            "missing-header",
        ),
        (
            raw(
                "t.bad.Parse",
                "application/x-protobuf",
                br#"{"n": 1}"#,
                "b8",
            ),
            "unsupported-content-type",
        ),
    ];
    let expected: Vec<&str> = bad.iter().map(|(_, r)| *r).collect();
    for (i, (out, _)) in bad.into_iter().enumerate() {
        transport.send(out).await.unwrap();
        bus.send(Parse { n: i as u32 }).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            transport.error_queue("t-bad").len() == expected.len()
                && ledger.distinct() == expected.len()
        })
        .await
    );
    bus.shutdown().await;
    assert_eq!(
        BAD_CALLS.load(Ordering::SeqCst),
        expected.len() as u32,
        "only good messages reached the handler"
    );
    let mut reasons: Vec<String> = transport
        .error_queue("t-bad")
        .iter()
        .map(|e| {
            assert_eq!(
                e.headers.get(header::FAILURE_ATTEMPTS),
                Some("1"),
                "no retries for bad input"
            );
            e.headers.get(header::FAILURE_REASON).unwrap().to_string()
        })
        .collect();
    let mut expected: Vec<String> = expected.into_iter().map(String::from).collect();
    reasons.sort();
    expected.sort();
    assert_eq!(reasons, expected);
    assert_eq!(bus.stats().failed_attempts, 0);
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.bad.Typed", endpoint = "t-bad-typed")]
struct Typed {
    n: u32,
}

#[bus_core::handler]
async fn typed(cmd: Typed, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(cmd.n.to_string(), "typed");
    Ok(())
}

/// On the typed in-memory transport a body is a Rust value: one of another type than its
/// wire name says (a bridge or a test can put one there) is bad input, not a handler call.
#[tokio::test]
async fn a_typed_body_of_another_type_goes_to_the_error_queue_at_once() {
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();
    let bus = Bus::builder()
        .transport(transport.clone())
        .host(["t-bad-typed"])
        .state(ledger.clone())
        .endpoint("t-bad-typed", |e| e.immediate_retries(5))
        .start()
        .await
        .unwrap();
    let wrong = Outgoing {
        destination: Destination::Endpoint("t-bad-typed".into()),
        envelope: Envelope {
            headers: Arc::new(Headers {
                message_id: "wrong-1".into(),
                message_type: "t.bad.Typed".into(),
                content_type: "application/json".into(),
                ..Headers::default()
            }),
            body: Body::Message(Arc::new(Parse { n: 1 })),
        },
        delay: None,
        deliver_at: None,
    };
    transport.send(wrong).await.unwrap();
    bus.send(Typed { n: 2 }).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            transport.error_queue("t-bad-typed").len() == 1 && ledger.distinct() == 1
        })
        .await
    );
    bus.shutdown().await;
    assert_eq!(ledger.count("2"), 1, "the good message was handled");
    let dead = transport.error_queue("t-bad-typed");
    let headers = &dead[0].headers;
    assert_eq!(headers.message_id, "wrong-1");
    assert_eq!(
        headers.get(header::FAILURE_REASON),
        Some("deserialization-failed")
    );
    assert_eq!(headers.get(header::FAILURE_ATTEMPTS), Some("1"));
    let error = headers.get(header::FAILURE_ERROR).unwrap();
    assert!(
        error.contains("t.bad.Parse") && error.contains("t.bad.Typed"),
        "{error}"
    );
    assert_eq!(bus.stats().failed_attempts, 0);
}

// ---- panics and timeouts -----------------------------------------------------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.iso.Risky", endpoint = "t-iso")]
struct Risky {
    n: u32,
    mode: String,
}

#[bus_core::handler]
async fn risky(cmd: Risky, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    match cmd.mode.as_str() {
        "panic" => panic!("boom on {}", cmd.n),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    ledger.record(cmd.n.to_string(), "risky");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn panics_and_timeouts_fail_one_message_and_the_rest_go_on() {
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();
    let bus = Bus::builder()
        .transport(transport.clone())
        .host(["t-iso"])
        .state(ledger.clone())
        .endpoint("t-iso", |e| {
            e.immediate_retries(1)
                .delayed_retries(0, Duration::ZERO)
                .handler_timeout(Duration::from_secs(5))
                .concurrency(2)
        })
        .start()
        .await
        .unwrap();
    for n in 0..20 {
        let mode = match n {
            3 => "panic",
            7 => "hang",
            _ => "ok",
        };
        bus.send(Risky {
            n,
            mode: mode.into(),
        })
        .await
        .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(60), || {
            ledger.distinct() == 18 && transport.error_queue("t-iso").len() == 2
        })
        .await
    );
    bus.shutdown().await;
    let dead = transport.error_queue("t-iso");
    let find = |reason: &str| {
        dead.iter()
            .find(|e| e.headers.get(header::FAILURE_REASON) == Some(reason))
            .unwrap_or_else(|| panic!("no {reason} in {dead:?}"))
            .clone()
    };
    let panicked = find("panic");
    assert_eq!(
        panicked.headers.get(header::FAILURE_ERROR),
        Some("boom on 3")
    );
    assert_eq!(panicked.headers.get(header::FAILURE_ATTEMPTS), Some("2"));
    let timed_out = find("timeout");
    assert_eq!(timed_out.headers.get(header::FAILURE_ATTEMPTS), Some("2"));
    assert!(timed_out
        .headers
        .get(header::FAILURE_ERROR)
        .unwrap()
        .contains("5s"));
}

// ---- the outbox: a failed attempt emits nothing ------------------------------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.outbox.Order", endpoint = "t-outbox")]
struct Order {
    id: u32,
    fail_times: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "t.outbox.Ordered")]
struct Ordered {
    id: u32,
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.outbox.Ship", endpoint = "t-outbox-ship")]
struct Ship {
    id: u32,
}

#[bus_core::handler]
async fn order(cmd: Order, ctx: MessageContext) -> Result<(), HandlerError> {
    ctx.publish(Ordered { id: cmd.id }).await?;
    ctx.send(Ship { id: cmd.id }).await?;
    if ctx.attempt() <= cmd.fail_times {
        return Err(HandlerError::new("failed after sending"));
    }
    Ok(())
}

#[bus_core::handler(endpoint = "t-outbox-ship")]
async fn on_ordered(evt: Ordered, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(format!("ordered/{}", evt.id), "ship");
    Ok(())
}

#[bus_core::handler]
async fn ship(cmd: Ship, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(format!("ship/{}", cmd.id), "ship");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn messages_of_a_failed_attempt_are_never_emitted_and_once_after_success() {
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();
    let bus = Bus::builder()
        .transport(transport.clone())
        .host(["t-outbox", "t-outbox-ship"])
        .state(ledger.clone())
        .endpoint("t-outbox", |e| {
            e.immediate_retries(2).delayed_retries(0, Duration::ZERO)
        })
        .start()
        .await
        .unwrap();
    bus.send(Order {
        id: 1,
        fail_times: 2,
    })
    .await
    .unwrap(); // succeeds on the third attempt
    bus.send(Order {
        id: 2,
        fail_times: u32::MAX,
    })
    .await
    .unwrap(); // never succeeds
    assert!(
        eventually(Duration::from_secs(10), || {
            ledger.total() == 2 && transport.error_queue("t-outbox").len() == 1
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    bus.shutdown().await;
    assert_eq!(ledger.count("ordered/1"), 1);
    assert_eq!(ledger.count("ship/1"), 1);
    assert_eq!(ledger.count("ordered/2"), 0);
    assert_eq!(ledger.count("ship/2"), 0);
}

#[tokio::test]
async fn a_context_used_after_its_handler_finished_refuses_to_send() {
    #[derive(Clone, Default)]
    struct Stash(Arc<std::sync::Mutex<Option<MessageContext>>>);

    async fn keep(
        _: Ship,
        ctx: MessageContext,
        State(stash): State<Stash>,
    ) -> Result<(), HandlerError> {
        *stash.0.lock().unwrap() = Some(ctx);
        Ok(())
    }
    let stash = Stash::default();
    let bus = Bus::builder()
        .transport(MemoryTransport::new())
        .without_discovery()
        .handler("t-outbox-ship", keep)
        .state(stash.clone())
        .start()
        .await
        .unwrap();
    bus.send(Ship { id: 9 }).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || stash.0.lock().unwrap().is_some()).await);
    bus.shutdown().await;
    let ctx = stash.0.lock().unwrap().take().unwrap();
    let err = ctx.publish(Ordered { id: 9 }).await.unwrap_err();
    assert!(matches!(err, bus_core::BusError::ContextClosed), "{err}");
}

// ---- idempotent consumer -----------------------------------------------------------------

#[tokio::test]
async fn with_an_inbox_a_message_delivered_twice_has_its_side_effect_once() {
    let ledger = Ledger::new();
    async fn count(cmd: Ship, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
        ledger.record(cmd.id.to_string(), "inbox");
        Ok(())
    }
    let bus = Bus::builder()
        .transport(MemoryTransport::new())
        .without_discovery()
        .handler("t-outbox-ship", count)
        .state(ledger.clone())
        .endpoint("t-outbox-ship", |e| {
            e.inbox(bus_core::MemoryInbox::new(1_000))
        })
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        bus.send_with(Ship { id: 5 }, SendOptions::new().message_id("same-id"))
            .await
            .unwrap();
    }
    bus.send_with(Ship { id: 6 }, SendOptions::new().message_id("other-id"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || bus.stats().duplicates_skipped
            == 2
            && ledger.total() == 2)
        .await
    );
    bus.shutdown().await;
    assert_eq!(ledger.count("5"), 1, "side effect once");
    assert_eq!(ledger.count("6"), 1);
}

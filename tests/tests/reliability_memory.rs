//! Reliability on the in-memory transport (RELIABILITY.md part C, and volume): every test is
//! checked by the tally (lost, phantom, duplicates) and prints one `RELIABILITY ...` line.
//! Broker faults (part B) do not apply to an in-process transport; abandoned deliveries (the
//! in-process analogue of a killed consumer) are covered by the shutdown test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{
    header, Bus, BusError, CodecError, Destination, Envelope, HandlerError, Headers,
    MessageContext, Outgoing, SendOptions, State, Transport,
};
use bus_tests::eventually;
use bus_tests::faulty::FailingErrorQueue;
use bus_tests::messages::{Risky, Work};
use bus_tests::reliability::{report, risky, tallied, Tally, Tier};
use bus_transport_memory::MemoryTransport;

fn bus(transport: Arc<dyn Transport>, endpoint: &str, tally: &Tally) -> bus_core::BusBuilder {
    Bus::builder()
        .transport_arc(transport)
        .without_discovery()
        .handler(endpoint.to_string(), tallied)
        .route::<Work>(endpoint)
        .state(tally.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_over_competing_instances() {
    let n = Tier::current().pick(20_000u64, 100_000);
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new().capacity(2_000));
    let tally = Tally::new();
    let a = bus(transport.clone(), "vol", &tally)
        .endpoint("vol", |e| e.concurrency(8))
        .start()
        .await
        .unwrap();
    let b = bus(transport.clone(), "vol", &tally)
        .endpoint("vol", |e| e.concurrency(8))
        .start()
        .await
        .unwrap();
    for i in 0..n {
        tally.sent(i);
        a.send(Work {
            n: i,
            fail_first: 0,
        })
        .await
        .unwrap();
        tally.confirmed(i);
    }
    assert!(eventually(Duration::from_secs(120), || tally.all_confirmed_handled()).await);
    a.shutdown().await;
    b.shutdown().await;
    report(
        "volume, two competing instances",
        "memory",
        "none",
        &tally.summary(),
        0,
    );
}

#[tokio::test(start_paused = true)]
async fn c19_c20_transient_and_exhausted_failures() {
    let transport = MemoryTransport::new();
    let tally = Tally::new();
    let b = bus(Arc::new(transport.clone()), "c19", &tally)
        .endpoint("c19", |e| {
            e.immediate_retries(2)
                .delayed_retries(1, Duration::from_secs(5))
        })
        .start()
        .await
        .unwrap();
    tally.sent(1);
    b.send(Work {
        n: 1,
        fail_first: 2,
    })
    .await
    .unwrap();
    tally.confirmed(1);
    b.send(Work {
        n: 2,
        fail_first: u32::MAX,
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || tally.handled_count() == 1
            && b.stats().dead_lettered == 1)
        .await
    );
    b.shutdown().await;
    assert_eq!(b.stats().failed_attempts, 2 + 6);
    let dead = transport.error_queue("c19");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers.get(header::FAILURE_ATTEMPTS), Some("6"));
    report(
        "C19 transient failure, C20 exhausted retries",
        "memory",
        "handler errors",
        &tally.summary(),
        0,
    );
}

fn raw(message_type: &str, content_type: &str, id: &str, body: &[u8]) -> Outgoing {
    Outgoing {
        destination: Destination::Endpoint("c21".into()),
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
async fn c21_to_c23_bad_input_goes_to_the_error_queue_at_once() {
    let transport = MemoryTransport::new().serialize(true);
    let tally = Tally::new();
    let b = bus(Arc::new(transport.clone()), "c21", &tally)
        .max_body_size(1024)
        .endpoint("c21", |e| {
            e.immediate_retries(3)
                .delayed_retries(2, Duration::from_secs(1))
        })
        .start()
        .await
        .unwrap();
    let json = "application/json";
    let bad = vec![
        raw("tests.Work", json, "m1", b"[]"),
        raw("tests.Work", json, "m2", b""),
        raw("tests.Work", json, "m3", &[0x9f, 0x00, 0xfe]),
        raw("tests.Work", json, "m4", b"{\"n\": \"\xff\"}"),
        raw("tests.Unknown", json, "m5", b"{}"),
        raw("tests.Work", json, "", br#"{"n":1,"fail_first":0}"#),
        raw("", json, "m7", br#"{"n":1,"fail_first":0}"#),
        raw(
            "tests.Work",
            "application/x-msgpack",
            "m8",
            br#"{"n":1,"fail_first":0}"#,
        ),
        raw("tests.Work", json, "m9", &[b' '; 4096]),
    ];
    let count = bad.len();
    for (i, out) in bad.into_iter().enumerate() {
        transport.send(out).await.unwrap();
        tally.sent(i as u64);
        b.send(Work {
            n: i as u64,
            fail_first: 0,
        })
        .await
        .unwrap();
        tally.confirmed(i as u64);
    }
    let small = bus(Arc::new(transport.clone()), "c21", &Tally::new())
        .max_body_size(8)
        .build()
        .await
        .unwrap();
    let err = small
        .send(Work {
            n: 99,
            fail_first: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::Codec(CodecError::TooLarge { .. })),
        "{err}"
    );
    assert!(
        eventually(Duration::from_secs(10), || tally.all_confirmed_handled()
            && transport.error_queue("c21").len() == count)
        .await
    );
    b.shutdown().await;
    assert_eq!(b.stats().failed_attempts, 0);
    for e in transport.error_queue("c21") {
        assert_eq!(e.headers.get(header::FAILURE_ATTEMPTS), Some("1"));
    }
    let mut s = tally.summary();
    s.sent += count;
    report(
        "C21 malformed bodies, C22 unknown type / missing headers / content type, C23 oversized",
        "memory",
        "9 bad messages sent raw",
        &s,
        0,
    );
}

#[tokio::test(start_paused = true)]
async fn c24_to_c26_panic_timeout_and_failure_after_send() {
    let transport = MemoryTransport::new();
    let tally = Tally::new();
    let downstream = Tally::new();
    let d = bus(Arc::new(transport.clone()), "c26-down", &downstream)
        .start()
        .await
        .unwrap();
    let c = Bus::builder()
        .transport(transport.clone())
        .without_discovery()
        .handler("c24", risky)
        .route::<Work>("c26-down")
        .route::<Risky>("c24")
        .state(tally.clone())
        .endpoint("c24", |e| {
            e.immediate_retries(2)
                .delayed_retries(0, Duration::ZERO)
                .handler_timeout(Duration::from_millis(500))
        })
        .start()
        .await
        .unwrap();
    for (n, mode) in [
        (1u64, "panic"),
        (2, "hang"),
        (3, "send-then-fail"),
        (4, "ok"),
    ] {
        tally.sent(n);
        c.send(Risky {
            n,
            mode: mode.into(),
        })
        .await
        .unwrap();
        if matches!(mode, "ok" | "send-then-fail") {
            tally.confirmed(n);
        }
    }
    assert!(
        eventually(Duration::from_secs(30), || tally.all_confirmed_handled()
            && c.stats().dead_lettered == 2
            && downstream.handled_count() == 1)
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.shutdown().await;
    d.shutdown().await;
    let reasons: Vec<_> = transport
        .error_queue("c24")
        .iter()
        .map(|e| e.headers.get(header::FAILURE_REASON).unwrap().to_string())
        .collect();
    assert!(
        reasons.contains(&"panic".to_string()) && reasons.contains(&"timeout".to_string()),
        "{reasons:?}"
    );
    assert_eq!(downstream.summary().duplicates, 0);
    report(
        "C24 panic, C25 timeout, C26 failure after send",
        "memory",
        "panicking, hanging and failing-after-send handlers",
        &tally.summary(),
        0,
    );
}

#[tokio::test(start_paused = true)]
async fn c27_error_queue_write_fails_and_nothing_is_lost() {
    let memory = MemoryTransport::new();
    let failing = Arc::new(FailingErrorQueue::new(Arc::new(memory.clone()), 3));
    let tally = Tally::new();
    let b = bus(failing.clone(), "c27", &tally)
        .endpoint("c27", |e| {
            e.immediate_retries(0).delayed_retries(0, Duration::ZERO)
        })
        .start()
        .await
        .unwrap();
    b.send(Work {
        n: 1,
        fail_first: u32::MAX,
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || memory.error_queue("c27").len()
            == 1)
        .await
    );
    b.shutdown().await;
    assert_eq!(failing.refused(), 3);
    assert!(tally.summary().redelivered >= 3);
    let mut s = tally.summary();
    s.sent = 1;
    report(
        "C27 error-queue write fails",
        "memory",
        "3 refused error-queue writes",
        &s,
        0,
    );
}

#[tokio::test]
async fn c28_duplicates_with_an_inbox() {
    let tally = Tally::new();
    let b = bus(Arc::new(MemoryTransport::new()), "c28", &tally)
        .endpoint("c28", |e| e.inbox(bus_core::MemoryInbox::new(10_000)))
        .start()
        .await
        .unwrap();
    for n in 0..500u64 {
        tally.sent(n);
        for _ in 0..2 {
            b.send_with(
                Work { n, fail_first: 0 },
                SendOptions::new().message_id(format!("c28-{n}")),
            )
            .await
            .unwrap();
        }
        tally.confirmed(n);
    }
    assert!(
        eventually(Duration::from_secs(30), || tally.all_confirmed_handled()
            && b.stats().duplicates_skipped == 500)
        .await
    );
    b.shutdown().await;
    report(
        "C28 duplicates with the inbox on",
        "memory",
        "every message delivered twice",
        &tally.summary(),
        0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c29_graceful_shutdown_with_handlers_in_flight() {
    async fn slow(
        cmd: Work,
        ctx: MessageContext,
        State(t): State<Tally>,
    ) -> Result<(), HandlerError> {
        t.delivered(cmd.n, ctx.redelivered(), ctx.attempt());
        tokio::time::sleep(Duration::from_millis(u64::from(cmd.fail_first))).await;
        t.handled(cmd.n);
        Ok(())
    }
    let transport = MemoryTransport::new();
    let tally = Tally::new();
    let grace = Duration::from_millis(300);
    let start = || {
        Bus::builder()
            .transport(transport.clone())
            .without_discovery()
            .handler("c29", slow)
            .route::<Work>("c29")
            .state(tally.clone())
            .shutdown_grace(grace)
            .endpoint("c29", |e| e.concurrency(4).prefetch(4))
            .start()
    };
    let b = start().await.unwrap();
    for n in 0..40u64 {
        tally.sent(n);
        b.send(Work {
            n,
            fail_first: if n % 10 == 0 { 3_000 } else { 20 },
        })
        .await
        .unwrap();
        tally.confirmed(n);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = b.shutdown().await;
    assert!(t.elapsed() < grace + Duration::from_secs(1));
    let b = start().await.unwrap();
    assert!(eventually(Duration::from_secs(30), || tally.all_confirmed_handled()).await);
    b.shutdown().await;
    report(
        "C29 graceful shutdown with handlers in flight",
        "memory",
        &format!("shutdown mid-stream (drained: {})", r.drained),
        &tally.summary(),
        0,
    );
}

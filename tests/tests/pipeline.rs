//! The handling pipeline on the in-memory transport: layers added to the bus and to one
//! endpoint see every attempt, in order, and can refuse a message (error queue, reason
//! `rejected`); a panicking layer fails its attempt like a handler; a custom recoverability
//! policy changes how often and when a message is retried, and one that panics sends the
//! message to the error queue; `Bus::run_until` drains and stops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{
    header, Attempts, Bus, BusBuilder, Command, Decision, Failure, FailureReason, HandlerError,
    Layer, LayerFuture, MessageContext, Next, RecoverabilityPolicy, SendOptions, State,
};
use bus_tests::{eventually, Ledger};
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.pipe.Ship", endpoint = "t-pipe-shipping")]
struct Ship {
    id: String,
    /// Attempts that fail before one succeeds; `u32::MAX` never succeeds.
    fail_times: u32,
    /// The error's kind when it fails: `validation` or anything else.
    kind: String,
}

#[derive(Debug)]
struct ValidationError(String);

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid order {}", self.0)
    }
}

impl std::error::Error for ValidationError {}

#[bus_core::handler]
async fn ship(
    cmd: Ship,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    ledger.record(format!("ship/{}", cmd.id), "handler");
    if ctx.attempt() <= cmd.fail_times {
        if cmd.kind == "validation" {
            return Err(ValidationError(cmd.id).into());
        }
        return Err(HandlerError::new(format!("carrier down for {}", cmd.id)));
    }
    ledger.record(format!("shipped/{}", cmd.id), "handler");
    Ok(())
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.pipe.Bill", endpoint = "t-pipe-billing")]
struct Bill {
    id: String,
}

#[bus_core::handler]
async fn bill(cmd: Bill, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(format!("billed/{}", cmd.id), "handler");
    Ok(())
}

/// Records each attempt it sees as `name: id#attempt -> outcome`, in order.
#[derive(Clone)]
struct Recorder {
    name: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn new(name: &'static str, seen: &Arc<Mutex<Vec<String>>>) -> Self {
        Recorder {
            name,
            seen: seen.clone(),
        }
    }
}

impl Layer for Recorder {
    fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let id = ctx.headers().get("order").unwrap_or("?").to_string();
            self.seen
                .lock()
                .unwrap()
                .push(format!("{} in: {id}#{}", self.name, ctx.attempt()));
            let outcome = next.run(ctx).await;
            let result = match &outcome {
                Ok(()) => "ok".to_string(),
                Err(f) => f.reason().as_str().to_string(),
            };
            self.seen.lock().unwrap().push(format!(
                "{} out: {id}#{} {result}",
                self.name,
                ctx.attempt()
            ));
            outcome
        })
    }

    fn name(&self) -> &str {
        self.name
    }
}

/// Refuses messages without a `tenant` header.
struct RequireTenant;

impl Layer for RequireTenant {
    fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            if ctx.headers().get("tenant").is_none() {
                return Err(Failure::reject("no `tenant` header").with_handler("require-tenant"));
            }
            next.run(ctx).await
        })
    }
}

/// Panics on messages whose `order` header is `boom`.
struct Explosive;

impl Layer for Explosive {
    fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            if ctx.headers().get("order") == Some("boom") {
                panic!("the layer blew up");
            }
            next.run(ctx).await
        })
    }
}

/// A bus on `transport` hosting `hosted`, with `ledger` as its state.
fn builder(transport: &MemoryTransport, ledger: &Ledger, hosted: &[&str]) -> BusBuilder {
    Bus::builder()
        .transport(transport.clone())
        .host(hosted.iter().copied())
        .state(ledger.clone())
}

fn order(id: &str) -> SendOptions {
    SendOptions::new()
        .header("order", id)
        .header("tenant", "acme")
}

fn ship_cmd(id: &str, fail_times: u32, kind: &str) -> Ship {
    Ship {
        id: id.into(),
        fail_times,
        kind: kind.into(),
    }
}

#[tokio::test(start_paused = true)]
async fn bus_and_endpoint_layers_see_every_attempt_in_order_with_its_outcome() {
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bus = builder(&transport, &ledger, &["t-pipe-shipping"])
        .layer(Recorder::new("bus", &seen))
        .endpoint("t-pipe-shipping", {
            let seen = seen.clone();
            move |e| {
                e.immediate_retries(2)
                    .delayed_retries(0, Duration::ZERO)
                    .layer(Recorder::new("endpoint", &seen))
            }
        })
        .start()
        .await
        .unwrap();
    bus.send_with(ship_cmd("o1", 2, "transient"), order("o1"))
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || ledger.count("shipped/o1") == 1).await);
    bus.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    let mut expected = Vec::new();
    for (attempt, outcome) in [(1, "handler-error"), (2, "handler-error"), (3, "ok")] {
        expected.push(format!("bus in: o1#{attempt}"));
        expected.push(format!("endpoint in: o1#{attempt}"));
        expected.push(format!("endpoint out: o1#{attempt} {outcome}"));
        expected.push(format!("bus out: o1#{attempt} {outcome}"));
    }
    assert_eq!(seen, expected);
    assert_eq!(ledger.count("ship/o1"), 3);
}

#[tokio::test]
async fn a_layer_refusing_a_message_sends_it_to_the_error_queue_with_its_reason() {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    let bus = builder(&transport, &ledger, &["t-pipe-shipping"])
        .layer(RequireTenant)
        .start()
        .await
        .unwrap();
    bus.send_with(
        ship_cmd("anonymous", 0, "none"),
        SendOptions::new().header("order", "anonymous"),
    )
    .await
    .unwrap();
    bus.send_with(ship_cmd("o2", 0, "none"), order("o2"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || ledger.count("shipped/o2") == 1
            && transport.error_queue("t-pipe-shipping").len() == 1)
        .await
    );
    bus.shutdown().await;
    assert_eq!(
        ledger.count("ship/anonymous"),
        0,
        "the handler never ran for the refused message"
    );
    let dead = transport.error_queue("t-pipe-shipping");
    let h = &dead[0].headers;
    assert_eq!(h.get("order"), Some("anonymous"));
    assert_eq!(h.get(header::FAILURE_REASON), Some("rejected"));
    assert_eq!(h.get(header::FAILURE_ERROR), Some("no `tenant` header"));
    assert_eq!(h.get(header::FAILURE_HANDLER), Some("require-tenant"));
    assert_eq!(h.get(header::FAILURE_ATTEMPTS), Some("1"), "no retries");
    assert_eq!(bus.stats().dead_lettered, 1);
    assert_eq!(bus.stats().handled, 1);
}

#[tokio::test]
async fn a_layer_added_to_one_endpoint_does_not_run_on_another() {
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bus = builder(&transport, &ledger, &["t-pipe-shipping", "t-pipe-billing"])
        .endpoint("t-pipe-billing", {
            let seen = seen.clone();
            move |e| e.layer(Recorder::new("billing", &seen))
        })
        .start()
        .await
        .unwrap();
    for i in 0..5 {
        let id = format!("o{i}");
        bus.send_with(ship_cmd(&id, 0, "none"), order(&id))
            .await
            .unwrap();
        bus.send_with(Bill { id: id.clone() }, order(&id))
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || (0..5)
            .all(|i| ledger.count(&format!("shipped/o{i}")) == 1
                && ledger.count(&format!("billed/o{i}")) == 1))
        .await
    );
    bus.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10, "in and out for each bill: {seen:?}");
    assert!(seen.iter().all(|s| s.starts_with("billing ")), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_layer_fails_its_attempt_and_the_endpoint_goes_on() {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    let bus = builder(&transport, &ledger, &["t-pipe-shipping"])
        .endpoint("t-pipe-shipping", |e| {
            e.immediate_retries(1)
                .delayed_retries(0, Duration::ZERO)
                .concurrency(1)
                .layer(Explosive)
        })
        .start()
        .await
        .unwrap();
    bus.send_with(ship_cmd("boom", 0, "none"), order("boom"))
        .await
        .unwrap();
    bus.send_with(ship_cmd("o3", 0, "none"), order("o3"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || ledger.count("shipped/o3") == 1
            && transport.error_queue("t-pipe-shipping").len() == 1)
        .await
    );
    bus.shutdown().await;
    let dead = transport.error_queue("t-pipe-shipping");
    let h = &dead[0].headers;
    assert_eq!(h.get(header::FAILURE_REASON), Some("panic"));
    assert_eq!(h.get(header::FAILURE_ERROR), Some("the layer blew up"));
    assert_eq!(h.get(header::FAILURE_ATTEMPTS), Some("2"));
    assert_eq!(bus.stats().failed_attempts, 2);
}

/// Validation errors go to the error queue at once; anything else is retried at once until
/// five attempts in all, with no delayed retries.
struct FiveTriesNoValidation;

impl RecoverabilityPolicy for FiveTriesNoValidation {
    fn decide(&self, failure: &Failure, attempts: Attempts) -> Decision {
        if failure.error_type().ends_with("ValidationError") {
            Decision::ErrorQueue
        } else if attempts.total < 5 {
            Decision::RetryNow
        } else {
            Decision::ErrorQueue
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_policy_changes_the_retry_count_and_skips_validation_errors() {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    let bus = builder(&transport, &ledger, &["t-pipe-shipping"])
        .endpoint("t-pipe-shipping", |e| e.policy(FiveTriesNoValidation))
        .start()
        .await
        .unwrap();
    bus.send_with(ship_cmd("flaky", 4, "transient"), order("flaky"))
        .await
        .unwrap();
    bus.send_with(ship_cmd("broken", u32::MAX, "transient"), order("broken"))
        .await
        .unwrap();
    bus.send_with(
        ship_cmd("invalid", u32::MAX, "validation"),
        order("invalid"),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || ledger.count("shipped/flaky")
            == 1
            && transport.error_queue("t-pipe-shipping").len() == 2)
        .await
    );
    bus.shutdown().await;
    // The default policy would make 3 attempts a round and 3 rounds.
    assert_eq!(ledger.count("ship/flaky"), 5, "four failures, then success");
    assert_eq!(ledger.count("ship/broken"), 5);
    assert_eq!(
        ledger.count("ship/invalid"),
        1,
        "validation errors are not retried"
    );
    let dead = transport.error_queue("t-pipe-shipping");
    let attempts_of = |order: &str| {
        dead.iter()
            .find(|e| e.headers.get("order") == Some(order))
            .and_then(|e| e.headers.get(header::FAILURE_ATTEMPTS).map(str::to_string))
    };
    assert_eq!(attempts_of("broken").as_deref(), Some("5"));
    assert_eq!(attempts_of("invalid").as_deref(), Some("1"));
    assert_eq!(bus.stats().delayed_retries, 0);
}

/// Retries after a growing delay, counting attempts across rounds.
struct Spaced;

impl RecoverabilityPolicy for Spaced {
    fn decide(&self, failure: &Failure, attempts: Attempts) -> Decision {
        let _ = failure;
        match attempts.delayed {
            0..=2 => Decision::RetryAfter(Duration::from_secs(u64::from(attempts.total) * 10)),
            _ => Decision::ErrorQueue,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_policy_retrying_after_delays_counts_attempts_across_rounds() {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    let bus = builder(&transport, &ledger, &["t-pipe-shipping"])
        .endpoint("t-pipe-shipping", |e| e.policy(Spaced))
        .start()
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    bus.send_with(ship_cmd("late", u32::MAX, "transient"), order("late"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(600), || transport
            .error_queue("t-pipe-shipping")
            .len()
            == 1)
        .await
    );
    bus.shutdown().await;
    assert_eq!(
        ledger.count("ship/late"),
        4,
        "one attempt a round, four rounds"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(60),
        "10 + 20 + 30 s of delays: {:?}",
        started.elapsed()
    );
    let dead = transport.error_queue("t-pipe-shipping");
    assert_eq!(dead[0].headers.get(header::FAILURE_ATTEMPTS), Some("4"));
    assert_eq!(bus.stats().delayed_retries, 3);
}

#[tokio::test]
async fn run_until_starts_the_bus_and_drains_it_when_the_signal_comes() {
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();
    let bus = builder(&transport, &ledger, &["t-pipe-billing"])
        .build()
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let bus = bus.clone();
        async move {
            bus.run_until(async {
                stopped.await.ok();
            })
            .await
        }
    });
    assert!(eventually(Duration::from_secs(10), || bus.health().is_ready()).await);
    for i in 0..20 {
        bus.send(Bill {
            id: format!("r{i}"),
        })
        .await
        .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || (0..20)
            .all(|i| ledger.count(&format!("billed/r{i}")) == 1))
        .await
    );
    stop.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("run_until returns once the signal came")
        .unwrap()
        .unwrap();
    assert!(report.drained);
    assert!(!bus.health().running);
    assert_eq!(bus.stats().handled, 20);
}

/// A policy with a bug: it panics.
struct Panicky;

impl RecoverabilityPolicy for Panicky {
    fn decide(&self, _: &Failure, _: Attempts) -> Decision {
        panic!("policy bug")
    }
}

#[tokio::test]
async fn a_panicking_policy_sends_the_message_to_the_error_queue_and_the_endpoint_goes_on() {
    let transport = MemoryTransport::new().serialize(true);
    let ledger = Ledger::new();
    let bus = builder(&transport, &ledger, &["t-pipe-shipping"])
        .endpoint("t-pipe-shipping", |e| e.concurrency(1).policy(Panicky))
        .start()
        .await
        .unwrap();
    bus.send_with(ship_cmd("bad", u32::MAX, "transient"), order("bad"))
        .await
        .unwrap();
    bus.send_with(ship_cmd("good", 0, "none"), order("good"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || ledger.count("shipped/good")
            == 1
            && transport.error_queue("t-pipe-shipping").len() == 1)
        .await
    );
    bus.shutdown().await;
    let dead = transport.error_queue("t-pipe-shipping");
    let h = &dead[0].headers;
    assert_eq!(h.get("order"), Some("bad"));
    assert_eq!(
        h.get(header::FAILURE_REASON),
        Some(FailureReason::HandlerError.as_str())
    );
    assert_eq!(h.get(header::FAILURE_ATTEMPTS), Some("1"));
}

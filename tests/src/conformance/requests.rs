//! Request/response through [`Bus`]: each request's answer comes back on its caller's own
//! reply address and to nobody else; a request nobody answers ends at its timeout, a request
//! whose handler fails ends at once with the failure, a late answer is dropped, and a handler
//! can itself make a request and wait for it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{
    Bus, BusError, Command, EndpointConfig, FailureReason, HandlerError, MessageContext, QueueKind,
    RequestOptions, Transport, TransportError,
};
use serde::{Deserialize, Serialize};

use super::factory::TransportFactory;
use super::kit::{declare, join, skip, within};

/// A request for a quote.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "conformance.Quote", response = Quoted)]
pub(super) struct Quote {
    n: u64,
    /// Which caller asked, so a crossed answer shows.
    from: String,
    /// How long the handler takes before it answers.
    pause_ms: u64,
}

/// The answer to a [`Quote`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(super) struct Quoted {
    n: u64,
    from: String,
    doubled: u64,
}

/// A request whose handler asks for a quote before it answers.
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "conformance.Bundle", response = Bundled)]
pub(super) struct Bundle {
    n: u64,
}

/// The answer to a [`Bundle`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(super) struct Bundled {
    n: u64,
    quoted: u64,
}

/// A bus hosting `endpoint`, answering quotes (and failing those with `n` = `u64::MAX`),
/// counting what it handled in `handled`.
async fn quoting(t: Arc<dyn Transport>, endpoint: &str, handled: Arc<AtomicU32>) -> Bus {
    Bus::builder()
        .transport_arc(t)
        .without_discovery()
        .handler(
            endpoint.to_string(),
            move |q: Quote, ctx: MessageContext| {
                let handled = handled.clone();
                async move {
                    if q.pause_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(q.pause_ms)).await;
                    }
                    if q.n == u64::MAX {
                        return Err(HandlerError::unrecoverable(format!(
                            "no quote for {}",
                            q.from
                        )));
                    }
                    ctx.reply(Quoted {
                        n: q.n,
                        from: q.from,
                        doubled: q.n * 2,
                    })
                    .await?;
                    handled.fetch_add(1, Ordering::Relaxed);
                    Ok::<(), HandlerError>(())
                }
            },
        )
        .route::<Quote>(endpoint)
        .endpoint(endpoint, |c: EndpointConfig| {
            c.concurrency(64)
                .prefetch(256)
                .immediate_retries(0)
                .delayed_retries(0, Duration::from_millis(10))
        })
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("a quoting bus starts")
}

/// A bus that only asks, with quotes routed to `endpoint`.
async fn asking(t: Arc<dyn Transport>, endpoint: &str) -> Bus {
    Bus::builder()
        .transport_arc(t)
        .without_discovery()
        .route::<Quote>(endpoint)
        .build()
        .await
        .expect("an asking bus builds")
}

/// Whether the transport has request/response; prints why the test is skipped when not.
async fn replies_supported(test: &str, f: &dyn TransportFactory, t: &dyn Transport) -> bool {
    match t.open_replies("conformance-probe").await {
        Ok(channel) => {
            drop(channel);
            true
        }
        Err(TransportError::Unsupported { .. }) => {
            skip(test, f, "the transport has no reply address");
            false
        }
        Err(error) => panic!("[{}] opening a reply address failed: {error}", f.name()),
    }
}

/// 1,000 requests in flight at once from two caller instances (500 each), answered by two
/// competing instances: every request gets its own answer, none crossed to the other caller.
pub async fn request_reply_concurrent(f: &dyn TransportFactory) {
    within(
        "request_reply_concurrent",
        f,
        Duration::from_secs(120),
        concurrent_body(f),
    )
    .await
}

async fn concurrent_body(f: &dyn TransportFactory) {
    const TEST: &str = "request_reply_concurrent";
    const PER_CALLER: u64 = 500;
    let started = Instant::now();
    let endpoint = "conf-quotes";
    let t = f.transport("quotes-a").await;
    if !replies_supported(TEST, f, &*t).await {
        return;
    }
    let handled = Arc::new(AtomicU32::new(0));
    let server_a = quoting(t, endpoint, handled.clone()).await;
    let server_b = quoting(f.transport("quotes-b").await, endpoint, handled.clone()).await;
    let mut callers = Vec::new();
    for name in ["caller-1", "caller-2"] {
        let bus = asking(f.transport(name).await, endpoint).await;
        callers.push(tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for n in 0..PER_CALLER {
                let bus = bus.clone();
                set.spawn(async move {
                    let asked = Quote {
                        n,
                        from: name.to_string(),
                        pause_ms: 0,
                    };
                    let options = RequestOptions::timeout(Duration::from_secs(60));
                    (n, bus.request_with(asked, options).await)
                });
            }
            let mut answers = Vec::new();
            while let Some(done) = set.join_next().await {
                answers.push(done.expect("a request task"));
            }
            (name, answers)
        }));
    }
    let mut answered = 0;
    for caller in callers {
        let (name, answers) = join(caller).await;
        for (n, answer) in answers {
            let answer =
                answer.unwrap_or_else(|e| panic!("[{}] request {n} of {name}: {e}", f.name()));
            assert_eq!(
                answer,
                Quoted {
                    n,
                    from: name.to_string(),
                    doubled: n * 2
                },
                "[{}] {name} got an answer to someone else's request",
                f.name()
            );
            answered += 1;
        }
    }
    assert_eq!(answered, 2 * PER_CALLER);
    assert_eq!(handled.load(Ordering::Relaxed), 2 * PER_CALLER as u32);
    server_a.shutdown().await;
    server_b.shutdown().await;
    println!(
        "conformance {TEST:<27} [{}] requests={} answered={answered} crossed=0 in {:.0?}",
        f.name(),
        2 * PER_CALLER,
        started.elapsed()
    );
}

/// A request to an endpoint that exists but that no instance serves ends with
/// [`BusError::RequestTimeout`] at its timeout: not before, not long after.
pub async fn request_timeout(f: &dyn TransportFactory) {
    within(
        "request_timeout",
        f,
        Duration::from_secs(60),
        timeout_body(f),
    )
    .await
}

async fn timeout_body(f: &dyn TransportFactory) {
    const TEST: &str = "request_timeout";
    let endpoint = "conf-quotes-down";
    let t = f.transport("timeout").await;
    if !replies_supported(TEST, f, &*t).await {
        return;
    }
    declare(&*t, &[(endpoint, &[])]).await;
    let bus = asking(t, endpoint).await;
    let wait = Duration::from_millis(1_500);
    let started = Instant::now();
    let asked = Quote {
        n: 1,
        from: "timeout".into(),
        pause_ms: 0,
    };
    let result = bus.request_with(asked, RequestOptions::timeout(wait)).await;
    let took = started.elapsed();
    match result {
        Err(BusError::RequestTimeout {
            request, timeout, ..
        }) => {
            assert_eq!(request, "conformance.Quote");
            assert_eq!(timeout, wait);
        }
        other => panic!("[{}] expected a request timeout, got {other:?}", f.name()),
    }
    assert!(
        took >= wait && took < wait + Duration::from_secs(2),
        "[{}] the timeout came after {took:?}, not at {wait:?}",
        f.name()
    );
    println!(
        "conformance {TEST:<27} [{}] timed out after {took:.2?} (timeout {wait:?})",
        f.name()
    );
}

/// A request whose handler fails for good ends with [`BusError::RequestFailed`] carrying the
/// reason and the error's text, long before its timeout; the request itself is in the
/// endpoint's error queue.
pub async fn request_failure(f: &dyn TransportFactory) {
    within(
        "request_failure",
        f,
        Duration::from_secs(60),
        failure_body(f),
    )
    .await
}

async fn failure_body(f: &dyn TransportFactory) {
    const TEST: &str = "request_failure";
    let endpoint = "conf-quotes-failing";
    let t = f.transport("failure").await;
    if !replies_supported(TEST, f, &*t).await {
        return;
    }
    let server = quoting(t.clone(), endpoint, Arc::default()).await;
    let bus = asking(f.transport("failure-caller").await, endpoint).await;
    let started = Instant::now();
    let asked = Quote {
        n: u64::MAX,
        from: "lamp".into(),
        pause_ms: 0,
    };
    let result = bus
        .request_with(asked, RequestOptions::timeout(Duration::from_secs(30)))
        .await;
    let took = started.elapsed();
    match result {
        Err(BusError::RequestFailed {
            request,
            reason,
            error,
            ..
        }) => {
            assert_eq!(request, "conformance.Quote");
            assert_eq!(reason, Some(FailureReason::HandlerError));
            assert_eq!(error, "no quote for lamp");
        }
        other => panic!(
            "[{}] expected the handler's failure, got {other:?}",
            f.name()
        ),
    }
    assert!(
        took < Duration::from_secs(10),
        "[{}] the failure took {took:?}, as long as a timeout",
        f.name()
    );
    match t.browse(endpoint, QueueKind::Errors, 10).await {
        Ok(errors) => assert_eq!(
            errors.len(),
            1,
            "[{}] the failed request is in the error queue",
            f.name()
        ),
        Err(TransportError::Unsupported { .. }) => {}
        Err(error) => panic!("[{}] browsing the error queue: {error}", f.name()),
    }
    server.shutdown().await;
    println!(
        "conformance {TEST:<27} [{}] failure reported after {took:.0?}",
        f.name()
    );
}

/// An answer that comes after its caller stopped waiting is dropped (logged, not an error
/// queue entry), and the caller's next request is answered as usual.
pub async fn request_late_reply(f: &dyn TransportFactory) {
    within(
        "request_late_reply",
        f,
        Duration::from_secs(60),
        late_body(f),
    )
    .await
}

async fn late_body(f: &dyn TransportFactory) {
    const TEST: &str = "request_late_reply";
    let endpoint = "conf-quotes-slow";
    let t = f.transport("late").await;
    if !replies_supported(TEST, f, &*t).await {
        return;
    }
    let handled = Arc::new(AtomicU32::new(0));
    let server = quoting(t.clone(), endpoint, handled.clone()).await;
    let bus = asking(f.transport("late-caller").await, endpoint).await;
    let slow = Quote {
        n: 7,
        from: "late".into(),
        pause_ms: 1_500,
    };
    let result = bus
        .request_with(slow, RequestOptions::timeout(Duration::from_millis(300)))
        .await;
    assert!(
        matches!(result, Err(BusError::RequestTimeout { .. })),
        "[{}] the slow request times out: {result:?}",
        f.name()
    );
    // The handler answers after its pause; the answer finds nobody waiting.
    let deadline = Instant::now() + Duration::from_secs(20);
    while handled.load(Ordering::Relaxed) < 1 {
        assert!(
            Instant::now() < deadline,
            "[{}] the slow handler never answered",
            f.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = Quote {
        n: 8,
        from: "late".into(),
        pause_ms: 0,
    };
    let answer = bus
        .request_with(next, RequestOptions::timeout(Duration::from_secs(20)))
        .await
        .unwrap_or_else(|e| panic!("[{}] the next request: {e}", f.name()));
    assert_eq!(
        answer.n,
        8,
        "[{}] the next request gets its own answer",
        f.name()
    );
    assert_eq!(server.stats().dead_lettered, 0);
    match t.browse(endpoint, QueueKind::Errors, 10).await {
        Ok(errors) => assert!(
            errors.is_empty(),
            "[{}] a late answer is no error queue entry: {errors:?}",
            f.name()
        ),
        Err(TransportError::Unsupported { .. }) => {}
        Err(error) => panic!("[{}] browsing the error queue: {error}", f.name()),
    }
    server.shutdown().await;
    println!(
        "conformance {TEST:<27} [{}] late answer dropped, next answered",
        f.name()
    );
}

/// A handler makes a request to another endpoint, waits for its answer and answers its own
/// caller with it.
pub async fn request_from_handler(f: &dyn TransportFactory) {
    within(
        "request_from_handler",
        f,
        Duration::from_secs(60),
        from_handler_body(f),
    )
    .await
}

async fn from_handler_body(f: &dyn TransportFactory) {
    const TEST: &str = "request_from_handler";
    let quotes = "conf-quotes-inner";
    let bundles = "conf-bundles";
    let t = f.transport("nested").await;
    if !replies_supported(TEST, f, &*t).await {
        return;
    }
    let server = quoting(t.clone(), quotes, Arc::default()).await;
    let bundler = Bus::builder()
        .transport_arc(f.transport("nested-bundler").await)
        .without_discovery()
        .handler(bundles, |b: Bundle, ctx: MessageContext| async move {
            let asked = Quote {
                n: b.n,
                from: "bundler".into(),
                pause_ms: 0,
            };
            let quoted = ctx.request(asked).await?;
            ctx.reply(Bundled {
                n: b.n,
                quoted: quoted.doubled,
            })
            .await?;
            Ok::<(), HandlerError>(())
        })
        .route::<Quote>(quotes)
        .route::<Bundle>(bundles)
        .start()
        .await
        .expect("the bundling bus starts");
    let caller = Bus::builder()
        .transport_arc(f.transport("nested-caller").await)
        .without_discovery()
        .route::<Bundle>(bundles)
        .build()
        .await
        .expect("the caller builds");
    let started = Instant::now();
    for n in 1..=5 {
        let answer = caller
            .request_with(
                Bundle { n },
                RequestOptions::timeout(Duration::from_secs(20)),
            )
            .await
            .unwrap_or_else(|e| panic!("[{}] bundle {n}: {e}", f.name()));
        assert_eq!(answer, Bundled { n, quoted: 2 * n });
    }
    bundler.shutdown().await;
    server.shutdown().await;
    println!(
        "conformance {TEST:<27} [{}] 5 nested requests answered in {:.0?}",
        f.name(),
        started.elapsed()
    );
}

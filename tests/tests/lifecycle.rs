//! Lifecycle on the in-memory transport: graceful shutdown with handlers in flight, and bounded
//! memory (backpressure) under a slow handler, and a never-idle endpoint that still yields; and
//! acks that wait for their broker, kept going while the workers go on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{Bus, BusBuilder, Command, Handler, HandlerError, MessageContext, State};
use bus_tests::faulty::GatedAcks;
use bus_tests::{eventually, Ledger};
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.life.Slow", endpoint = "t-life")]
struct Slow {
    n: u32,
    millis: u64,
}

#[derive(Clone)]
struct Started(Ledger);

#[bus_core::handler]
async fn slow(
    cmd: Slow,
    ctx: MessageContext,
    State(done): State<Ledger>,
    State(started): State<Started>,
) -> Result<(), HandlerError> {
    started.0.record(cmd.n.to_string(), ctx.endpoint());
    tokio::time::sleep(Duration::from_millis(cmd.millis)).await;
    done.record(cmd.n.to_string(), "slow");
    Ok(())
}

async fn life_bus(
    transport: &MemoryTransport,
    done: &Ledger,
    started: &Ledger,
    grace: Duration,
) -> Bus {
    Bus::builder()
        .transport(transport.clone())
        .host(["t-life"])
        .state(done.clone())
        .state(Started(started.clone()))
        .shutdown_grace(grace)
        .endpoint("t-life", |e| e.concurrency(4).prefetch(4))
        .start()
        .await
        .unwrap()
}

/// A bus hosting `t-life` on `transport` with `concurrency` workers and `handler` alone (the
/// discovered `slow` handler left out), ready to build or start.
fn t_life<Args>(
    transport: &MemoryTransport,
    concurrency: usize,
    handler: impl Handler<Slow, Args>,
) -> BusBuilder {
    Bus::builder()
        .without_discovery()
        .transport(transport.clone())
        .handler("t-life", handler)
        .endpoint("t-life", move |e| e.concurrency(concurrency))
        .host(["t-life"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_short_handlers_and_redelivers_the_rest() {
    let transport = MemoryTransport::new();
    let done = Ledger::new();
    let started = Ledger::new();
    let grace = Duration::from_millis(300);
    let bus = life_bus(&transport, &done, &started, grace).await;
    // Two handlers that finish within the grace period, two that cannot, and a backlog.
    for (n, millis) in [(0, 100), (1, 100), (2, 5_000), (3, 5_000)] {
        bus.send(Slow { n, millis }).await.unwrap();
    }
    for n in 4..20 {
        bus.send(Slow { n, millis: 1 }).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || started.distinct() == 4).await);
    let t = Instant::now();
    let report = bus.shutdown().await;
    assert!(
        t.elapsed() < grace + Duration::from_secs(1),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(!report.drained, "two handlers outlived the grace period");
    assert_eq!(
        done.count("0"),
        1,
        "in-flight handler finished and was acked"
    );
    assert_eq!(done.count("1"), 1);
    assert_eq!(done.count("2"), 0);
    assert_eq!(
        transport.depth("t-life"),
        Some(18),
        "abandoned and unstarted messages are back in the queue"
    );

    // A restarted instance picks up the rest: nothing lost.
    let bus = life_bus(&transport, &done, &started, grace).await;
    assert!(
        eventually(Duration::from_secs(20), || done.distinct() == 20).await,
        "handled {}",
        done.distinct()
    );
    bus.shutdown().await;
    assert_eq!(done.total(), 20, "each message acked once");
    assert_eq!(transport.depth("t-life"), Some(0));
}

/// An endpoint with one worker that is stopped while its handler waits gives back what it
/// took ahead at once, so another instance handles those messages meanwhile, not after that
/// handler is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_worker_stopped_mid_handler_gives_back_at_once_what_it_took_ahead() {
    let transport = MemoryTransport::new();
    let done = Ledger::new();
    let started = Ledger::new();
    let instance = |name: &'static str| {
        let (done, started) = (done.clone(), started.clone());
        t_life(&transport, 1, move |cmd: Slow| {
            let (done, started) = (done.clone(), started.clone());
            async move {
                started.record(cmd.n.to_string(), name);
                tokio::time::sleep(Duration::from_millis(cmd.millis)).await;
                done.record(cmd.n.to_string(), name);
                Ok::<(), HandlerError>(())
            }
        })
        .shutdown_grace(Duration::from_secs(10))
    };
    // Everything is queued before `a` starts, so its worker takes the rest ahead along with
    // the first, whose handler then takes three seconds.
    let a = instance("a").build().await.unwrap();
    a.send(Slow {
        n: 0,
        millis: 3_000,
    })
    .await
    .unwrap();
    for n in 1..10 {
        a.send(Slow { n, millis: 1 }).await.unwrap();
    }
    a.start().await.unwrap();
    // `b` starts once `a`'s handler runs: `a` then holds the rest, taken ahead with the first.
    assert!(eventually(Duration::from_secs(5), || started.count("0") == 1).await);
    let b = instance("b").start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        done.total(),
        0,
        "`a` holds them all, the first in its handler"
    );

    let stopping = tokio::spawn(async move { a.shutdown().await });
    assert!(
        eventually(Duration::from_secs(2), || done.by_instance().get("b")
            == Some(&9))
        .await,
        "`b` handled {:?} while `a`'s handler still ran",
        done.by_instance()
    );
    let report = stopping.await.unwrap();
    assert!(
        report.drained,
        "`a`'s handler finished within the grace period"
    );
    assert_eq!(done.count("0"), 1);
    assert_eq!(done.total(), 10, "each handled once");
    b.shutdown().await;
    assert_eq!(transport.depth("t-life"), Some(0));
}

/// Several workers with nothing to do: one waits on the subscription, the others for it to
/// come back. Each message that arrives is handled within a second, and a shutdown of workers
/// in that state (the subscription out of its slot, the others waiting for it) ends at once.
/// That idle workers share the work is the next test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_take_each_new_message_at_once_and_stop_at_once() {
    let transport = MemoryTransport::new();
    let done = Ledger::new();
    let seen = done.clone();
    let bus = t_life(&transport, 4, move |cmd: Slow| {
        let seen = seen.clone();
        async move {
            seen.record(cmd.n.to_string(), "idle");
            Ok::<(), HandlerError>(())
        }
    })
    .start()
    .await
    .unwrap();
    for n in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        bus.send(Slow { n, millis: 0 }).await.unwrap();
        assert!(
            eventually(Duration::from_secs(1), || done.count(&n.to_string()) == 1).await,
            "message {n} was not handled within a second by idle workers"
        );
    }
    let report = tokio::time::timeout(Duration::from_secs(5), bus.shutdown())
        .await
        .expect("a shutdown of idle workers ends at once");
    assert!(report.drained);
    assert_eq!(done.total(), 5);
    assert_eq!(transport.depth("t-life"), Some(0));
}

/// Two idle workers, two messages whose handlers must run at the same time (each waits for
/// the other): the worker that took the first must not keep the second from the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_does_not_keep_the_next_message_from_an_idle_one() {
    let transport = MemoryTransport::new();
    let done = Ledger::new();
    let seen = done.clone();
    let meet = Arc::new(tokio::sync::Barrier::new(2));
    let bus = t_life(&transport, 2, move |cmd: Slow| {
        let (seen, meet) = (seen.clone(), meet.clone());
        async move {
            // Each of the two waits for the other, so both must be running at once.
            match tokio::time::timeout(Duration::from_secs(3), meet.wait()).await {
                Ok(_) => seen.record(cmd.n.to_string(), "met"),
                Err(_) => seen.record(cmd.n.to_string(), "alone"),
            }
            Ok::<(), HandlerError>(())
        }
    })
    .start()
    .await
    .unwrap();
    // Both workers idle: one waits on the subscription, the other for it to come back.
    tokio::time::sleep(Duration::from_millis(50)).await;
    bus.send(Slow { n: 0, millis: 0 }).await.unwrap();
    bus.send(Slow { n: 1, millis: 0 }).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || done.total() == 2).await);
    assert_eq!(
        done.by_instance().get("met"),
        Some(&2),
        "both handlers ran at once: {:?}",
        done.by_instance()
    );
    bus.shutdown().await;
}

/// A bus hosting `t-life` on `transport` behind acks that wait for the test to let them
/// through (as a broker's confirmed acks wait for its answer), with `concurrency` workers and
/// a handler that records each message in `done`.
async fn gated_bus(
    transport: &MemoryTransport,
    concurrency: usize,
    done: &Ledger,
) -> (Bus, Arc<GatedAcks>) {
    let gated = Arc::new(GatedAcks::new(Arc::new(transport.clone())));
    let done = done.clone();
    let bus = Bus::builder()
        .without_discovery()
        .transport_arc(gated.clone())
        .handler("t-life", move |cmd: Slow| {
            let done = done.clone();
            async move {
                done.record(cmd.n.to_string(), "gated");
                Ok::<(), HandlerError>(())
            }
        })
        .endpoint("t-life", move |e| e.concurrency(concurrency).prefetch(10))
        .host(["t-life"])
        .shutdown_grace(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    (bus, gated)
}

/// [`gated_bus`] with `n` messages sent, once every one of them is handled and its ack waits
/// at the gate (with acks awaited one by one, only the first would be).
async fn handled_with_acks_waiting(
    transport: &MemoryTransport,
    concurrency: usize,
    n: u32,
    done: &Ledger,
) -> (Bus, Arc<GatedAcks>) {
    let (bus, gated) = gated_bus(transport, concurrency, done).await;
    for n in 0..n {
        bus.send(Slow { n, millis: 0 }).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || done.distinct() == n as usize
            && gated.waiting() == n)
        .await,
        "concurrency {concurrency}: {} of {n} handled, {} acks waiting",
        done.distinct(),
        gated.waiting()
    );
    (bus, gated)
}

/// An ack the transport has to wait for does not keep a worker from its next delivery: with
/// one worker and with two, all five messages are handled while all five acks wait, and the
/// messages stay unacked (counted in the queue) until the acks go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_that_wait_for_the_broker_do_not_hold_up_the_next_delivery() {
    for concurrency in [1, 2] {
        let transport = MemoryTransport::new();
        let done = Ledger::new();
        let (bus, gated) = handled_with_acks_waiting(&transport, concurrency, 5, &done).await;
        assert_eq!(transport.depth("t-life"), Some(5), "not acked yet");
        gated.release(5);
        assert!(
            eventually(Duration::from_secs(5), || transport.depth("t-life")
                == Some(0))
            .await,
            "concurrency {concurrency}: {:?} left after the acks went through",
            transport.depth("t-life")
        );
        assert!(bus.shutdown().await.drained);
        assert_eq!(done.total(), 5, "each handled once");
    }
}

/// Shutdown waits for the acks still on their way, with one worker and with two: nothing
/// handled is redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_acks_still_on_their_way() {
    for concurrency in [1, 2] {
        let transport = MemoryTransport::new();
        let done = Ledger::new();
        let (bus, gated) = handled_with_acks_waiting(&transport, concurrency, 3, &done).await;
        let release = {
            let gated = gated.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                gated.release(3);
            })
        };
        let report = bus.shutdown().await;
        release.await.unwrap();
        assert!(report.drained, "concurrency {concurrency}");
        assert_eq!(gated.waiting(), 0, "concurrency {concurrency}");
        assert_eq!(
            transport.depth("t-life"),
            Some(0),
            "concurrency {concurrency}: every ack went through"
        );
        assert_eq!(
            done.total(),
            3,
            "concurrency {concurrency}: none handled again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_bounds_the_queue_and_blocks_producers() {
    const CAPACITY: usize = 50;
    const N: u64 = 400;
    let transport = MemoryTransport::new().capacity(CAPACITY);
    let done = Ledger::new();
    let started = Ledger::new();
    let bus = Bus::builder()
        .transport(transport.clone())
        .host(["t-life"])
        .state(done.clone())
        .state(Started(started.clone()))
        .endpoint("t-life", |e| e.concurrency(2).prefetch(2))
        .start()
        .await
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let producer = {
        let (bus, sent) = (bus.clone(), sent.clone());
        tokio::spawn(async move {
            for n in 0..N as u32 {
                bus.send(Slow { n, millis: 2 }).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut max_depth = 0;
    let mut max_gap = 0;
    while !producer.is_finished() {
        let depth = transport.depth("t-life").unwrap();
        let gap = sent.load(Ordering::SeqCst).saturating_sub(done.total());
        max_depth = max_depth.max(depth);
        max_gap = max_gap.max(gap);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    producer.await.unwrap();
    assert!(eventually(Duration::from_secs(30), || done.total() == N).await);
    bus.shutdown().await;
    println!("max queue depth {max_depth}, max sent-but-unhandled {max_gap}, capacity {CAPACITY}");
    assert!(
        max_depth <= CAPACITY,
        "queue depth {max_depth} exceeded its bound {CAPACITY}"
    );
    // Producers waited for room: what was sent but not handled never exceeded the bound (plus
    // the handlers in flight that were acked between two readings).
    assert!(
        max_gap <= CAPACITY as u64 + 2,
        "producer ran ahead by {max_gap}"
    );
    assert!(
        max_depth >= CAPACITY / 2,
        "the test did fill the queue ({max_depth})"
    );
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.life.Tick", endpoint = "t-loop")]
struct Tick {
    n: u64,
}

/// A task that sends in a loop into a queue with room never waits, yet it must yield now and
/// then, as with tokio's own channels: on a single-threaded runtime, another task runs before
/// the loop is over.
#[test]
fn a_task_that_sends_in_a_loop_still_lets_other_tasks_run() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sent_before_it_ran = runtime.block_on(async {
        // Built, not started: the queue exists and nothing consumes it.
        let bus = Bus::builder()
            .without_discovery()
            .transport(MemoryTransport::new().capacity(100_000))
            .handler("t-loop", |_: Tick| async { Ok::<(), HandlerError>(()) })
            .host(["t-loop"])
            .build()
            .await
            .unwrap();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::Relaxed) });
        for n in 0..20_000 {
            if ran.load(Ordering::Relaxed) {
                return Some(n);
            }
            bus.send(Tick { n }).await.unwrap();
        }
        None
    });
    let sent = sent_before_it_ran.expect("the other task never ran during 20,000 sends");
    assert!(sent <= 1_000, "it ran only after {sent} sends");
}

/// A handler that feeds its own queue keeps its endpoint busy forever, and nothing it does on
/// the in-memory transport has to wait. Its worker must still yield to the runtime now and
/// then: on a single-threaded runtime, a timer and the shutdown run only if it does. Both
/// kinds of worker: a lone one (it owns the subscription) and several sharing it.
#[test]
fn an_endpoint_that_is_never_idle_still_lets_the_runtime_run_other_tasks() {
    for concurrency in [1, 2] {
        never_idle_endpoint_yields(concurrency);
    }
}

fn never_idle_endpoint_yields(concurrency: usize) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handled = runtime.block_on(async {
            let count = Arc::new(AtomicU64::new(0));
            let seen = count.clone();
            let bus = Bus::builder()
                .without_discovery()
                .transport(MemoryTransport::new())
                .handler("t-loop", move |tick: Tick, ctx: MessageContext| {
                    let seen = seen.clone();
                    async move {
                        seen.fetch_add(1, Ordering::Relaxed);
                        ctx.send(Tick { n: tick.n + 1 }).await?;
                        Ok::<(), HandlerError>(())
                    }
                })
                .endpoint("t-loop", move |e| e.concurrency(concurrency))
                .host(["t-loop"])
                .start()
                .await
                .unwrap();
            for _ in 0..concurrency {
                bus.send(Tick { n: 0 }).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            bus.shutdown().await;
            count.load(Ordering::Relaxed)
        });
        let _ = done.send(handled);
    });
    let handled = finished
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!("with {concurrency} workers, the busy endpoint never let the timer or the shutdown run")
        });
    assert!(
        handled > 100,
        "with {concurrency} workers, the endpoint was busy meanwhile: {handled} handled"
    );
}

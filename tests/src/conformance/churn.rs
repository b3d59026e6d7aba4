//! Tests 6, 7 and 10 of the suite: clients that come and go. Subscribers restart, subscribe and
//! close concurrently, and publishers close with sends in flight; nothing confirmed is lost and
//! nothing is left behind.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bus_core::SubscribeOptions;

use super::factory::TransportFactory;
use super::kit::{
    ack, declare, expect_empty, expect_quiet, id_of, join, next_within, produce, raw, subscribe,
    to_endpoint, wait_for, within,
};
use super::tally::{assert_clean, report, Tally};
use crate::eventually;

// ---- 6. subscriber restarts -------------------------------------------------------------------

/// Test 6: No loss across subscriber restarts: while 300 messages are published, a consumer takes
/// some, stops (dropping unsettled deliveries before or after its subscription, or nacking them),
/// and starts again, sometimes on a new client; every message is handled, none twice.
pub async fn subscriber_restarts(f: &dyn TransportFactory) {
    within(
        "subscriber_restarts",
        f,
        Duration::from_secs(60),
        subscriber_restarts_body(f),
    )
    .await
}

async fn subscriber_restarts_body(f: &dyn TransportFactory) {
    const TEST: &str = "subscriber_restarts";
    const N: usize = 300;
    let started = Instant::now();
    let endpoint = "conf-restart";
    let mut consumer = f.transport("restart-sub-0").await;
    declare(&*consumer, &[(endpoint, &[])]).await;
    let tally = Tally::default();
    let producer = produce(
        f.transport("restart-pub").await,
        endpoint,
        "restart",
        0..N,
        &tally,
    );
    let mut round = 0usize;
    let mut dropped = 0usize;
    while tally.distinct() < N {
        if round > 0 && round % 4 == 0 {
            consumer = f.transport(&format!("restart-sub-{round}")).await;
        }
        let prefetch = 1 + round % 6;
        let mut sub = subscribe(&*consumer, endpoint, prefetch).await;
        let take = 10 + (round * 7) % 20;
        let mut held = Vec::new();
        for i in 0..take {
            let Some(d) = next_within(&mut sub, Duration::from_millis(300)).await else {
                break;
            };
            if i % 4 == 3 && held.len() + 1 < prefetch {
                held.push(d);
                continue;
            }
            let id = id_of(&d);
            ack(d).await;
            tally.handled(&id, &format!("round-{round}"));
        }
        dropped += held.len();
        match round % 3 {
            0 => {
                drop(held);
                drop(sub);
            }
            1 => {
                drop(sub);
                tokio::task::yield_now().await;
                drop(held);
            }
            _ => {
                for d in held {
                    d.nack().await.expect("nack");
                }
                drop(sub);
            }
        }
        round += 1;
    }
    join(producer).await;
    let mut sub = subscribe(&*consumer, endpoint, 8).await;
    expect_quiet(f, &mut sub, "after every message was handled").await;
    drop(sub);
    expect_empty(f, endpoint).await;
    let fig = report(
        TEST,
        f,
        &tally,
        started,
        &format!("{round} subscriptions, {dropped} deliveries left unsettled at a stop"),
    );
    assert_clean(TEST, f, &fig, 0);
}

// ---- 7. concurrent subscribe and close --------------------------------------------------------

/// Test 7: Concurrent subscribe/close: eight tasks subscribe and close ten times each on two
/// clients (closing at once, with a cancelled `next`, after an ack, after a nack) while 200
/// messages are published; no panic, no error, no message lost, and afterwards no task and no
/// broker resource (e.g. AMQP channel) left behind.
pub async fn concurrent_subscribe_close(f: &dyn TransportFactory) {
    within(
        "concurrent_subscribe_close",
        f,
        Duration::from_secs(60),
        concurrent_subscribe_close_body(f),
    )
    .await
}

async fn concurrent_subscribe_close_body(f: &dyn TransportFactory) {
    const TEST: &str = "concurrent_subscribe_close";
    const N: usize = 200;
    const WORKERS: usize = 8;
    const ROUNDS: usize = 10;
    let started = Instant::now();
    let endpoint = "conf-churn";
    let clients = [f.transport("churn-1").await, f.transport("churn-2").await];
    let producer_client = f.transport("churn-pub").await;
    declare(&*clients[0], &[(endpoint, &[])]).await;
    let tally = Tally::default();

    tokio::time::sleep(f.quiet_period()).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let resources_before = f.open_resources().await;

    let producer = produce(producer_client.clone(), endpoint, "churn", 0..N, &tally);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let t = clients[w % 2].clone();
        let tally = tally.clone();
        workers.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let mut sub = t
                    .subscribe(
                        endpoint,
                        SubscribeOptions {
                            prefetch: 1 + (w + r) % 4,
                        },
                    )
                    .await
                    .unwrap_or_else(|e| {
                        panic!("subscribe while others subscribe and close failed: {e}")
                    });
                match (w + r) % 4 {
                    0 => {}
                    1 => {
                        // A `next` cancelled mid-flight; a delivery it returned is dropped.
                        let _ = tokio::time::timeout(Duration::from_millis(3), sub.next()).await;
                    }
                    2 => {
                        if let Some(d) = next_within(&mut sub, Duration::from_millis(20)).await {
                            let id = id_of(&d);
                            ack(d).await;
                            tally.handled(&id, "churn");
                        }
                    }
                    _ => {
                        if let Some(d) = next_within(&mut sub, Duration::from_millis(20)).await {
                            d.nack()
                                .await
                                .expect("nack while others subscribe and close");
                        }
                    }
                }
                drop(sub);
            }
        }));
    }
    for w in workers {
        join(w).await;
    }
    join(producer).await;
    let churned = tally.distinct();

    let mut sub = subscribe(&*clients[0], endpoint, 16).await;
    while tally.distinct() < N {
        let d = next_within(&mut sub, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "[{}] after the churn only {} of {N} messages could be consumed",
                    f.name(),
                    tally.distinct()
                )
            });
        let id = id_of(&d);
        ack(d).await;
        tally.handled(&id, "final");
    }
    expect_quiet(f, &mut sub, "after the churn").await;
    drop(sub);

    // Tasks first: a factory's probes (e.g. queue depth) may open connections of their own.
    let tasks_settled = eventually(Duration::from_secs(5), || {
        metrics.num_alive_tasks() <= tasks_before
    })
    .await;
    let tasks_after = metrics.num_alive_tasks();
    expect_empty(f, endpoint).await;
    let mut resources_after = f.open_resources().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while resources_after > resources_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        resources_after = f.open_resources().await;
    }
    let fig = report(
        TEST,
        f,
        &tally,
        started,
        &format!(
            "{} subscriptions, {churned} handled during the churn; tasks {tasks_before} -> {tasks_after}; broker resources {resources_before:?} -> {resources_after:?}",
            WORKERS * ROUNDS
        ),
    );
    assert_clean(TEST, f, &fig, 0);
    assert!(
        tasks_settled,
        "[{}] tasks leaked: {tasks_before} alive before the churn, {tasks_after} after",
        f.name()
    );
    assert!(
        resources_after <= resources_before,
        "[{}] broker resources leaked: {resources_before:?} before the churn, {resources_after:?} after",
        f.name()
    );
}

// ---- 10. publisher close ----------------------------------------------------------------------

/// Test 10: Every publish that returned `Ok` is handled, also when its client is dropped right
/// after (all sends returned), dropped with sends still in flight (the tasks aborted), or used for
/// batches; unconfirmed sends may or may not arrive, but nothing arrives that was not sent.
pub async fn publisher_close(f: &dyn TransportFactory) {
    within(
        "publisher_close",
        f,
        Duration::from_secs(60),
        publisher_close_body(f),
    )
    .await
}

async fn publisher_close_body(f: &dyn TransportFactory) {
    const TEST: &str = "publisher_close";
    const TASKS: usize = 4;
    const PER_TASK: usize = 100;
    let started = Instant::now();
    let endpoint = "conf-close";
    let consumer = f.transport("close-sub").await;
    declare(&*consumer, &[(endpoint, &[])]).await;
    let tally = Tally::default();

    // a. Concurrent sends, all awaited, then the client is dropped at once.
    let publisher = f.transport("close-pub-a").await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            produce(
                publisher.clone(),
                endpoint,
                &format!("a{t}"),
                0..PER_TASK,
                &tally,
            )
        })
        .collect();
    for t in tasks {
        join(t).await;
    }
    drop(publisher);

    // b. The client is dropped while sends are in flight.
    let publisher = f.transport("close-pub-b").await;
    let before = tally.confirmed_count();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            produce(
                publisher.clone(),
                endpoint,
                &format!("b{t}"),
                0..PER_TASK,
                &tally,
            )
        })
        .collect();
    wait_for(
        Duration::from_secs(30),
        "half of the in-flight sends confirmed",
        || tally.confirmed_count() >= before + TASKS * PER_TASK / 2,
    )
    .await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        match t.await {
            Ok(()) => {}
            Err(e) if e.is_cancelled() => {}
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    drop(publisher);
    let in_flight_confirmed = tally.confirmed_count() - before;

    // c. Batches.
    let publisher = f.transport("close-pub-c").await;
    for batch in 0..5 {
        let ids: Vec<String> = (0..20).map(|n| format!("c{batch}-{n}")).collect();
        for id in &ids {
            tally.sent(id);
        }
        publisher
            .send_batch(
                ids.iter()
                    .map(|id| to_endpoint(endpoint, raw(id)))
                    .collect(),
            )
            .await
            .unwrap_or_else(|e| panic!("[{}] batch {batch} failed: {e}", f.name()));
        for id in &ids {
            tally.confirmed(id);
        }
    }
    drop(publisher);

    let mut sub = subscribe(&*consumer, endpoint, 32).await;
    let confirmed: HashSet<String> = tally.confirmed_ids();
    while confirmed.iter().any(|id| tally.times(id) == 0) {
        let d = next_within(&mut sub, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                let missing = confirmed.iter().filter(|id| tally.times(id) == 0).count();
                panic!(
                    "[{}] {missing} confirmed message(s) never arrived",
                    f.name()
                )
            });
        let id = id_of(&d);
        ack(d).await;
        tally.handled(&id, "consumer");
    }
    // Unconfirmed sends that reached the broker anyway.
    while let Some(d) = next_within(&mut sub, f.quiet_period()).await {
        let id = id_of(&d);
        ack(d).await;
        tally.handled(&id, "consumer");
    }
    drop(sub);
    expect_empty(f, endpoint).await;
    let fig = report(
        TEST,
        f,
        &tally,
        started,
        &format!(
            "{in_flight_confirmed} of {} confirmed before the in-flight client was dropped",
            TASKS * PER_TASK
        ),
    );
    assert_clean(TEST, f, &fig, 0);
}

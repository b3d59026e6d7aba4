//! Tests 11 and 11b of the suite: stopping. A cancelled `next` loses nothing, a waiting
//! consumer stops promptly, and a stopped or cancelled subscription's messages go to the next
//! consumer.

use std::time::{Duration, Instant};

use super::factory::TransportFactory;
use super::kit::{
    ack, declare, expect_empty, expect_quiet, id_of, join, next_within, produce_paced, send_raw,
    subscribe, within,
};
use super::tally::{assert_clean, report, Tally};

// ---- 11. cancellation -------------------------------------------------------------------------

/// Test 11: Cancellation: `next` cancelled again and again (short timeouts) loses no message; a
/// consumer task waiting on an empty queue is cancelled promptly; a stopped subscription's
/// unsettled deliveries go to the next consumer, marked redelivered, whether the deliveries are
/// dropped before or after the subscription.
pub async fn cancellation(f: &dyn TransportFactory) {
    within(
        "cancellation",
        f,
        Duration::from_secs(60),
        cancellation_body(f),
    )
    .await
}

async fn cancellation_body(f: &dyn TransportFactory) {
    const TEST: &str = "cancellation";
    const N: usize = 100;
    let started = Instant::now();
    let endpoint = "conf-cancel";
    let a = f.transport("cancel-a").await;
    let b = f.transport("cancel-b").await;
    declare(&*a, &[(endpoint, &[])]).await;
    let tally = Tally::default();

    // a. `next` is cancel-safe: receives time out (and are dropped) while messages trickle in.
    let producer = produce_paced(
        f.transport("cancel-pub").await,
        endpoint,
        "cancel",
        0..N,
        &tally,
        Duration::from_millis(2),
    );
    let mut sub = subscribe(&*a, endpoint, 4).await;
    let mut cancelled = 0usize;
    let mut i = 0u64;
    while tally.distinct() < N {
        i += 1;
        let limit = Duration::from_micros(100 + (i * 7919) % 1_500);
        match tokio::time::timeout(limit, sub.next()).await {
            Err(_) => cancelled += 1,
            Ok(Some(Ok(d))) => {
                let id = id_of(&d);
                ack(d).await;
                tally.handled(&id, "a");
            }
            Ok(Some(Err(e))) => panic!("[{}] the subscription failed: {e}", f.name()),
            Ok(None) => panic!("[{}] the subscription ended", f.name()),
        }
    }
    join(producer).await;
    expect_quiet(f, &mut sub, "after the cancelled receives").await;
    drop(sub);

    // b. A consumer waiting on an empty queue stops promptly.
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut sub = subscribe(&*a, endpoint, 1).await;
            let _ = sub.next().await;
            panic!("nothing was sent, yet a delivery arrived");
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = Instant::now();
    waiting.abort();
    match tokio::time::timeout(Duration::from_secs(1), waiting).await {
        Ok(Err(e)) if e.is_cancelled() => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Ok(Ok(())) => unreachable!(),
        Err(_) => panic!(
            "[{}] a cancelled consumer did not stop within 1 s",
            f.name()
        ),
    }
    let stopped_in = stop.elapsed();

    // c. A stopped subscription's unsettled deliveries go to the next consumer.
    let mut handed_over = 0;
    for (round, subscription_first) in [(0, true), (1, false)] {
        let ids: Vec<String> = (0..5).map(|n| format!("held-{round}-{n}")).collect();
        for id in &ids {
            send_raw(&*a, endpoint, id, &tally).await;
        }
        let mut sub = subscribe(&*a, endpoint, ids.len()).await;
        let mut held = Vec::new();
        for _ in 0..ids.len() {
            held.push(
                next_within(&mut sub, Duration::from_secs(5))
                    .await
                    .expect("deliveries to hold"),
            );
        }
        let stop = Instant::now();
        if subscription_first {
            drop(sub);
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        } else {
            drop(held);
            drop(sub);
        }
        assert!(
            stop.elapsed() < Duration::from_secs(1),
            "[{}] stopping a subscription took {:?}",
            f.name(),
            stop.elapsed()
        );
        let mut next = subscribe(&*b, endpoint, 16).await;
        for _ in 0..ids.len() {
            let d = next_within(&mut next, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "[{}] the stopped consumer's unacked messages did not reach the next one",
                        f.name()
                    )
                });
            let id = id_of(&d);
            assert!(ids.contains(&id), "[{}] unexpected message {id}", f.name());
            assert!(
                d.redelivered(),
                "[{}] {id} was handed out before: it must be marked redelivered",
                f.name()
            );
            ack(d).await;
            tally.handled(&id, "b");
            handed_over += 1;
        }
        expect_quiet(f, &mut next, "after the handed-over messages").await;
    }

    expect_empty(f, endpoint).await;
    let fig = report(
        TEST,
        f,
        &tally,
        started,
        &format!(
            "{cancelled} receives cancelled; idle consumer stopped in {stopped_in:.0?}; {handed_over} unacked handed over"
        ),
    );
    assert_clean(TEST, f, &fig, 0);
}

// ---- 11b. Subscription::cancel ----------------------------------------------------------------

/// Test 11b: [`Subscription::cancel`](bus_core::Subscription::cancel) ("stop receiving new
/// deliveries, while the ones handed out can still be settled"): it returns promptly, the
/// deliveries handed out before it can still be acked, `next` hands out nothing new afterwards,
/// and what was not handed out goes to the next consumer once the subscription is dropped.
pub async fn cancel_stops_deliveries(f: &dyn TransportFactory) {
    within(
        "cancel_stops_deliveries",
        f,
        Duration::from_secs(60),
        cancel_stops_deliveries_body(f),
    )
    .await
}

async fn cancel_stops_deliveries_body(f: &dyn TransportFactory) {
    const TEST: &str = "cancel_stops_deliveries";
    let started = Instant::now();
    let endpoint = "conf-cancel-sub";
    let a = f.transport("cancel-sub-a").await;
    let b = f.transport("cancel-sub-b").await;
    declare(&*a, &[(endpoint, &[])]).await;
    let tally = Tally::default();

    let ids: Vec<String> = (0..6).map(|n| format!("cancel-d-{n}")).collect();
    for id in &ids {
        send_raw(&*a, endpoint, id, &tally).await;
    }
    let mut sub = subscribe(&*a, endpoint, ids.len()).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            next_within(&mut sub, Duration::from_secs(5))
                .await
                .expect("deliveries before the cancel"),
        );
    }
    let stop = Instant::now();
    tokio::time::timeout(Duration::from_secs(1), sub.cancel())
        .await
        .unwrap_or_else(|_| panic!("[{}] cancel took more than 1 s", f.name()));
    let cancelled_in = stop.elapsed();
    for d in held {
        let id = id_of(&d);
        d.ack().await.unwrap_or_else(|e| {
            panic!(
                "[{}] {id}: a delivery handed out before the cancel must still be ackable: {e}",
                f.name()
            )
        });
        tally.handled(&id, "cancelled");
    }
    // A delivery handed out now is a breach of the contract; it is recorded, acked (so the
    // figures stay exact) and judged at the end.
    let mut handed_out_after_cancel = None;
    if let Some(d) = sub.next_now() {
        let id = id_of(&d);
        ack(d).await;
        tally.handled(&id, "after-cancel");
        handed_out_after_cancel = Some(id);
    }
    let after_cancel = match tokio::time::timeout(f.quiet_period(), sub.next()).await {
        Err(_) => "stayed pending",
        Ok(None) => "returned None",
        Ok(Some(Ok(d))) => {
            let id = id_of(&d);
            ack(d).await;
            tally.handled(&id, "after-cancel");
            handed_out_after_cancel = Some(id);
            "HANDED OUT a new delivery"
        }
        Ok(Some(Err(e))) => panic!("[{}] a cancelled subscription failed: {e}", f.name()),
    };
    drop(sub);
    let mut next = subscribe(&*b, endpoint, 16).await;
    while ids.iter().any(|id| tally.times(id) == 0) {
        let d = next_within(&mut next, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "[{}] messages not handed out before the cancel did not reach the next consumer",
                    f.name()
                )
            });
        let id = id_of(&d);
        ack(d).await;
        tally.handled(&id, "b");
    }
    expect_quiet(f, &mut next, "after the cancelled subscription's messages").await;
    drop(next);

    // Report before judging `next` after the cancel, so the figures show either way.
    expect_empty(f, endpoint).await;
    let fig = report(
        TEST,
        f,
        &tally,
        started,
        &format!("cancel took {cancelled_in:.0?}; after it `next` {after_cancel}"),
    );
    assert_clean(TEST, f, &fig, 0);
    assert!(
        handed_out_after_cancel.is_none(),
        "[{}] CONTRACT: `Subscription::cancel` promises to stop new deliveries, yet `next` handed out `{}` after it",
        f.name(),
        handed_out_after_cancel.unwrap_or_default()
    );
}

//! Tests 5 and 9 of the suite: how deliveries flow to one consumer. Prefetch bounds what is
//! handed out and not yet settled; the messages of one key arrive in publish order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::Delivery;

use super::factory::TransportFactory;
use super::kit::{
    ack, declare, expect_empty, expect_quiet, id_of, join, next_within, raw, send_raw, skip,
    subscribe, to_endpoint, within,
};
use super::tally::{assert_clean, report, Tally};

// ---- 5. prefetch ------------------------------------------------------------------------------

/// Test 5: Prefetch bounds unsettled deliveries: with prefetch 1 the next message waits until the
/// first is settled (while another consumer can take it); with prefetch 3, three at most.
pub async fn prefetch(f: &dyn TransportFactory) {
    within("prefetch", f, Duration::from_secs(60), prefetch_body(f)).await
}

async fn prefetch_body(f: &dyn TransportFactory) {
    const TEST: &str = "prefetch";
    const N: usize = 10;
    if !f.features().prefetch {
        return skip(TEST, f, "the transport does not bound unsettled deliveries");
    }
    let started = Instant::now();
    let endpoint = "conf-prefetch";
    let a = f.transport("prefetch-a").await;
    let b = f.transport("prefetch-b").await;
    declare(&*a, &[(endpoint, &[])]).await;
    let tally = Tally::default();
    for n in 0..N {
        send_raw(&*a, endpoint, &format!("pf-{n}"), &tally).await;
    }
    let arrive = Duration::from_secs(5);
    let settle = |d: Delivery, who: &'static str| {
        let tally = tally.clone();
        async move {
            let id = id_of(&d);
            ack(d).await;
            tally.handled(&id, who);
        }
    };

    // Prefetch 1: one at a time per consumer.
    let mut sub_a = subscribe(&*a, endpoint, 1).await;
    let first = next_within(&mut sub_a, arrive)
        .await
        .expect("first delivery");
    expect_quiet(f, &mut sub_a, "prefetch 1 with one delivery unsettled").await;
    let mut sub_b = subscribe(&*b, endpoint, 1).await;
    let second = next_within(&mut sub_b, arrive)
        .await
        .expect("another consumer takes the next message");
    expect_quiet(f, &mut sub_b, "prefetch 1 on the second consumer").await;
    settle(first, "a").await;
    let third = next_within(&mut sub_a, arrive)
        .await
        .expect("once the first is acked the next one comes");
    settle(second, "b").await;
    settle(third, "a").await;
    drop(sub_a);
    drop(sub_b);

    // Prefetch 3: three unsettled at most.
    let mut sub = subscribe(&*a, endpoint, 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            next_within(&mut sub, arrive)
                .await
                .expect("three deliveries under prefetch 3"),
        );
    }
    expect_quiet(f, &mut sub, "prefetch 3 with three deliveries unsettled").await;
    settle(held.remove(0), "c").await;
    held.push(
        next_within(&mut sub, arrive)
            .await
            .expect("a slot freed by an ack is filled"),
    );
    expect_quiet(f, &mut sub, "prefetch 3 again full").await;
    for d in held {
        settle(d, "c").await;
    }
    while tally.distinct() < N {
        let d = next_within(&mut sub, arrive)
            .await
            .unwrap_or_else(|| panic!("[{}] the rest did not arrive", f.name()));
        settle(d, "c").await;
    }
    expect_quiet(f, &mut sub, "after the last message").await;
    drop(sub);
    expect_empty(f, endpoint).await;
    let fig = report(TEST, f, &tally, started, "");
    assert_clean(TEST, f, &fig, 0);
}

// ---- 9. per-key order -------------------------------------------------------------------------

/// Test 9: Per-key order: four keys, each published in sequence by its own producer (two clients),
/// 50 messages each; one consumer with prefetch 1, then one with prefetch 8, settling in order,
/// sees each key's messages in publish order.
pub async fn per_key_order(f: &dyn TransportFactory) {
    within(
        "per_key_order",
        f,
        Duration::from_secs(60),
        per_key_order_body(f),
    )
    .await
}

async fn per_key_order_body(f: &dyn TransportFactory) {
    const TEST: &str = "per_key_order";
    const KEYS: usize = 4;
    const PER_KEY: usize = 50;
    if !f.features().ordered_per_key {
        return skip(TEST, f, "the transport does not promise order");
    }
    let started = Instant::now();
    // One queue per pass: a dropped subscription closes asynchronously, and a message routed to
    // it meanwhile comes back marked redelivered, which this test would take for a requeue.
    let passes = [("conf-order-1", 1usize), ("conf-order-8", 8)];
    let consumer = f.transport("order-sub").await;
    let publishers = [
        f.transport("order-pub-1").await,
        f.transport("order-pub-2").await,
    ];
    declare(&*consumer, &[(passes[0].0, &[]), (passes[1].0, &[])]).await;
    let tally = Tally::default();

    for (pass, (endpoint, prefetch)) in passes.into_iter().enumerate() {
        let mut producers = Vec::new();
        for key in 0..KEYS {
            let t = publishers[key % 2].clone();
            let tally = tally.clone();
            producers.push(tokio::spawn(async move {
                for seq in 0..PER_KEY {
                    let id = format!("p{pass}-k{key}-{seq:03}");
                    let mut envelope = raw(&id);
                    let h = Arc::make_mut(&mut envelope.headers);
                    h.custom.insert("key".into(), key.to_string());
                    h.custom.insert("seq".into(), seq.to_string());
                    tally.sent(&id);
                    t.send(to_endpoint(endpoint, envelope))
                        .await
                        .unwrap_or_else(|e| panic!("sending {id} failed: {e}"));
                    tally.confirmed(&id);
                }
            }));
        }
        if pass == 1 {
            // Second pass: everything queued before the consumer starts.
            for p in producers.drain(..) {
                join(p).await;
            }
        }
        let mut sub = subscribe(&*consumer, endpoint, prefetch).await;
        let mut last: HashMap<String, usize> = HashMap::new();
        for _ in 0..KEYS * PER_KEY {
            let d = next_within(&mut sub, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("[{}] pass {pass}: messages missing", f.name()));
            let headers = d.envelope().headers.clone();
            let key = headers.get("key").expect("key header").to_string();
            let seq: usize = headers.get("seq").expect("seq header").parse().unwrap();
            let want = last.get(&key).map_or(0, |s| s + 1);
            assert!(
                !d.redelivered(),
                "[{}] no requeue happened, yet {} is redelivered",
                f.name(),
                headers.message_id
            );
            assert_eq!(
                seq,
                want,
                "[{}] pass {pass} (prefetch {prefetch}): key {key} out of order",
                f.name()
            );
            last.insert(key, seq);
            ack(d).await;
            tally.handled(&headers.message_id, &format!("pass-{pass}"));
        }
        for p in producers {
            join(p).await;
        }
        expect_quiet(f, &mut sub, "after every keyed message").await;
        drop(sub);
        expect_empty(f, endpoint).await;
    }
    let fig = report(TEST, f, &tally, started, "");
    assert_clean(TEST, f, &fig, 0);
}

//! Tests 4 and 8 of the suite: failures. A nack brings the same message back, counted as
//! redelivered; a bus retries, immediately and after a delay; and a consumer that failed many
//! times, or poison among good messages, stalls neither the queue nor its client.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{Bus, EndpointConfig, HandlerError, MessageContext};

use super::bus_kit::Flaky;
use super::factory::TransportFactory;
use super::kit::{
    ack, bytes_of, declare, expect_empty, expect_quiet, id_of, next_within, raw_headers, send_raw,
    subscribe, wait_for, within, RAW_TYPE,
};
use super::tally::{assert_clean, report, Tally};

// ---- 4. redelivery ----------------------------------------------------------------------------

/// Test 4: A nack redelivers the same message (same id, headers and body) marked redelivered, with
/// a rising delivery count; through a bus, failed attempts are retried (immediately and, where the
/// transport delays, after a delay) with the attempt number rising 1, 2, 3, ...
pub async fn redelivery(f: &dyn TransportFactory) {
    within("redelivery", f, Duration::from_secs(60), redelivery_body(f)).await
}

async fn redelivery_body(f: &dyn TransportFactory) {
    const TEST: &str = "redelivery";
    const NACKS: usize = 3;
    let started = Instant::now();
    let features = f.features();
    let endpoint = "conf-redeliver";
    let t = f.transport("redeliver").await;
    declare(&*t, &[(endpoint, &[])]).await;
    let tally = Tally::default();
    let ids: Vec<String> = (0..3).map(|n| format!("nacked-{n}")).collect();
    for id in &ids {
        send_raw(&*t, endpoint, id, &tally).await;
    }
    let mut sub = subscribe(&*t, endpoint, 1).await;
    let mut seen: HashMap<String, Vec<(bool, u32)>> = HashMap::new();
    while tally.distinct() < ids.len() {
        let d = next_within(&mut sub, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("[{}] a nacked message did not come back", f.name()));
        let id = id_of(&d);
        assert_eq!(
            &*d.envelope().headers,
            &raw_headers(&id, RAW_TYPE),
            "[{}] headers kept across redelivery",
            f.name()
        );
        assert_eq!(
            bytes_of(d.envelope()),
            format!("{{\"id\":\"{id}\"}}").as_bytes(),
            "[{}] body kept across redelivery",
            f.name()
        );
        let history = seen.entry(id.clone()).or_default();
        history.push((d.redelivered(), d.delivery_count()));
        if history.len() <= NACKS {
            d.nack().await.expect("nack");
        } else {
            ack(d).await;
            tally.handled(&id, "raw");
        }
    }
    expect_quiet(f, &mut sub, "after acking the nacked messages").await;
    drop(sub);
    for id in &ids {
        let history = &seen[id];
        assert_eq!(history.len(), NACKS + 1, "[{}] {id}: {history:?}", f.name());
        assert_eq!(
            history[0],
            (false, 1),
            "[{}] {id}: first delivery",
            f.name()
        );
        for (i, &(redelivered, count)) in history.iter().enumerate().skip(1) {
            assert!(
                redelivered,
                "[{}] {id}: delivery {} after a nack must be marked redelivered: {history:?}",
                f.name(),
                i + 1
            );
            if features.exact_delivery_count {
                assert_eq!(
                    count as usize,
                    i + 1,
                    "[{}] {id}: delivery count: {history:?}",
                    f.name()
                );
            } else {
                assert!(
                    count >= 2 && count >= history[i - 1].1,
                    "[{}] {id}: delivery count must rise past 1: {history:?}",
                    f.name()
                );
            }
        }
    }

    // Through a bus: attempts rise across immediate and (where supported) delayed retries.
    let bus_endpoint = "conf-retry";
    let attempts: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::default();
    let delayed = features.delayed_delivery;
    let config = EndpointConfig::default()
        .immediate_retries(1)
        .delayed_retries(if delayed { 2 } else { 0 }, Duration::from_millis(50));
    let cases: &[(&str, u32)] = if delayed {
        &[
            ("flaky-0", 0),
            ("flaky-1", 1),
            ("flaky-3", 3),
            ("flaky-4", 4),
        ]
    } else {
        &[("flaky-0", 0), ("flaky-1", 1)]
    };
    let handler_tally = tally.clone();
    let seen_attempts = attempts.clone();
    let bus = Bus::builder()
        .transport_arc(f.transport("retry").await)
        .without_discovery()
        .handler(bus_endpoint, move |cmd: Flaky, ctx: MessageContext| {
            let tally = handler_tally.clone();
            let attempts = seen_attempts.clone();
            async move {
                attempts
                    .lock()
                    .unwrap()
                    .entry(cmd.id.clone())
                    .or_default()
                    .push(ctx.attempt());
                if ctx.attempt() <= cmd.fail_times {
                    return Err(HandlerError::new(format!("{} fails", cmd.id)));
                }
                tally.handled(&cmd.id, "bus");
                Ok(())
            }
        })
        .route::<Flaky>(bus_endpoint)
        .endpoint(bus_endpoint, move |_| config)
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("retrying bus starts");
    for &(id, fail_times) in cases {
        tally.sent(id);
        bus.send(Flaky {
            id: id.into(),
            fail_times,
        })
        .await
        .expect("send");
        tally.confirmed(id);
    }
    wait_for(
        Duration::from_secs(30),
        "every flaky command handled",
        || cases.iter().all(|(id, _)| tally.times(id) == 1),
    )
    .await;
    tokio::time::sleep(f.quiet_period()).await;
    bus.shutdown().await;
    let stats = bus.stats();
    let attempts = attempts.lock().unwrap().clone();
    let fig = report(
        TEST,
        f,
        &tally,
        started,
        &format!(
            "raw deliveries {:?}; bus attempts {attempts:?}{}",
            seen.values().next().cloned().unwrap_or_default(),
            if delayed {
                ""
            } else {
                "; delayed retries skipped: the transport does not delay"
            }
        ),
    );
    assert_clean(TEST, f, &fig, 0);
    for &(id, fail_times) in cases {
        let want: Vec<u32> = (1..=fail_times + 1).collect();
        assert_eq!(
            attempts.get(id),
            Some(&want),
            "[{}] {id}: attempt numbers",
            f.name()
        );
    }
    let want_delayed: u64 = if delayed { 3 } else { 0 };
    assert_eq!(
        stats.delayed_retries,
        want_delayed,
        "[{}] {stats:?}",
        f.name()
    );
    assert_eq!(stats.dead_lettered, 0, "[{}] {stats:?}", f.name());
}

// ---- 8. continue after errors -----------------------------------------------------------------

/// Test 8: Continue after errors: a consumer that failed (nacked) a hundred deliveries does not
/// poison the queue or its client: the next consumer gets every message, and the same client
/// consumes normally again. Through a bus: poison messages among good ones fail every attempt and
/// end in the error queue, while every good message is handled once, without a stall.
pub async fn continue_after_errors(f: &dyn TransportFactory) {
    within(
        "continue_after_errors",
        f,
        Duration::from_secs(60),
        continue_after_errors_body(f),
    )
    .await
}

async fn continue_after_errors_body(f: &dyn TransportFactory) {
    const TEST: &str = "continue_after_errors";
    const M: usize = 20;
    const FAILURES: usize = 100;
    let started = Instant::now();
    let features = f.features();
    let endpoint = "conf-failing";
    let failing = f.transport("failing-a").await;
    let next = f.transport("failing-b").await;
    declare(&*failing, &[(endpoint, &[])]).await;
    let tally = Tally::default();
    for n in 0..M {
        send_raw(&*failing, endpoint, &format!("fail-{n}"), &tally).await;
    }
    let mut sub = subscribe(&*failing, endpoint, 4).await;
    for _ in 0..FAILURES {
        let d = next_within(&mut sub, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("[{}] a nacked message did not come back", f.name()));
        d.nack().await.expect("nack");
    }
    drop(sub);

    let mut sub = subscribe(&*next, endpoint, 8).await;
    while tally.distinct() < M {
        let d = next_within(&mut sub, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "[{}] after {FAILURES} failures the next consumer got only {} of {M}",
                    f.name(),
                    tally.distinct()
                )
            });
        let id = id_of(&d);
        ack(d).await;
        tally.handled(&id, "next");
    }
    expect_quiet(f, &mut sub, "after the next consumer took everything").await;
    drop(sub);

    // The failing client is not poisoned either.
    let mut sub = subscribe(&*failing, endpoint, 4).await;
    for n in 0..5 {
        send_raw(&*next, endpoint, &format!("after-{n}"), &tally).await;
    }
    while tally.distinct() < M + 5 {
        let d = next_within(&mut sub, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("[{}] the failing client cannot consume again", f.name()));
        let id = id_of(&d);
        ack(d).await;
        tally.handled(&id, "failing-again");
    }
    drop(sub);
    expect_empty(f, endpoint).await;

    // Through a bus: poison among good messages, one handler at a time.
    let bus_endpoint = "conf-poison";
    const GOOD: usize = 45;
    const POISON: usize = 5;
    let delayed = features.delayed_delivery;
    let config = EndpointConfig::default()
        .concurrency(1)
        .prefetch(1)
        .immediate_retries(2)
        .delayed_retries(u32::from(delayed), Duration::from_millis(50));
    let attempts_per_poison = 3 * (1 + u64::from(delayed));
    let poison_attempts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let handler_tally = tally.clone();
    let handler_attempts = poison_attempts.clone();
    let bus = Bus::builder()
        .transport_arc(f.transport("poison").await)
        .without_discovery()
        .handler(bus_endpoint, move |cmd: Flaky| {
            let tally = handler_tally.clone();
            let attempts = handler_attempts.clone();
            async move {
                if cmd.fail_times == u32::MAX {
                    *attempts.lock().unwrap().entry(cmd.id.clone()).or_default() += 1;
                    return Err(HandlerError::new("poison"));
                }
                tally.handled(&cmd.id, "bus");
                Ok(())
            }
        })
        .route::<Flaky>(bus_endpoint)
        .endpoint(bus_endpoint, move |_| config)
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("bus starts");
    let mut good = 0;
    for n in 0..GOOD + POISON {
        let poison = n % 10 == 0;
        let id = if poison {
            format!("poison-{n}")
        } else {
            good += 1;
            format!("good-{n}")
        };
        // Poison is expected in the error queue, not handled: sent but not counted as confirmed.
        tally.sent(&id);
        bus.send(Flaky {
            id: id.clone(),
            fail_times: if poison { u32::MAX } else { 0 },
        })
        .await
        .expect("send");
        if !poison {
            tally.confirmed(&id);
        }
    }
    assert_eq!(good, GOOD);
    wait_for(
        Duration::from_secs(30),
        "good messages handled and poison dead-lettered",
        || tally.distinct() == M + 5 + GOOD && bus.stats().dead_lettered == POISON as u64,
    )
    .await;
    tokio::time::sleep(f.quiet_period()).await;
    bus.shutdown().await;
    let stats = bus.stats();
    let poison_attempts = poison_attempts.lock().unwrap().clone();
    let fig = report(
        TEST,
        f,
        &tally,
        started,
        &format!(
            "{FAILURES} nacks before the next consumer; bus {stats:?}{}",
            if delayed {
                ""
            } else {
                "; no delayed retry: the transport does not delay"
            }
        ),
    );
    assert_clean(TEST, f, &fig, 0);
    assert_eq!(poison_attempts.len(), POISON);
    for (id, n) in &poison_attempts {
        assert_eq!(
            *n,
            attempts_per_poison,
            "[{}] {id}: attempts before the error queue",
            f.name()
        );
    }
}

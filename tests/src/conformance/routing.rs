//! Tests 2, 3 and 12 of the suite: who gets which message. Competing instances of one endpoint
//! share its commands; endpoints get exactly the event types they subscribe to; every service
//! gets every event once, its instances competing for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{Bus, Destination, EndpointConfig, HandlerError, Outgoing};

use super::bus_kit::{send_work, sender, work_instance, Fanned, Work};
use super::factory::TransportFactory;
use super::kit::{
    ack, declare, expect_empty, expect_quiet, id_of, join, next_within, raw, subscribe, wait_for,
    within,
};
use super::tally::{assert_clean, report, Tally};

// ---- 2. competing consumers -------------------------------------------------------------------

/// Test 2: Competing consumers: three bus instances of one endpoint, each on its own client, share
/// 1,000 commands; every command is handled exactly once, none is missing, each instance takes
/// part.
pub async fn competing_consumers(f: &dyn TransportFactory) {
    within(
        "competing_consumers",
        f,
        Duration::from_secs(60),
        competing_consumers_body(f),
    )
    .await
}

async fn competing_consumers_body(f: &dyn TransportFactory) {
    const TEST: &str = "competing_consumers";
    const N: usize = 1_000;
    let started = Instant::now();
    let endpoint = "conf-compete";
    let tally = Tally::default();
    let mut instances = Vec::new();
    for i in 0..3 {
        let name = format!("instance-{i}");
        let t = f.transport(&format!("compete-{i}")).await;
        instances.push(
            work_instance(
                t,
                endpoint,
                &name,
                &tally,
                EndpointConfig::default().concurrency(8),
            )
            .await,
        );
    }
    let bus = sender::<Work>(f.transport("compete-send").await, endpoint).await;
    send_work(&bus, "work", N, 4, &tally).await;
    wait_for(Duration::from_secs(45), "every command handled", || {
        tally.distinct() == N
    })
    .await;
    // Give a duplicate the chance to show up.
    tokio::time::sleep(f.quiet_period()).await;
    for bus in &instances {
        let report = bus.shutdown().await;
        assert!(report.drained, "nothing in flight at shutdown");
    }
    expect_empty(f, endpoint).await;
    let per = tally.by_instance();
    let fig = report(TEST, f, &tally, started, &format!("per instance {per:?}"));
    assert_clean(TEST, f, &fig, 0);
    for i in 0..3 {
        let name = format!("instance-{i}");
        assert!(
            per.get(&name).copied().unwrap_or(0) > 0,
            "[{}] {name} took no share of the work: {per:?}",
            f.name()
        );
    }
}

// ---- 3. many topics ---------------------------------------------------------------------------

/// Test 3: Many topics: four endpoints subscribe to different sets of six event types (one type is
/// a dotted extension of another, one has no subscriber); each endpoint gets exactly its own types,
/// each event once.
pub async fn many_topics(f: &dyn TransportFactory) {
    within(
        "many_topics",
        f,
        Duration::from_secs(60),
        many_topics_body(f),
    )
    .await
}

async fn many_topics_body(f: &dyn TransportFactory) {
    const TEST: &str = "many_topics";
    const PER_TYPE: usize = 25;
    let started = Instant::now();
    let types = [
        "conformance.topic.A",
        "conformance.topic.A.B",
        "conformance.topic.B",
        "conformance.topic.C",
        "conformance.topic.Dx",
        "conformance.topic.Unheard",
    ];
    let subscribers: [(&str, &[&str]); 4] = [
        ("conf-topics-1", &["conformance.topic.A"]),
        (
            "conf-topics-2",
            &["conformance.topic.A.B", "conformance.topic.B"],
        ),
        (
            "conf-topics-3",
            &["conformance.topic.A", "conformance.topic.C"],
        ),
        ("conf-topics-4", &["conformance.topic.Dx"]),
    ];
    let publisher = f.transport("topics-pub").await;
    let consumer = f.transport("topics-sub").await;
    declare(&*consumer, &subscribers).await;
    let tally = Tally::default();

    // Every (endpoint, event) pair that must arrive is "sent" and, once published, "confirmed".
    for ty in types {
        for n in 0..PER_TYPE {
            let id = format!("{ty}/{n}");
            let receivers: Vec<&str> = subscribers
                .iter()
                .filter(|(_, evs)| evs.contains(&ty))
                .map(|(ep, _)| *ep)
                .collect();
            for ep in &receivers {
                tally.sent(&format!("{ep}|{id}"));
            }
            let mut envelope = raw(&id);
            Arc::make_mut(&mut envelope.headers).message_type = ty.to_string().into();
            publisher
                .send(Outgoing {
                    destination: Destination::Event(ty.into()),
                    envelope,
                    delay: None,
                    deliver_at: None,
                })
                .await
                .unwrap_or_else(|e| panic!("[{}] publishing {id} failed: {e}", f.name()));
            for ep in &receivers {
                tally.confirmed(&format!("{ep}|{id}"));
            }
        }
    }

    for (ep, own) in subscribers {
        let mut sub = subscribe(&*consumer, ep, 32).await;
        let want = own.len() * PER_TYPE;
        for _ in 0..want {
            let d = next_within(&mut sub, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("[{}] {ep} got fewer than {want} events", f.name()));
            let ty = d.envelope().headers.message_type.clone();
            assert!(
                own.contains(&ty.as_ref()),
                "[{}] {ep} subscribes to {own:?} but got a `{ty}`",
                f.name()
            );
            let key = format!("{ep}|{}", id_of(&d));
            ack(d).await;
            tally.handled(&key, ep);
        }
        expect_quiet(f, &mut sub, &format!("{ep} after its own events")).await;
    }
    for (ep, _) in subscribers {
        expect_empty(f, ep).await;
    }
    let fig = report(TEST, f, &tally, started, "");
    assert_clean(TEST, f, &fig, 0);
}

// ---- 12. fan-out with groups ------------------------------------------------------------------

/// Test 12: Event fan-out with groups: two services, three instances each (six clients); every
/// service handles every one of 200 events exactly once, its instances competing.
pub async fn fan_out_groups(f: &dyn TransportFactory) {
    within(
        "fan_out_groups",
        f,
        Duration::from_secs(60),
        fan_out_groups_body(f),
    )
    .await
}

async fn fan_out_groups_body(f: &dyn TransportFactory) {
    const TEST: &str = "fan_out_groups";
    const EVENTS: usize = 200;
    let started = Instant::now();
    let services = ["conf-fan-a", "conf-fan-b"];
    let tally = Tally::default();
    let mut instances = Vec::new();
    for svc in services {
        for i in 0..3 {
            let tally = tally.clone();
            let me = format!("{svc}/{i}");
            let bus = Bus::builder()
                .transport_arc(f.transport(&format!("{svc}-{i}")).await)
                .without_discovery()
                .handler(svc, move |evt: Fanned| {
                    let tally = tally.clone();
                    let me = me.clone();
                    async move {
                        // A little work per event, as real handlers have: an instance already
                        // running could otherwise drain the whole backlog before a sibling's
                        // worker is first scheduled, and "competing" would not be observable.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        tally.handled(&format!("{svc}|{}", evt.id), &me);
                        Ok::<(), HandlerError>(())
                    }
                })
                .shutdown_grace(Duration::from_secs(5))
                .start()
                .await
                .expect("instance starts");
            instances.push(bus);
        }
    }
    let publisher = Bus::builder()
        .transport_arc(f.transport("fan-pub").await)
        .without_discovery()
        .build()
        .await
        .expect("publisher builds");
    let mut producers = Vec::new();
    for p in 0..2 {
        let bus = publisher.clone();
        let tally = tally.clone();
        producers.push(tokio::spawn(async move {
            for n in (p..EVENTS).step_by(2) {
                let id = format!("evt-{n}");
                for svc in services {
                    tally.sent(&format!("{svc}|{id}"));
                }
                bus.publish(Fanned { id: id.clone() })
                    .await
                    .unwrap_or_else(|e| panic!("publishing {id} failed: {e}"));
                for svc in services {
                    tally.confirmed(&format!("{svc}|{id}"));
                }
            }
        }));
    }
    for p in producers {
        join(p).await;
    }
    wait_for(
        Duration::from_secs(45),
        "every service handled every event",
        || tally.distinct() == EVENTS * services.len(),
    )
    .await;
    tokio::time::sleep(f.quiet_period()).await;
    for bus in &instances {
        bus.shutdown().await;
    }
    for svc in services {
        expect_empty(f, svc).await;
    }
    let per = tally.by_instance();
    let fig = report(TEST, f, &tally, started, &format!("per instance {per:?}"));
    assert_clean(TEST, f, &fig, 0);
    for svc in services {
        for i in 0..3 {
            let name = format!("{svc}/{i}");
            assert!(
                per.get(&name).copied().unwrap_or(0) > 0,
                "[{}] {name} took no share of its service's events: {per:?}",
                f.name()
            );
        }
    }
}

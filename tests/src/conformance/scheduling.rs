//! Scheduled messages through [`Bus`]: delivered no earlier than due and within the
//! transport's documented precision, events as well as commands, from the bus and from a
//! handler, and never once cancelled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus_core::{
    Bus, BusError, Command, Event, HandlerError, MessageContext, SendOptions, Transport,
    TransportError,
};
use serde::{Deserialize, Serialize};

use super::factory::TransportFactory;
use super::kit::{skip, within};

/// A reminder, due at `due_ms` (milliseconds since the Unix epoch).
#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "conformance.Remind")]
pub(super) struct Remind {
    id: String,
    due_ms: u64,
}

/// An event scheduled by a handler.
#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "conformance.Expired")]
pub(super) struct Expired {
    id: String,
    due_ms: u64,
}

/// Arrivals by id: when each came (milliseconds since the Unix epoch), once per arrival.
type Arrivals = Arc<Mutex<HashMap<String, Vec<u64>>>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A bus hosting `endpoint`, recording each reminder's arrival.
async fn reminded(t: Arc<dyn Transport>, endpoint: &str, arrivals: &Arrivals) -> Bus {
    let arrivals = arrivals.clone();
    Bus::builder()
        .transport_arc(t)
        .without_discovery()
        .handler(endpoint.to_string(), move |r: Remind| {
            let arrivals = arrivals.clone();
            async move {
                let now = now_ms();
                arrivals.lock().unwrap().entry(r.id).or_default().push(now);
                Ok::<(), HandlerError>(())
            }
        })
        .route::<Remind>(endpoint)
        .endpoint(endpoint, |c| c.concurrency(32).prefetch(256))
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .expect("a reminded bus starts")
}

/// Wait until `count` ids arrived or `limit` passed.
async fn wait_arrivals(arrivals: &Arrivals, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while arrivals.lock().unwrap().len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small deterministic spread of due times.
fn spread(seed: u64, n: u64, range_ms: u64) -> u64 {
    let mut x = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x % range_ms
}

/// 1,000 commands scheduled at random times within 5 s, by a bus that only sends: each is
/// delivered once, never before it is due, and at most the transport's precision after.
pub async fn scheduled_precision(f: &dyn TransportFactory) {
    within(
        "scheduled_precision",
        f,
        Duration::from_secs(120),
        precision_body(f),
    )
    .await
}

async fn precision_body(f: &dyn TransportFactory) {
    const TEST: &str = "scheduled_precision";
    const COUNT: u64 = 1_000;
    let started = Instant::now();
    let endpoint = "conf-reminders";
    let arrivals = Arrivals::default();
    let receiver = reminded(f.transport("reminded").await, endpoint, &arrivals).await;
    let sender = Bus::builder()
        .transport_arc(f.transport("reminding").await)
        .without_discovery()
        .route::<Remind>(endpoint)
        .build()
        .await
        .expect("the sender builds");
    let mut due = HashMap::new();
    let mut sends = tokio::task::JoinSet::new();
    let base = now_ms() + 200;
    for n in 0..COUNT {
        let due_ms = base + spread(7, n, 5_000);
        let id = format!("remind-{n}");
        due.insert(id.clone(), due_ms);
        let sender = sender.clone();
        sends.spawn(async move {
            let options = SendOptions::new().deliver_at(at(due_ms));
            sender.send_with(Remind { id, due_ms }, options).await
        });
        if sends.len() >= 32 {
            sends
                .join_next()
                .await
                .expect("a send")
                .expect("a send task")
                .unwrap_or_else(|e| panic!("[{}] scheduling: {e}", f.name()));
        }
    }
    while let Some(sent) = sends.join_next().await {
        sent.expect("a send task")
            .unwrap_or_else(|e| panic!("[{}] scheduling: {e}", f.name()));
    }
    let scheduled_in = started.elapsed();
    let precision = f.features().schedule_precision;
    wait_arrivals(
        &arrivals,
        COUNT as usize,
        Duration::from_secs(5) + Duration::from_millis(200) + precision + Duration::from_secs(30),
    )
    .await;
    // Anything still to come would be a duplicate.
    tokio::time::sleep(f.quiet_period()).await;
    receiver.shutdown().await;
    let arrivals = arrivals.lock().unwrap().clone();
    let mut late = Vec::with_capacity(COUNT as usize);
    for (id, due_ms) in &due {
        let came = arrivals
            .get(id)
            .unwrap_or_else(|| panic!("[{}] {id} was never delivered", f.name()));
        assert_eq!(
            came.len(),
            1,
            "[{}] {id} delivered {} times",
            f.name(),
            came.len()
        );
        assert!(
            came[0] >= *due_ms,
            "[{}] {id} came {} ms early",
            f.name(),
            due_ms - came[0]
        );
        late.push(came[0] - due_ms);
    }
    late.sort_unstable();
    let p50 = late[late.len() / 2];
    let p99 = late[late.len() * 99 / 100];
    let max = *late.last().unwrap();
    println!(
        "conformance {TEST:<27} [{}] scheduled={COUNT} delivered={} early=0 late p50={p50}ms p99={p99}ms max={max}ms (precision {precision:?}; scheduled in {scheduled_in:.0?})",
        f.name(),
        late.len()
    );
    assert!(
        Duration::from_millis(max) <= precision,
        "[{}] a scheduled message came {max} ms after due, beyond the documented {precision:?}",
        f.name()
    );
}

/// An event scheduled from inside a handler (`ctx.publish_with`), and one from the bus, each
/// reach every subscribing endpoint once, no earlier than due.
pub async fn scheduled_events(f: &dyn TransportFactory) {
    within(
        "scheduled_events",
        f,
        Duration::from_secs(60),
        events_body(f),
    )
    .await
}

async fn events_body(f: &dyn TransportFactory) {
    const TEST: &str = "scheduled_events";
    let started = Instant::now();
    let arrivals: [Arrivals; 2] = Default::default();
    let mut subscribers = Vec::new();
    for (n, endpoint) in ["conf-expiry-a", "conf-expiry-b"].iter().enumerate() {
        let seen = arrivals[n].clone();
        let bus = Bus::builder()
            .transport_arc(f.transport(endpoint).await)
            .without_discovery()
            .handler(endpoint.to_string(), move |e: Expired| {
                let seen = seen.clone();
                async move {
                    let now = now_ms();
                    seen.lock().unwrap().entry(e.id).or_default().push(now);
                    Ok::<(), HandlerError>(())
                }
            })
            .start()
            .await
            .expect("a subscriber starts");
        subscribers.push(bus);
    }
    // The handler of a command schedules the event; the bus schedules another itself.
    let scheduler_endpoint = "conf-expiry-scheduler";
    let scheduler = Bus::builder()
        .transport_arc(f.transport("scheduler").await)
        .without_discovery()
        .handler(
            scheduler_endpoint,
            |r: Remind, ctx: MessageContext| async move {
                let event = Expired {
                    id: r.id,
                    due_ms: r.due_ms,
                };
                let options = SendOptions::new().deliver_at(at(r.due_ms));
                ctx.publish_with(event, options).await?;
                Ok::<(), HandlerError>(())
            },
        )
        .route::<Remind>(scheduler_endpoint)
        .start()
        .await
        .expect("the scheduler starts");
    let from_handler = now_ms() + 1_500;
    scheduler
        .send(Remind {
            id: "from-handler".into(),
            due_ms: from_handler,
        })
        .await
        .expect("the command that schedules");
    let from_bus = now_ms() + 1_000;
    let event = Expired {
        id: "from-bus".into(),
        due_ms: from_bus,
    };
    scheduler
        .publish_with(event, SendOptions::new().deliver_at(at(from_bus)))
        .await
        .expect("publishing a scheduled event");
    for seen in &arrivals {
        wait_arrivals(seen, 2, Duration::from_secs(30)).await;
    }
    tokio::time::sleep(f.quiet_period()).await;
    for bus in &subscribers {
        bus.shutdown().await;
    }
    scheduler.shutdown().await;
    for (n, seen) in arrivals.iter().enumerate() {
        let seen = seen.lock().unwrap();
        for (id, due_ms) in [("from-handler", from_handler), ("from-bus", from_bus)] {
            let came = seen
                .get(id)
                .unwrap_or_else(|| panic!("[{}] subscriber {n} never got {id}", f.name()));
            assert_eq!(
                came.len(),
                1,
                "[{}] subscriber {n} got {id} {} times",
                f.name(),
                came.len()
            );
            assert!(came[0] >= due_ms, "[{}] {id} came early", f.name());
        }
    }
    println!(
        "conformance {TEST:<27} [{}] 2 scheduled events reached 2 subscribers once each, none early, in {:.0?}",
        f.name(),
        started.elapsed()
    );
}

/// Scheduled commands cancelled before they are due never arrive; the others do; cancelling
/// an id that waits for nothing says so.
pub async fn scheduled_cancel(f: &dyn TransportFactory) {
    within(
        "scheduled_cancel",
        f,
        Duration::from_secs(60),
        cancel_body(f),
    )
    .await
}

async fn cancel_body(f: &dyn TransportFactory) {
    const TEST: &str = "scheduled_cancel";
    let endpoint = "conf-cancelled-reminders";
    let arrivals = Arrivals::default();
    let receiver = reminded(f.transport("cancel-reminded").await, endpoint, &arrivals).await;
    let sender = Bus::builder()
        .transport_arc(f.transport("cancel-reminding").await)
        .without_discovery()
        .route::<Remind>(endpoint)
        .build()
        .await
        .expect("the sender builds");
    let due_ms = now_ms() + 2_000;
    for n in 0..10 {
        let id = format!("cancel-{n}");
        let options = SendOptions::new().message_id(&id).deliver_at(at(due_ms));
        sender
            .send_with(Remind { id, due_ms }, options)
            .await
            .unwrap_or_else(|e| panic!("[{}] scheduling: {e}", f.name()));
    }
    if !f.features().cancels_scheduled {
        let refused = sender.cancel_scheduled("cancel-0").await;
        assert!(
            matches!(
                refused,
                Err(BusError::Transport(TransportError::Unsupported { .. }))
            ),
            "[{}] a transport that cannot cancel says so: {refused:?}",
            f.name()
        );
        skip(TEST, f, "the transport cannot cancel a scheduled message");
        wait_arrivals(&arrivals, 10, Duration::from_secs(30)).await;
        receiver.shutdown().await;
        return;
    }
    for n in (0..10).step_by(2) {
        let cancelled = sender
            .cancel_scheduled(&format!("cancel-{n}"))
            .await
            .unwrap_or_else(|e| panic!("[{}] cancelling: {e}", f.name()));
        assert!(cancelled, "[{}] cancel-{n} was waiting", f.name());
    }
    let again = sender
        .cancel_scheduled("cancel-0")
        .await
        .expect("cancel again");
    assert!(
        !again,
        "[{}] a cancelled message is cancelled once",
        f.name()
    );
    let unknown = sender
        .cancel_scheduled("never-scheduled")
        .await
        .expect("cancel unknown");
    assert!(!unknown, "[{}] nothing waits under an unknown id", f.name());
    wait_arrivals(&arrivals, 5, Duration::from_secs(30)).await;
    // Long enough for a cancelled one to show up if it were coming.
    tokio::time::sleep(Duration::from_secs(1) + f.quiet_period()).await;
    receiver.shutdown().await;
    let mut came: Vec<String> = arrivals.lock().unwrap().keys().cloned().collect();
    came.sort();
    assert_eq!(
        came,
        ["cancel-1", "cancel-3", "cancel-5", "cancel-7", "cancel-9"],
        "[{}] exactly the messages not cancelled arrive",
        f.name()
    );
    let late = sender
        .cancel_scheduled("cancel-1")
        .await
        .expect("cancel delivered");
    assert!(
        !late,
        "[{}] a delivered message cannot be cancelled",
        f.name()
    );
    println!(
        "conformance {TEST:<27} [{}] scheduled=10 cancelled=5 delivered=5 (the others)",
        f.name()
    );
}

//! The transport conformance suite: RELIABILITY.md part A (tests 1 to 12, plus 11b on
//! [`Subscription::cancel`]), written once against the [`Transport`] contract so every transport
//! runs the same checks.
//!
//! A transport takes part through a [`TransportFactory`]: each call to
//! [`TransportFactory::transport`] returns a new client of the same broker, and
//! [`TransportFactory::features`] says what the transport can do, so a test that needs a missing
//! feature prints why it is skipped instead of failing. Each test is one `pub async fn` taking
//! the factory; it has a hard deadline (a hang is a failure) and prints one summary line:
//!
//! ```text
//! conformance round_trip                 [memory] sent=14 confirmed=14 handled=14 lost=0 duplicates=0 phantom=0 in 12ms
//! ```
//!
//! - `sent`: publishes attempted; `confirmed`: publishes that returned `Ok`;
//! - `handled`: settled with a successful ack (raw tests) or handled by a handler (bus tests);
//! - `lost`: confirmed but never handled; `phantom`: handled but never sent;
//! - `duplicates`: handlings beyond the first of one message.
//!
//! Most tests drive the raw contract (declare, send, subscribe, ack/nack); competing consumers,
//! retries, continuing after errors and fan-out with groups also go through [`Bus`].
//!
//! ```no_run
//! # async fn demo() {
//! use bus_tests::conformance::{self, MemoryFactory};
//! conformance::round_trip(&MemoryFactory::typed()).await;
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus_core::{
    async_trait, header, Body, Bus, Command, Delivery, Destination, EndpointConfig,
    EndpointTopology, Envelope, Event, HandlerError, Headers, MessageContext, Outgoing,
    SubscribeOptions, Subscription, Topology, Transport,
};
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::broker::AmqpScope;
use crate::eventually;

// ---- what a transport brings ------------------------------------------------------------------

/// What a transport can do. A test that needs a feature the transport lacks is skipped with a
/// printed reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Bodies may stay typed values in-process ([`Body::Message`]); otherwise bytes only.
    pub typed_bodies: bool,
    /// One consumer, with no requeues, sees the messages of one queue in the order they were
    /// published (so messages of one key, published one after another, stay in order).
    pub ordered_per_key: bool,
    /// [`Delivery::delivery_count`] counts every delivery exactly (1, 2, 3, ...). Without it a
    /// transport still reports 1 on a first delivery and more than 1 on a redelivery.
    pub exact_delivery_count: bool,
    /// [`SubscribeOptions::prefetch`] bounds the deliveries handed out and not yet settled.
    pub prefetch: bool,
    /// [`Outgoing::delay`] is honoured (delayed retries).
    pub delayed_delivery: bool,
    /// The transport keeps [`Headers::sent_at`] only to whole seconds (AMQP `timestamp`).
    pub sent_at_whole_seconds: bool,
    /// Queued messages outlive a restart of the broker (used by the fault suites).
    pub survives_restart: bool,
}

/// Makes clients of one broker for the conformance suite.
///
/// Create one factory per test, so tests share no queues.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    /// The transport's name, as printed in summaries.
    fn name(&self) -> &str;

    /// What the transport can do.
    fn features(&self) -> Features;

    /// A new client of the same broker. `label` names it (e.g. the AMQP connection name).
    async fn transport(&self, label: &str) -> Arc<dyn Transport>;

    /// Broker-side resources (e.g. AMQP channels) held by the clients of this factory, where
    /// the transport has such a notion: a leak check compares it before and after.
    async fn open_resources(&self) -> Option<usize> {
        None
    }

    /// Messages in an endpoint's queue (ready, and unacked where the transport can tell), where
    /// the transport can say.
    async fn queue_depth(&self, _endpoint: &str) -> Option<usize> {
        None
    }

    /// How long to wait before concluding that no further message is coming.
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(200)
    }
}

/// The in-memory transport: every client is a clone of one [`MemoryTransport`].
pub struct MemoryFactory {
    name: &'static str,
    transport: MemoryTransport,
}

impl MemoryFactory {
    /// Typed bodies (the transport's default).
    pub fn typed() -> Self {
        MemoryFactory {
            name: "memory",
            transport: MemoryTransport::new(),
        }
    }

    /// Bodies serialized to bytes, as a broker would carry them.
    pub fn serialized() -> Self {
        MemoryFactory {
            name: "memory-serialized",
            transport: MemoryTransport::new().serialize(true),
        }
    }

    /// The transport every client clones.
    pub fn memory(&self) -> &MemoryTransport {
        &self.transport
    }
}

#[async_trait]
impl TransportFactory for MemoryFactory {
    fn name(&self) -> &str {
        self.name
    }

    fn features(&self) -> Features {
        Features {
            typed_bodies: self.transport.carries_typed_messages(),
            ordered_per_key: true,
            exact_delivery_count: true,
            prefetch: true,
            delayed_delivery: true,
            sent_at_whole_seconds: false,
            survives_restart: false,
        }
    }

    async fn transport(&self, _label: &str) -> Arc<dyn Transport> {
        Arc::new(self.transport.clone())
    }

    async fn queue_depth(&self, endpoint: &str) -> Option<usize> {
        self.transport.depth(endpoint)
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_millis(100)
    }
}

/// RabbitMQ: every client is a new connection in one test's [`AmqpScope`] (unique queue and
/// exchange names; the connection name is the scope's prefix plus the label). Call
/// [`AmqpScope::cleanup`] when the test is over.
pub struct AmqpFactory {
    scope: AmqpScope,
}

impl AmqpFactory {
    /// Clients in this scope.
    pub fn new(scope: AmqpScope) -> Self {
        AmqpFactory { scope }
    }

    /// The scope.
    pub fn scope(&self) -> &AmqpScope {
        &self.scope
    }

    fn prefix(&self) -> &str {
        &self.scope.naming.queue_prefix
    }
}

#[async_trait]
impl TransportFactory for AmqpFactory {
    fn name(&self) -> &str {
        "amqp"
    }

    fn features(&self) -> Features {
        Features {
            typed_bodies: false,
            ordered_per_key: true,
            exact_delivery_count: false,
            prefetch: true,
            delayed_delivery: true,
            sent_at_whole_seconds: true,
            survives_restart: true,
        }
    }

    async fn transport(&self, label: &str) -> Arc<dyn Transport> {
        Arc::new(
            self.scope
                .transport(&format!("{}{label}", self.prefix()))
                .await,
        )
    }

    /// Channels of this scope's connections, from `rabbitmqctl list_connections`.
    async fn open_resources(&self) -> Option<usize> {
        let out = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "-q",
                "client_properties",
                "channels",
                "--formatter",
                "json",
            ])
            .output()
            .await
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut channels = 0;
        for row in rows.as_array()? {
            let name = connection_name(&row["client_properties"]);
            if name.is_some_and(|n| n.starts_with(self.prefix())) {
                channels += row["channels"].as_u64().unwrap_or(0) as usize;
            }
        }
        Some(channels)
    }

    async fn queue_depth(&self, endpoint: &str) -> Option<usize> {
        Some(self.scope.ready(&self.scope.naming.queue(endpoint)).await as usize)
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_millis(300)
    }
}

/// The `connection_name` client property, as `rabbitmqctl ... --formatter json` prints it:
/// a list of `[name, type, value]` triples.
fn connection_name(properties: &serde_json::Value) -> Option<String> {
    properties.as_array()?.iter().find_map(|p| {
        let p = p.as_array()?;
        if p.first()?.as_str()? != "connection_name" {
            return None;
        }
        p.get(2)?.as_str().map(String::from)
    })
}

// ---- bookkeeping ------------------------------------------------------------------------------

/// What was sent, confirmed and handled in one test.
#[derive(Clone, Default)]
struct Tally {
    inner: Arc<Mutex<TallyInner>>,
}

#[derive(Default)]
struct TallyInner {
    sent: HashSet<String>,
    confirmed: HashSet<String>,
    handled: HashMap<String, u32>,
    by_instance: BTreeMap<String, u64>,
}

/// The figures of a summary line.
#[derive(Debug)]
struct Figures {
    sent: usize,
    confirmed: usize,
    handled: u64,
    lost: Vec<String>,
    duplicates: u64,
    phantom: Vec<String>,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, TallyInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sent(&self, id: &str) {
        self.lock().sent.insert(id.to_string());
    }

    fn confirmed(&self, id: &str) {
        self.lock().confirmed.insert(id.to_string());
    }

    /// Record one handling; returns how many times `id` has now been handled.
    fn handled(&self, id: &str, instance: &str) -> u32 {
        let mut inner = self.lock();
        *inner.by_instance.entry(instance.to_string()).or_default() += 1;
        let n = inner.handled.entry(id.to_string()).or_default();
        *n += 1;
        *n
    }

    fn times(&self, id: &str) -> u32 {
        self.lock().handled.get(id).copied().unwrap_or(0)
    }

    fn distinct(&self) -> usize {
        self.lock().handled.len()
    }

    fn confirmed_count(&self) -> usize {
        self.lock().confirmed.len()
    }

    fn by_instance(&self) -> BTreeMap<String, u64> {
        self.lock().by_instance.clone()
    }

    fn figures(&self) -> Figures {
        let inner = self.lock();
        let mut lost: Vec<String> = inner
            .confirmed
            .iter()
            .filter(|id| !inner.handled.contains_key(*id))
            .cloned()
            .collect();
        lost.sort();
        let mut phantom: Vec<String> = inner
            .handled
            .keys()
            .filter(|id| !inner.sent.contains(*id))
            .cloned()
            .collect();
        phantom.sort();
        Figures {
            sent: inner.sent.len(),
            confirmed: inner.confirmed.len(),
            handled: inner.handled.values().map(|&n| u64::from(n)).sum(),
            lost,
            duplicates: inner
                .handled
                .values()
                .map(|&n| u64::from(n.saturating_sub(1)))
                .sum(),
            phantom,
        }
    }
}

/// Print the summary line and return the figures.
fn report(
    test: &str,
    f: &dyn TransportFactory,
    tally: &Tally,
    started: Instant,
    extra: &str,
) -> Figures {
    let fig = tally.figures();
    println!(
        "conformance {test:<27} [{}] sent={} confirmed={} handled={} lost={} duplicates={} phantom={} in {:.0?}{}{extra}",
        f.name(),
        fig.sent,
        fig.confirmed,
        fig.handled,
        fig.lost.len(),
        fig.duplicates,
        fig.phantom.len(),
        started.elapsed(),
        if extra.is_empty() { "" } else { "; " },
    );
    fig
}

/// Nothing lost, nothing phantom, and (unless allowed) no duplicates.
fn assert_clean(test: &str, f: &dyn TransportFactory, fig: &Figures, duplicates_allowed: u64) {
    let few = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    assert!(
        fig.lost.is_empty(),
        "{test} [{}]: {} confirmed message(s) never handled, e.g. {}",
        f.name(),
        fig.lost.len(),
        few(&fig.lost)
    );
    assert!(
        fig.phantom.is_empty(),
        "{test} [{}]: {} handled message(s) were never sent, e.g. {}",
        f.name(),
        fig.phantom.len(),
        few(&fig.phantom)
    );
    assert!(
        fig.duplicates <= duplicates_allowed,
        "{test} [{}]: {} duplicate handling(s), at most {duplicates_allowed} allowed",
        f.name(),
        fig.duplicates
    );
}

fn skip(test: &str, f: &dyn TransportFactory, reason: &str) {
    println!("conformance {test:<27} [{}] skipped: {reason}", f.name());
}

/// Run a test body under a hard deadline: a hang is a failure.
async fn within<T>(
    test: &str,
    f: &dyn TransportFactory,
    limit: Duration,
    body: impl Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(value) => value,
        Err(_) => {
            println!(
                "conformance {test:<27} [{}] FAILED: no result within {limit:?}",
                f.name()
            );
            panic!(
                "{test} [{}]: did not finish within {limit:?}; a hang is a failure",
                f.name()
            )
        }
    }
}

// ---- small tools ------------------------------------------------------------------------------

const RAW_TYPE: &str = "conformance.Raw";

fn topology(endpoints: &[(&str, &[&str])]) -> Topology {
    Topology {
        endpoints: endpoints
            .iter()
            .map(|(name, events)| EndpointTopology {
                name: name.to_string(),
                events: events.iter().map(|e| e.to_string()).collect(),
                commands: Vec::new(),
            })
            .collect(),
    }
}

async fn declare(t: &dyn Transport, endpoints: &[(&str, &[&str])]) {
    t.declare(&topology(endpoints))
        .await
        .unwrap_or_else(|e| panic!("declaring {endpoints:?} failed: {e}"));
}

fn raw_headers(id: &str, message_type: &str) -> Headers {
    Headers {
        message_id: id.into(),
        message_type: message_type.to_string().into(),
        content_type: "application/octet-stream".into(),
        ..Headers::default()
    }
}

/// A raw envelope whose body names its id.
fn raw(id: &str) -> Envelope {
    Envelope::from_bytes(
        raw_headers(id, RAW_TYPE),
        format!("{{\"id\":\"{id}\"}}").into_bytes(),
    )
}

fn to_endpoint(endpoint: &str, envelope: Envelope) -> Outgoing {
    Outgoing {
        destination: Destination::Endpoint(endpoint.to_string()),
        envelope,
        delay: None,
    }
}

async fn send_raw(t: &dyn Transport, endpoint: &str, id: &str, tally: &Tally) {
    tally.sent(id);
    t.send(to_endpoint(endpoint, raw(id)))
        .await
        .unwrap_or_else(|e| panic!("sending {id} to {endpoint} failed: {e}"));
    tally.confirmed(id);
}

/// Send `{prefix}-{n}` for each `n`, one after another, in a task.
fn produce(
    t: Arc<dyn Transport>,
    endpoint: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    tally: &Tally,
) -> JoinHandle<()> {
    produce_paced(t, endpoint, prefix, range, tally, Duration::ZERO)
}

/// [`produce`], pausing `pace` after each send.
fn produce_paced(
    t: Arc<dyn Transport>,
    endpoint: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    tally: &Tally,
    pace: Duration,
) -> JoinHandle<()> {
    let endpoint = endpoint.to_string();
    let prefix = prefix.to_string();
    let tally = tally.clone();
    tokio::spawn(async move {
        for n in range {
            send_raw(&*t, &endpoint, &format!("{prefix}-{n}"), &tally).await;
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    })
}

/// Await a task, passing its panic on.
async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a task of the test was cancelled: {e}"),
    }
}

async fn subscribe(t: &dyn Transport, endpoint: &str, prefetch: usize) -> Box<dyn Subscription> {
    t.subscribe(endpoint, SubscribeOptions { prefetch })
        .await
        .unwrap_or_else(|e| panic!("subscribing to {endpoint} failed: {e}"))
}

/// The next delivery, or `None` if none came within `limit`. A failed or ended subscription
/// is a test failure.
async fn next_within(sub: &mut Box<dyn Subscription>, limit: Duration) -> Option<Delivery> {
    match tokio::time::timeout(limit, sub.next()).await {
        Err(_) => None,
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("the subscription failed: {e}"),
        Ok(None) => panic!("the subscription ended while the test still consumed from it"),
    }
}

/// No delivery arrives within the quiet period.
async fn expect_quiet(f: &dyn TransportFactory, sub: &mut Box<dyn Subscription>, what: &str) {
    if let Some(d) = next_within(sub, f.quiet_period()).await {
        let id = d.envelope().headers.message_id.clone();
        let redelivered = d.redelivered();
        drop(d);
        panic!(
            "[{}] {what}: unexpected delivery of `{id}` (redelivered: {redelivered})",
            f.name()
        );
    }
}

/// The queue of an endpoint is empty (where the transport can tell).
async fn expect_empty(f: &dyn TransportFactory, endpoint: &str) {
    let mut depth = f.queue_depth(endpoint).await;
    // Settlements may still be on their way to the broker.
    for _ in 0..20 {
        if depth.is_none_or(|d| d == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        depth = f.queue_depth(endpoint).await;
    }
    panic!(
        "[{}] queue `{endpoint}` should be empty, holds {depth:?}",
        f.name()
    );
}

fn id_of(d: &Delivery) -> String {
    d.envelope().headers.message_id.to_string()
}

fn bytes_of(envelope: &Envelope) -> &[u8] {
    match &envelope.body {
        Body::Bytes(b) => b.as_ref(),
        Body::Message(m) => panic!(
            "expected a body of bytes, got the typed message {}",
            m.message_name()
        ),
    }
}

async fn ack(d: Delivery) {
    let id = id_of(&d);
    d.ack()
        .await
        .unwrap_or_else(|e| panic!("ack of {id} failed: {e}"));
}

/// Spin until `done` holds, up to `limit`; fails the test with `what` otherwise.
async fn wait_for(limit: Duration, what: &str, done: impl FnMut() -> bool) {
    assert!(eventually(limit, done).await, "{what} (waited {limit:?})");
}

// ---- messages of the bus-level tests ----------------------------------------------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "conformance.Work")]
struct Work {
    id: String,
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "conformance.Flaky")]
struct Flaky {
    id: String,
    /// Attempts that fail before one succeeds; `u32::MAX` never succeeds.
    fail_times: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "conformance.Fanned")]
struct Fanned {
    id: String,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "conformance.Probe")]
struct Probe {
    n: u32,
    text: String,
}

/// A bus that only sends (hosts nothing), with `C` routed to `endpoint`.
async fn sender<C: Command>(t: Arc<dyn Transport>, endpoint: &str) -> Bus {
    Bus::builder()
        .transport_arc(t)
        .without_discovery()
        .route::<C>(endpoint)
        .build()
        .await
        .expect("a sending bus builds")
}

/// A bus instance hosting `endpoint` with a handler recording `Work` into the tally.
async fn work_instance(
    t: Arc<dyn Transport>,
    endpoint: &str,
    instance: &str,
    tally: &Tally,
    config: EndpointConfig,
) -> Bus {
    let tally = tally.clone();
    let me = instance.to_string();
    Bus::builder()
        .transport_arc(t)
        .without_discovery()
        .handler(endpoint.to_string(), move |cmd: Work| {
            let tally = tally.clone();
            let me = me.clone();
            async move {
                tally.handled(&cmd.id, &me);
                tokio::task::yield_now().await;
                Ok::<(), HandlerError>(())
            }
        })
        .route::<Work>(endpoint)
        .endpoint(endpoint, move |_| config)
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await
        .unwrap_or_else(|e| panic!("bus instance {instance} of {endpoint} failed to start: {e}"))
}

/// Send `Work` ids `{prefix}-{n}` from `tasks` concurrent producers.
async fn send_work(bus: &Bus, prefix: &str, count: usize, tasks: usize, tally: &Tally) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let bus = bus.clone();
        let tally = tally.clone();
        let prefix = prefix.to_string();
        handles.push(tokio::spawn(async move {
            for n in (t..count).step_by(tasks) {
                let id = format!("{prefix}-{n}");
                tally.sent(&id);
                bus.send(Work { id: id.clone() })
                    .await
                    .unwrap_or_else(|e| panic!("sending {id} failed: {e}"));
                tally.confirmed(&id);
            }
        }));
    }
    for h in handles {
        join(h).await;
    }
}

// ---- 1. round trip ----------------------------------------------------------------------------

/// Test 1: Publish/subscribe round trip: body bytes and headers arrive equal, to an endpoint queue
/// and through an event subscription: unicode values (and a unicode header name), empty values, 4
/// KiB values, a binary non-UTF-8 body, correlation ids, bus headers, many custom headers,
/// `sent_at` (to whole seconds where the transport says so), and typed bodies where supported.
pub async fn round_trip(f: &dyn TransportFactory) {
    within("round_trip", f, Duration::from_secs(30), round_trip_body(f)).await
}

struct Case {
    name: &'static str,
    headers: Headers,
    body: Vec<u8>,
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn round_trip_cases() -> Vec<Case> {
    let now = SystemTime::now();
    let whole = whole_seconds(now);
    let base = |name: &str| Headers {
        message_id: Default::default(),
        message_type: format!("conformance.rt.{name}").into(),
        content_type: "application/json".into(),
        correlation_id: None,
        sent_at: None,
        custom: BTreeMap::new(),
    };
    let kv = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let mut cases = Vec::new();

    let mut h = base("unicode");
    h.content_type = "application/json; charset=utf-8".into();
    h.correlation_id = Some("corr-ünï-☃-日本".into());
    h.sent_at = Some(whole);
    h.custom = kv(&[
        ("greeting", "héllo wörld ✓ 日本語 🚀".into()),
        ("rtl", "مرحبا بالعالم".into()),
        ("emoji", "👍🏽👨‍👩‍👧 and \u{200d} joiners".into()),
        ("ключ", "значение".into()),
        ("control", "tab\there, newline\nthere, nul-free".into()),
    ]);
    cases.push(Case {
        name: "unicode",
        headers: h,
        body: "{\"text\":\"grüße 🚀 日本 \\u0000\"}".as_bytes().to_vec(),
    });

    let mut h = base("empty");
    h.content_type = "".into();
    h.correlation_id = Some(String::new());
    h.custom = kv(&[("empty", String::new()), ("also-empty", String::new())]);
    cases.push(Case {
        name: "empty",
        headers: h,
        body: Vec::new(),
    });

    let mut h = base("big");
    h.sent_at = Some(whole);
    h.custom = kv(&[
        ("big-ascii", "x".repeat(4096)),
        ("big-two-byte", "é".repeat(2048)),
        ("big-mixed", "aé日🚀".repeat(1024)),
    ]);
    cases.push(Case {
        name: "big",
        headers: h,
        body: (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect(),
    });

    let mut h = base("binary");
    h.content_type = "application/octet-stream".into();
    let mut body: Vec<u8> = (0..=255u8).collect();
    body.extend_from_slice(&[0xC3, 0x28, 0xFF, 0xFE, 0x00, 0x80, 0xED, 0xA0, 0x80]);
    body.extend((0..512u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    cases.push(Case {
        name: "binary",
        headers: h,
        body,
    });

    let mut h = base("ids");
    h.correlation_id = Some(uuid::Uuid::now_v7().to_string());
    h.sent_at = Some(whole);
    let mut custom = kv(&[
        (header::CONVERSATION_ID, uuid::Uuid::now_v7().to_string()),
        (header::CAUSATION_ID, uuid::Uuid::now_v7().to_string()),
        (header::REPLY_TO, "conf-replies".into()),
        (header::DELAYED_RETRIES, "2".into()),
        ("tenant", "acme".into()),
    ]);
    for i in 0..40 {
        custom.insert(format!("h-{i:02}"), format!("value {i}"));
    }
    h.custom = custom;
    cases.push(Case {
        name: "ids",
        headers: h,
        body: b"{\"ok\":true}".to_vec(),
    });

    let mut h = base("time");
    h.sent_at = Some(now);
    cases.push(Case {
        name: "time",
        headers: h,
        body: b"{}".to_vec(),
    });
    cases
}

async fn round_trip_body(f: &dyn TransportFactory) {
    const TEST: &str = "round_trip";
    let started = Instant::now();
    let features = f.features();
    let publisher = f.transport("rt-pub").await;
    let subscriber = f.transport("rt-sub").await;
    assert_eq!(
        publisher.carries_typed_messages(),
        features.typed_bodies,
        "[{}] the `typed_bodies` feature must match `Transport::carries_typed_messages`",
        f.name()
    );
    let endpoint = "conf-rt";
    let event = "conformance.rt.Happened";
    declare(&*subscriber, &[(endpoint, &[event])]).await;
    let mut sub = subscribe(&*subscriber, endpoint, 8).await;
    let tally = Tally::default();

    let mut expected: HashMap<String, (Headers, Vec<u8>)> = HashMap::new();
    for case in round_trip_cases() {
        for (route, destination) in [
            ("endpoint", Destination::Endpoint(endpoint.into())),
            ("event", Destination::Event(event.into())),
        ] {
            let id = format!("rt-{}-{route}", case.name);
            let mut headers = case.headers.clone();
            headers.message_id = id.clone().into();
            let mut want = headers.clone();
            if features.sent_at_whole_seconds {
                want.sent_at = want.sent_at.map(whole_seconds);
            }
            expected.insert(id.clone(), (want, case.body.clone()));
            tally.sent(&id);
            publisher
                .send(Outgoing {
                    destination,
                    envelope: Envelope::from_bytes(headers, case.body.clone()),
                    delay: None,
                })
                .await
                .unwrap_or_else(|e| panic!("[{}] sending case {id} failed: {e}", f.name()));
            tally.confirmed(&id);
        }
    }
    let mut typed = 0;
    if features.typed_bodies {
        let probe = Probe {
            n: 42,
            text: "typed ü".into(),
        };
        let id = "rt-typed".to_string();
        tally.sent(&id);
        publisher
            .send(Outgoing {
                destination: Destination::Endpoint(endpoint.into()),
                envelope: Envelope {
                    headers: Arc::new(raw_headers(&id, "conformance.Probe")),
                    body: Body::Message(Arc::new(probe.clone())),
                },
                delay: None,
            })
            .await
            .expect("sending a typed body");
        tally.confirmed(&id);
        typed = 1;
    }

    for _ in 0..expected.len() + typed {
        let d = next_within(&mut sub, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "[{}] only {} of {} round-trip messages arrived",
                    f.name(),
                    tally.distinct(),
                    expected.len() + typed
                )
            });
        let id = id_of(&d);
        assert!(
            !d.redelivered() && d.delivery_count() == 1,
            "[{}] {id}: a first delivery must be neither redelivered nor counted twice ({}, {})",
            f.name(),
            d.redelivered(),
            d.delivery_count()
        );
        if id == "rt-typed" {
            match &d.envelope().body {
                Body::Message(m) => assert_eq!(
                    m.downcast_ref::<Probe>(),
                    Some(&Probe {
                        n: 42,
                        text: "typed ü".into()
                    }),
                    "[{}] the typed body arrives as it was sent",
                    f.name()
                ),
                other => panic!("[{}] a typed body arrived as {other:?}", f.name()),
            }
        } else {
            let (want_headers, want_body) = expected
                .get(&id)
                .unwrap_or_else(|| panic!("[{}] unexpected message {id}", f.name()));
            assert_eq!(
                &*d.envelope().headers,
                want_headers,
                "[{}] {id}: headers changed on the way",
                f.name()
            );
            assert!(
                bytes_of(d.envelope()) == want_body.as_slice(),
                "[{}] {id}: body changed on the way ({} bytes sent, {} received)",
                f.name(),
                want_body.len(),
                bytes_of(d.envelope()).len()
            );
        }
        ack(d).await;
        tally.handled(&id, "rt-sub");
    }
    expect_quiet(f, &mut sub, "after the round trip").await;
    drop(sub);
    expect_empty(f, endpoint).await;
    let extra = if typed == 1 {
        String::new()
    } else {
        "typed bodies not supported: typed case skipped".into()
    };
    let fig = report(TEST, f, &tally, started, &extra);
    assert_clean(TEST, f, &fig, 0);
}

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
                    destination: Destination::Event(ty.to_string()),
                    envelope,
                    delay: None,
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
    let confirmed: HashSet<String> = tally.lock().confirmed.clone();
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

/// Test 11b: [`Subscription::cancel`] ("stop receiving new deliveries, while the ones handed out
/// can still be settled"): it returns promptly, the deliveries handed out before it can still be
/// acked, `next` hands out nothing new afterwards, and what was not handed out goes to the next
/// consumer once the subscription is dropped.
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

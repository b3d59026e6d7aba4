//! Routing semantics on the in-memory transport: commands point-to-point with competing
//! instances, events fanned out to every subscribing endpoint, ids propagated, build checks.

use std::time::Duration;

use bus_core::{
    Bus, BusError, Command, Event, HandlerError, Headers, MessageContext, SendOptions, State,
};
use bus_tests::{eventually, Ledger};
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

#[derive(Clone)]
struct Instance(&'static str);

// ---- competing consumers -------------------------------------------------------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.compete.Work", endpoint = "t-compete")]
struct Work {
    n: u32,
}

#[bus_core::handler]
async fn do_work(
    cmd: Work,
    State(ledger): State<Ledger>,
    State(me): State<Instance>,
) -> Result<(), HandlerError> {
    ledger.record(cmd.n.to_string(), me.0);
    tokio::task::yield_now().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_commands_over_two_instances_are_each_handled_once() {
    let transport = MemoryTransport::new().capacity(1_000);
    let ledger = Ledger::new();
    let start = |name: &'static str| {
        Bus::builder()
            .transport(transport.clone())
            .host(["t-compete"])
            .state(ledger.clone())
            .state(Instance(name))
            .endpoint("t-compete", |e| e.concurrency(8))
            .start()
    };
    let a = start("a").await.unwrap();
    let b = start("b").await.unwrap();

    const N: u32 = 10_000;
    let sender = a.clone();
    let producer = tokio::spawn(async move {
        for n in 0..N {
            sender.send(Work { n }).await.unwrap();
        }
    });
    producer.await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || ledger.distinct() == N as usize).await,
        "handled {} of {N}",
        ledger.distinct()
    );
    a.shutdown().await;
    b.shutdown().await;

    assert_eq!(
        ledger.total(),
        u64::from(N),
        "every command handled exactly once"
    );
    assert_eq!(ledger.duplicates(), 0);
    let per = ledger.by_instance();
    assert!(
        per.get("a").copied().unwrap_or(0) > 0,
        "instance a shared the work: {per:?}"
    );
    assert!(
        per.get("b").copied().unwrap_or(0) > 0,
        "instance b shared the work: {per:?}"
    );
    assert_eq!(transport.depth("t-compete"), Some(0));
}

// ---- fan-out ---------------------------------------------------------------------------------

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "t.fan.Happened")]
struct Happened {
    n: u32,
}

#[bus_core::handler(endpoint = "t-fan-1")]
async fn fan_one(evt: Happened, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(format!("t-fan-1/{}", evt.n), "t-fan-1");
    Ok(())
}

#[bus_core::handler(endpoint = "t-fan-2")]
async fn fan_two(evt: Happened, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(format!("t-fan-2/{}", evt.n), "t-fan-2");
    Ok(())
}

#[bus_core::handler(endpoint = "t-fan-3")]
async fn fan_three(evt: Happened, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(format!("t-fan-3/{}", evt.n), "t-fan-3");
    Ok(())
}

#[tokio::test]
async fn an_event_reaches_each_of_three_endpoints_once_and_instances_compete() {
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();
    // Two instances of the whole service set: within an endpoint they compete.
    let mut buses = Vec::new();
    for _ in 0..2 {
        buses.push(
            Bus::builder()
                .transport(transport.clone())
                .host(["t-fan-1", "t-fan-2", "t-fan-3"])
                .state(ledger.clone())
                .start()
                .await
                .unwrap(),
        );
    }
    for n in 0..100 {
        buses[0].publish(Happened { n }).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(10), || ledger.total() == 300).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for bus in &buses {
        bus.shutdown().await;
    }
    assert_eq!(ledger.total(), 300);
    assert_eq!(ledger.duplicates(), 0);
    for ep in ["t-fan-1", "t-fan-2", "t-fan-3"] {
        for n in 0..100 {
            assert_eq!(
                ledger.count(&format!("{ep}/{n}")),
                1,
                "{ep} got event {n} once"
            );
        }
    }
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "t.fan.Unheard")]
struct Unheard;

#[tokio::test]
async fn an_event_nobody_subscribes_to_is_fine_but_an_unroutable_command_is_an_error() {
    #[derive(Command, Serialize, Deserialize, Clone, Debug)]
    #[command(name = "t.route.Nowhere", endpoint = "t-nowhere")]
    struct Nowhere;

    let bus = Bus::builder()
        .transport(MemoryTransport::new())
        .host(Vec::<String>::new())
        .build()
        .await
        .unwrap();
    bus.publish(Unheard).await.unwrap();
    let err = bus.send(Nowhere).await.unwrap_err();
    assert!(
        matches!(err, BusError::Transport(bus_core::TransportError::Unroutable(ref q)) if q == "endpoint `t-nowhere`"),
        "{err}"
    );
}

// ---- endpoint names from constants ----------------------------------------------------------------

mod names {
    pub const LEDGER: &str = "t-const-ledger";
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.const.Post", endpoint = names::LEDGER)]
struct Post {
    n: u32,
}

#[bus_core::handler]
async fn post(cmd: Post, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(format!("post/{}", cmd.n), names::LEDGER);
    Ok(())
}

#[tokio::test]
async fn endpoint_names_from_constants_route_commands_on_memory() {
    let ledger = Ledger::new();
    let bus = Bus::builder()
        .transport(MemoryTransport::new().serialize(true))
        .host([names::LEDGER])
        .state(ledger.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(bus.route_of("t.const.Post"), Some(names::LEDGER));
    bus.send(Post { n: 1 }).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || ledger.count("post/1") == 1).await);
    bus.shutdown().await;
}

// ---- ids propagate from input to output ------------------------------------------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.ids.Start", endpoint = "t-ids-a")]
struct Start;

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "t.ids.Started")]
struct Started;

#[bus_core::handler]
async fn ids_start(
    _: Start,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    ledger.note(format!("start id={}", ctx.message_id()));
    ctx.publish(Started).await?;
    Ok(())
}

#[bus_core::handler(endpoint = "t-ids-b")]
async fn ids_started(
    _: Started,
    headers: Headers,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    ledger.note(format!(
        "started id={} correlation={} conversation={} causation={}",
        headers.message_id,
        headers.correlation_id().unwrap_or_default(),
        headers.conversation_id().unwrap_or_default(),
        headers.causation_id().unwrap_or_default()
    ));
    Ok(())
}

/// Send `Start` with `options` to a bus hosting both id endpoints; the two notes its handlers
/// wrote: the `Start` handler's, then the `Started` handler's.
async fn ids_seen(options: SendOptions) -> Vec<String> {
    let ledger = Ledger::new();
    let bus = Bus::builder()
        .transport(MemoryTransport::new())
        .host(["t-ids-a", "t-ids-b"])
        .state(ledger.clone())
        .start()
        .await
        .unwrap();
    bus.send_with(Start, options).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || ledger.notes().len() == 2).await);
    bus.shutdown().await;
    ledger.notes()
}

/// A root message sent with no ids of its own carries neither a correlation id nor the
/// conversation header: its message id is both, and what its handler sends carries them.
#[tokio::test]
async fn a_root_message_id_is_the_correlation_and_conversation_of_what_it_causes() {
    let notes = ids_seen(SendOptions::new().message_id("root-2")).await;
    assert_eq!(notes[0], "start id=root-2");
    let started = &notes[1];
    assert!(started.contains("correlation=root-2"), "{started}");
    assert!(started.contains("conversation=root-2"), "{started}");
    assert!(started.contains("causation=root-2"), "{started}");
}

#[tokio::test]
async fn message_ids_propagate_from_input_to_output() {
    let notes = ids_seen(
        SendOptions::new()
            .correlation_id("corr-1")
            .message_id("root-1"),
    )
    .await;
    assert_eq!(notes[0], "start id=root-1");
    let started = &notes[1];
    assert!(started.contains("correlation=corr-1"), "{started}");
    assert!(started.contains("conversation=root-1"), "{started}");
    assert!(started.contains("causation=root-1"), "{started}");
    assert!(
        !started.contains("id=root-1 "),
        "the event has its own id: {started}"
    );
}

// ---- build-time checks -----------------------------------------------------------------------

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.build.Orphan", endpoint = "t-orphan")]
struct Orphan;

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.build.Twice", endpoint = "t-twice")]
struct Twice;

async fn twice_a(_: Twice) -> Result<(), HandlerError> {
    Ok(())
}

async fn twice_b(_: Twice, _ctx: MessageContext) -> Result<(), HandlerError> {
    Ok(())
}

#[derive(Clone)]
struct NotProvided;

async fn needs_state(_: Twice, State(_): State<NotProvided>) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test]
async fn a_command_without_handler_in_its_endpoint_fails_the_build() {
    let err = Bus::builder()
        .transport(MemoryTransport::new())
        .host(["t-orphan"])
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::NoHandler { ref message, ref endpoint } if message == "t.build.Orphan" && endpoint == "t-orphan"),
        "{err}"
    );
    assert!(err.to_string().contains("no handler"), "{err}");
}

#[tokio::test]
async fn a_command_with_two_handlers_fails_the_build() {
    let err = Bus::builder()
        .transport(MemoryTransport::new())
        .without_discovery()
        .handler("t-twice", twice_a)
        .handler("t-twice", twice_b)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::DuplicateHandler { ref handlers, .. } if handlers.len() == 2),
        "{err}"
    );
}

#[tokio::test]
async fn a_command_handled_outside_its_owning_endpoint_fails_the_build() {
    let err = Bus::builder()
        .transport(MemoryTransport::new())
        .without_discovery()
        .handler("t-elsewhere", twice_a)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::MisplacedHandler { ref owner, .. } if owner == "t-twice"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_state_fails_the_build_and_a_missing_transport_too() {
    let err = Bus::builder()
        .transport(MemoryTransport::new())
        .without_discovery()
        .handler("t-twice", needs_state)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::MissingState { ref state, .. } if state.contains("NotProvided")),
        "{err}"
    );

    let err = Bus::builder().host(["t-none"]).build().await.unwrap_err();
    assert!(matches!(err, BusError::NoTransport), "{err}");
}

#[tokio::test]
async fn explicit_registration_takes_the_same_path_as_the_attribute() {
    let ledger = Ledger::new();
    async fn explicit(cmd: Work, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
        ledger.record(cmd.n.to_string(), "explicit");
        Ok(())
    }
    let bus = Bus::builder()
        .transport(MemoryTransport::new())
        .without_discovery()
        .handler("t-compete", explicit)
        .state(ledger.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(bus.route_of("t.compete.Work"), Some("t-compete"));
    bus.send(Work { n: 1 }).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || ledger.total() == 1).await);
    bus.shutdown().await;
    assert_eq!(ledger.by_instance().get("explicit"), Some(&1));
}

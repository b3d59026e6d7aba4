//! Declaring the JetStream topology of an endpoint: its streams and its durable consumers.
//!
//! JetStream cannot put one subject in two streams, and servers before 2.10 let a consumer
//! filter on one subject only. So, as an AMQP queue with bindings, every endpoint owns a
//! work-queue stream that holds its command subject and *sources* the event streams it
//! subscribes to (one stream per event type): the server copies each event into every
//! subscribing endpoint's stream, and one durable pull consumer per endpoint hands out
//! everything the endpoint must handle. A source added later starts after the event stream's
//! last message, as a new AMQP binding only sees later events. Sources are never removed by
//! a declaration (as bindings are never unbound): another version of the service may still
//! rely on them.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{
    ConsumerInfoError, ConsumerInfoErrorKind, CreateStreamError, CreateStreamErrorKind,
    GetStreamError, GetStreamErrorKind,
};
use async_nats::jetstream::stream::{
    self, ConsumerError, ConsumerErrorKind, RetentionPolicy, Source, StorageType,
};
use async_nats::jetstream::{Context, ErrorCode};
use bus_core::{Declared, Destination, EndpointTopology, Topology, TransportError};
use futures_util::StreamExt;
use tokio::time::timeout;

use crate::config::{check_subject_part, NatsConfig};

/// Most delayed retries an endpoint may have parked in its delay consumer at once; more wait
/// in the delay stream until some are moved.
const DELAY_MAX_ACK_PENDING: i64 = 100_000;
/// Most scheduled messages parked in the scheduled consumer at once; more wait in the stream
/// until some are delivered.
const SCHEDULED_MAX_ACK_PENDING: i64 = 100_000;

/// The consumers of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConsumerKind {
    /// The endpoint's input: commands and events.
    Input,
    /// Delayed retries waiting to be due.
    Delay,
    /// The bus-wide scheduled messages (the endpoint name plays no part).
    Scheduled,
}

/// Create (idempotently) every stream and consumer of one endpoint.
pub(crate) async fn declare_endpoint(
    js: &Context,
    config: &NatsConfig,
    ep: &EndpointTopology,
) -> Result<(), TransportError> {
    check_subject_part("endpoint name", &ep.name)?;
    let naming = &config.naming;
    let mut sources = Vec::with_capacity(ep.events.len());
    for event in &ep.events {
        check_subject_part("event wire name", event)?;
        let last = ensure_event_stream(js, config, event).await?;
        sources.push(Source {
            name: naming.event_stream(event),
            start_sequence: Some(last + 1),
            ..Source::default()
        });
    }
    ensure_endpoint_stream(js, config, &ep.name, sources).await?;
    ensure_stream(
        js,
        config,
        stream::Config {
            name: naming.delay_stream(&ep.name),
            subjects: vec![naming.delay_subject(&ep.name)],
            retention: RetentionPolicy::WorkQueue,
            duplicate_window: config.duplicate_window,
            description: Some(format!("delayed retries of endpoint `{}`", ep.name)),
            ..base_stream()
        },
    )
    .await?;
    ensure_stream(
        js,
        config,
        stream::Config {
            name: naming.error_stream(&ep.name),
            subjects: vec![naming.error_subject(&ep.name)],
            retention: RetentionPolicy::Limits,
            duplicate_window: config.duplicate_window,
            description: Some(format!("error queue of endpoint `{}`", ep.name)),
            ..base_stream()
        },
    )
    .await?;
    ensure_consumer(js, config, &ep.name, ConsumerKind::Input).await?;
    ensure_consumer(js, config, &ep.name, ConsumerKind::Delay).await?;
    Ok(())
}

/// Create (idempotently) the stream that keeps every scheduled message of the naming until it
/// is due. One message per subject: a scheduled message's subject is made of its message id
/// (see the `schedule` module), so sending the same message again replaces it instead of
/// scheduling it twice, and a cancelled id can be scheduled again at once (a deduplication
/// window would swallow that).
pub(crate) async fn ensure_scheduled_stream(
    js: &Context,
    config: &NatsConfig,
) -> Result<(), TransportError> {
    let naming = &config.naming;
    ensure_stream(
        js,
        config,
        stream::Config {
            name: naming.scheduled_stream(),
            subjects: vec![naming.scheduled_subjects()],
            retention: RetentionPolicy::WorkQueue,
            max_messages_per_subject: 1,
            description: Some("scheduled messages of the bus, until they are due".into()),
            ..base_stream()
        },
    )
    .await
    .map(drop)
}

fn base_stream() -> stream::Config {
    stream::Config {
        storage: StorageType::File,
        num_replicas: 1,
        ..stream::Config::default()
    }
}

/// The stream of one event type; returns its last sequence (where a new source starts).
async fn ensure_event_stream(
    js: &Context,
    config: &NatsConfig,
    wire_name: &str,
) -> Result<u64, TransportError> {
    let naming = &config.naming;
    let info = ensure_stream(
        js,
        config,
        stream::Config {
            name: naming.event_stream(wire_name),
            subjects: vec![naming.event_subject(wire_name)],
            retention: RetentionPolicy::Limits,
            max_age: config.event_max_age,
            duplicate_window: config.duplicate_window,
            description: Some(format!("events `{wire_name}`")),
            ..base_stream()
        },
    )
    .await?;
    Ok(info.state.last_sequence)
}

/// The endpoint's input stream: its command subject, plus a source per subscribed event.
async fn ensure_endpoint_stream(
    js: &Context,
    config: &NatsConfig,
    endpoint: &str,
    sources: Vec<Source>,
) -> Result<(), TransportError> {
    let naming = &config.naming;
    let name = naming.endpoint_stream(endpoint);
    let subject = naming.command_subject(endpoint);
    for _ in 0..3 {
        match get_stream(js, config, &name).await? {
            None => {
                let wanted = stream::Config {
                    name: name.clone(),
                    subjects: vec![subject.clone()],
                    retention: RetentionPolicy::WorkQueue,
                    duplicate_window: config.duplicate_window,
                    description: Some(format!("input of endpoint `{endpoint}`")),
                    sources: (!sources.is_empty()).then(|| sources.clone()),
                    ..base_stream()
                };
                match create_stream(js, config, wanted).await? {
                    Ok(_) => return Ok(()),
                    // Another instance created it meanwhile: merge into theirs.
                    Err(e) if is_name_in_use(&e) => continue,
                    Err(e) => return Err(api_error(format!("creating stream `{name}`"), e)),
                }
            }
            Some(info) => {
                let mut cfg = info.config;
                let mut changed = false;
                if !cfg.subjects.contains(&subject) {
                    cfg.subjects.push(subject.clone());
                    changed = true;
                }
                let mut all = cfg.sources.take().unwrap_or_default();
                for s in &sources {
                    if !all.iter().any(|have| have.name == s.name) {
                        all.push(s.clone());
                        changed = true;
                    }
                }
                cfg.sources = (!all.is_empty()).then_some(all);
                if !changed {
                    return Ok(());
                }
                let updating = js.update_stream(&cfg);
                TransportError::within(
                    "updating an endpoint stream",
                    config.connect_timeout,
                    updating,
                )
                .await?
                .map_err(|e| api_error(format!("updating stream `{name}`"), e))?;
                return Ok(());
            }
        }
    }
    Err(TransportError::Other {
        context: format!("stream `{name}` keeps changing while it is declared; try again"),
        source: None,
    })
}

/// A stream with this configuration, created if missing; an existing one is left as it is.
async fn ensure_stream(
    js: &Context,
    config: &NatsConfig,
    wanted: stream::Config,
) -> Result<stream::Info, TransportError> {
    let name = wanted.name.clone();
    if let Some(info) = get_stream(js, config, &name).await? {
        return Ok(info);
    }
    match create_stream(js, config, wanted).await? {
        Ok(info) => Ok(info),
        Err(e) if is_name_in_use(&e) => {
            get_stream(js, config, &name)
                .await?
                .ok_or_else(|| TransportError::Other {
                    context: format!("stream `{name}` vanished while it was declared; try again"),
                    source: None,
                })
        }
        Err(e) => Err(api_error(format!("creating stream `{name}`"), e)),
    }
}

/// Stream info, `None` when it does not exist.
pub(crate) async fn get_stream(
    js: &Context,
    config: &NatsConfig,
    name: &str,
) -> Result<Option<stream::Info>, TransportError> {
    let reading = js.get_stream(name);
    match TransportError::within("reading a stream", config.request_timeout, reading).await? {
        Ok(s) => Ok(Some(s.cached_info().clone())),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            _ => Err(api_error(format!("reading stream `{name}`"), e)),
        },
    }
}

/// Create a stream; the client's error is returned as it is, to tell "already exists" apart.
async fn create_stream(
    js: &Context,
    config: &NatsConfig,
    wanted: stream::Config,
) -> Result<Result<stream::Info, CreateStreamError>, TransportError> {
    let creating = js.create_stream(wanted);
    let created = TransportError::within("creating a stream", config.connect_timeout, creating);
    Ok(created.await?.map(|s| s.cached_info().clone()))
}

/// Another instance created the stream first.
fn is_name_in_use(e: &CreateStreamError) -> bool {
    matches!(e.kind(), CreateStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NAME_EXIST)
}

/// The settings of an endpoint's consumer.
fn consumer_config(config: &NatsConfig, kind: ConsumerKind) -> pull::Config {
    let base = pull::Config {
        durable_name: Some(config.naming.consumer.clone()),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: config.ack_wait,
        ..pull::Config::default()
    };
    match kind {
        ConsumerKind::Input => pull::Config {
            max_deliver: config.max_deliver,
            max_ack_pending: config.max_ack_pending,
            description: Some("every instance of the endpoint pulls from it".into()),
            ..base
        },
        // Parking a retry until it is due is a nak with a delay, which counts as a delivery:
        // no delivery limit here.
        ConsumerKind::Delay => pull::Config {
            max_deliver: -1,
            max_ack_pending: DELAY_MAX_ACK_PENDING,
            description: Some("moves delayed retries back to the endpoint when due".into()),
            ..base
        },
        // Parked the same way as delayed retries, and as many may wait at once.
        ConsumerKind::Scheduled => pull::Config {
            max_deliver: -1,
            max_ack_pending: SCHEDULED_MAX_ACK_PENDING,
            description: Some("every bus hands out the scheduled messages due from it".into()),
            ..base
        },
    }
}

/// The stream a consumer kind reads.
pub(crate) fn consumer_stream(config: &NatsConfig, endpoint: &str, kind: ConsumerKind) -> String {
    match kind {
        ConsumerKind::Input => config.naming.endpoint_stream(endpoint),
        ConsumerKind::Delay => config.naming.delay_stream(endpoint),
        ConsumerKind::Scheduled => config.naming.scheduled_stream(),
    }
}

/// The durable consumer, created if missing (an existing one keeps its settings).
/// [`TransportError::Unroutable`] when the endpoint's stream does not exist.
pub(crate) async fn ensure_consumer(
    js: &Context,
    config: &NatsConfig,
    endpoint: &str,
    kind: ConsumerKind,
) -> Result<PullConsumer, TransportError> {
    let stream_name = consumer_stream(config, endpoint, kind);
    let limit = config.request_timeout;
    let timed_out = || TransportError::timeout("reading or creating a consumer", limit);
    let stream = match timeout(limit, js.get_stream_no_info(&stream_name)).await {
        Err(_) => return Err(timed_out()),
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(api_error(format!("reading stream `{stream_name}`"), e)),
    };
    let name = config.naming.consumer.as_str();
    match timeout(limit, stream.get_consumer::<pull::Config>(name)).await {
        Err(_) => return Err(timed_out()),
        Ok(Ok(c)) => return Ok(c),
        Ok(Err(e)) => {
            match e
                .downcast_ref::<ConsumerInfoError>()
                .map(ConsumerInfoError::kind)
            {
                Some(ConsumerInfoErrorKind::NotFound) => {}
                Some(ConsumerInfoErrorKind::StreamNotFound) => {
                    return Err(unroutable(endpoint, kind, &stream_name))
                }
                _ => return Err(api_error(format!("reading consumer of `{stream_name}`"), e)),
            }
        }
    }
    match timeout(limit, stream.create_consumer(consumer_config(config, kind))).await {
        Err(_) => Err(timed_out()),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => {
            let missing_stream = matches!(e.kind(), ConsumerErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND);
            if missing_stream {
                return Err(unroutable(endpoint, kind, &stream_name));
            }
            Err(api_error(
                format!("creating consumer of `{stream_name}`"),
                e,
            ))
        }
    }
}

/// The endpoint has no stream: it was never declared on this server (under this naming).
/// The target reads as the destination does (endpoint `E`), followed by the missing stream.
/// The scheduled stream is no endpoint's: it is missing until the first bus creates it.
fn unroutable(endpoint: &str, kind: ConsumerKind, stream: &str) -> TransportError {
    if kind == ConsumerKind::Scheduled {
        return TransportError::Other {
            context: format!("the stream of scheduled messages `{stream}` does not exist"),
            source: None,
        };
    }
    let destination = Destination::Endpoint(endpoint.into());
    TransportError::Unroutable(format!("{destination} (no stream `{stream}`)"))
}

/// What a teardown deletes for one endpoint or event: a stream, and whether it carries the
/// durable consumer a declaration created on it.
struct Doomed {
    stream: String,
    consumer: bool,
}

/// Delete the streams and consumers that declaring these endpoints created, and the streams of
/// the events they subscribe to, reporting each; with `dry_run`, report what exists and delete
/// nothing. What does not exist is skipped. An event stream that a stream left standing (an
/// endpoint outside the topology) still sources is kept: deleting it would end that
/// endpoint's subscription.
pub(crate) async fn teardown(
    js: &Context,
    config: &NatsConfig,
    topology: &Topology,
    dry_run: bool,
) -> Result<Vec<Declared>, TransportError> {
    let naming = &config.naming;
    let mut doomed = Vec::new();
    let mut events: Vec<String> = Vec::new();
    for ep in &topology.endpoints {
        check_subject_part("endpoint name", &ep.name)?;
        for (stream, consumer) in [
            (naming.endpoint_stream(&ep.name), true),
            (naming.delay_stream(&ep.name), true),
            (naming.error_stream(&ep.name), false),
        ] {
            if !doomed.iter().any(|d: &Doomed| d.stream == stream) {
                doomed.push(Doomed { stream, consumer });
            }
        }
        for event in &ep.events {
            check_subject_part("event wire name", event)?;
            let stream = naming.event_stream(event);
            if !events.contains(&stream) {
                events.push(stream);
            }
        }
    }
    if !events.is_empty() {
        let going: Vec<&str> = doomed.iter().map(|d| d.stream.as_str()).collect();
        let kept = sourced_elsewhere(js, config, &going, &events).await?;
        events.retain(|e| !kept.contains(e));
    }
    doomed.extend(events.into_iter().map(|stream| Doomed {
        stream,
        consumer: false,
    }));
    // The scheduled stream is the naming's, shared by every bus under it: it goes too, but
    // only while nothing waits in it, so a teardown never drops a scheduled message.
    if !topology.endpoints.is_empty() {
        let scheduled = naming.scheduled_stream();
        if let Some(info) = get_stream(js, config, &scheduled).await? {
            if info.state.messages == 0 {
                doomed.push(Doomed {
                    stream: scheduled,
                    consumer: true,
                });
            }
        }
    }
    let mut done = Vec::new();
    for d in doomed {
        teardown_stream(js, config, d, dry_run, &mut done).await?;
    }
    Ok(done)
}

/// The event streams among `events` that a stream not in `going` sources.
async fn sourced_elsewhere(
    js: &Context,
    config: &NatsConfig,
    going: &[&str],
    events: &[String],
) -> Result<Vec<String>, TransportError> {
    let listing = async {
        let mut kept = Vec::new();
        let mut streams = js.streams();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| TransportError::other("listing the streams", e))?;
            if going.contains(&info.config.name.as_str()) {
                continue;
            }
            for source in info.config.sources.iter().flatten() {
                if events.contains(&source.name) && !kept.contains(&source.name) {
                    tracing::info!(
                        stream = %source.name,
                        by = %info.config.name,
                        "event stream kept: another endpoint's stream sources it"
                    );
                    kept.push(source.name.clone());
                }
            }
        }
        Ok(kept)
    };
    TransportError::within("listing the streams", config.connect_timeout, listing).await?
}

/// Delete (or, with `dry_run`, look for) one stream and its consumer, recording what was there.
async fn teardown_stream(
    js: &Context,
    config: &NatsConfig,
    doomed: Doomed,
    dry_run: bool,
    done: &mut Vec<Declared>,
) -> Result<(), TransportError> {
    let name = doomed.stream;
    if get_stream(js, config, &name).await?.is_none() {
        return Ok(());
    }
    let limit = config.request_timeout;
    let stream = js
        .get_stream_no_info(&name)
        .await
        .map_err(|e| api_error(format!("reading stream `{name}`"), e))?;
    if doomed.consumer {
        let consumer = config.naming.consumer.as_str();
        let reading = stream.consumer_info(consumer);
        let exists = match TransportError::within("reading a consumer", limit, reading).await? {
            Ok(_) => true,
            Err(e) => match e.kind() {
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => false,
                _ => return Err(api_error(format!("reading consumer of `{name}`"), e)),
            },
        };
        let deleted = if exists && !dry_run {
            let deleting = stream.delete_consumer(consumer);
            match TransportError::within("deleting a consumer", limit, deleting).await? {
                Ok(_) => true,
                Err(e) if is_not_found(&e) => false,
                Err(e) => return Err(api_error(format!("deleting consumer of `{name}`"), e)),
            }
        } else {
            exists
        };
        if deleted {
            done.push(Declared {
                kind: "consumer",
                name: format!("{name}/{consumer}"),
            });
        }
    }
    if !dry_run {
        let deleting = js.delete_stream(&name);
        match TransportError::within("deleting a stream", config.connect_timeout, deleting).await? {
            Ok(_) => {}
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    return Ok(())
                }
                _ => return Err(api_error(format!("deleting stream `{name}`"), e)),
            },
        }
    }
    done.push(Declared {
        kind: "stream",
        name,
    });
    Ok(())
}

/// The consumer (or its stream) was gone already.
fn is_not_found(e: &ConsumerError) -> bool {
    matches!(e.kind(), ConsumerErrorKind::JetStream(ref j)
        if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND || j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// A JetStream call failed: a refusal when the server answered with an error, else a
/// connection problem. The client's error is kept as the source.
pub(crate) fn api_error(what: String, e: impl JetStreamError) -> TransportError {
    if e.is_server_answer() {
        TransportError::refused(what, e.into_source())
    } else {
        TransportError::connection(what, e.into_source())
    }
}

/// The error of a JetStream call, which tells whether the server itself answered with an
/// error (a JetStream API error, with its code) or the request did not get through.
pub(crate) trait JetStreamError {
    /// The server answered with an error.
    fn is_server_answer(&self) -> bool;
    /// The error, to keep as a source.
    fn into_source(self) -> Box<dyn std::error::Error + Send + Sync>;
}

impl JetStreamError for GetStreamError {
    fn is_server_answer(&self) -> bool {
        matches!(self.kind(), GetStreamErrorKind::JetStream(_))
    }
    fn into_source(self) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(self)
    }
}

impl JetStreamError for CreateStreamError {
    fn is_server_answer(&self) -> bool {
        matches!(self.kind(), CreateStreamErrorKind::JetStream(_))
    }
    fn into_source(self) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(self)
    }
}

impl JetStreamError for ConsumerError {
    fn is_server_answer(&self) -> bool {
        matches!(self.kind(), ConsumerErrorKind::JetStream(_))
    }
    fn into_source(self) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(self)
    }
}

impl JetStreamError for ConsumerInfoError {
    fn is_server_answer(&self) -> bool {
        matches!(self.kind(), ConsumerInfoErrorKind::JetStream(_))
    }
    fn into_source(self) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(self)
    }
}

/// The client's boxed error, which reading a consumer returns.
impl JetStreamError for async_nats::Error {
    fn is_server_answer(&self) -> bool {
        self.downcast_ref::<ConsumerInfoError>()
            .is_some_and(|e| matches!(e.kind(), ConsumerInfoErrorKind::JetStream(_)))
    }
    fn into_source(self) -> Box<dyn std::error::Error + Send + Sync> {
        self
    }
}

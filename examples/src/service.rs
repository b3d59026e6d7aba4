//! What every binary of the shop shares: the bus they build, the configured transport, and the
//! life of a service process (start, run until Ctrl-C or SIGTERM, shut down gracefully, sum up),
//! with its telemetry (logs, OpenTelemetry traces and metrics, from the `OTEL_*` variables) and,
//! when `metrics_addr` (`BUS_METRICS_ADDR`) is set, its HTTP endpoints for Prometheus and
//! probes ([`crate::ops`]).
//!
//! The service binaries are one line each:
//!
//! ```no_run
//! # async fn demo() -> std::process::ExitCode {
//! bus_examples::service::run("invoice-service", &["billing"]).await
//! # }
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Bus, BusBuilder, MemoryStorage, Storage, Transport};
use bus_otel::{Telemetry, DEFAULT_TRACE_FILTER};
use bus_transport_config::{ConfiguredTransport, TransportSettings};
use tokio::net::TcpListener;

use crate::fulfilment::CountClosedWindows;
use crate::ops::{MetricsSource, OpsServer};
use crate::trace::ShopStats;

/// How the shop's endpoints are set up, whichever process hosts them: shared counters as
/// state; for `sales` one immediate retry then one delayed retry (200 ms), so a transient
/// failure recovers and a poison order reaches the error queue quickly; for `fulfilment` a
/// count of the payment windows that closed; and a [`MemoryStorage`] for units of work,
/// where the fulfilment saga keeps its state (see [`shop_bus_with_storage`]).
///
/// ```
/// use bus_examples::{service::shop_bus, trace::ShopStats};
/// use bus_transport_memory::MemoryTransport;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = shop_bus(std::sync::Arc::new(MemoryTransport::new()), &ShopStats::default())
///     .host(["billing"])
///     .start()
///     .await?;
/// bus.shutdown().await;
/// # Ok::<(), bus_core::BusError>(())
/// # }).unwrap();
/// ```
pub fn shop_bus(transport: Arc<dyn Transport>, stats: &ShopStats) -> BusBuilder {
    shop_bus_with_storage(transport, stats, MemoryStorage::new())
}

/// [`shop_bus`] with the given storage: every handler attempt of every endpoint commits its
/// outgoing messages (as outbox entries), the record that its message was handled, and the
/// saga state it changed, in one transaction of `storage`.
///
/// A [`MemoryStorage`] lives and dies with its process: the saga instances of a stopped
/// process are gone, and processes hosting the same endpoint do not share them. A service
/// that must survive restarts, or run as several instances, needs a database's storage
/// (`bus_postgres::PostgresStorage`). Keeping a clone of a `MemoryStorage` shows what it
/// holds ([`MemoryStorage::running`]).
pub fn shop_bus_with_storage(
    transport: Arc<dyn Transport>,
    stats: &ShopStats,
    storage: impl Storage,
) -> BusBuilder {
    Bus::builder()
        .transport_arc(transport)
        .storage(storage)
        .state(stats.clone())
        .endpoint("sales", |e| {
            e.immediate_retries(1)
                .delayed_retries(1, Duration::from_millis(200))
        })
        .endpoint("fulfilment", {
            let count = CountClosedWindows(stats.clone());
            move |e| e.layer(count)
        })
}

/// Log output on stderr, filtered by `RUST_LOG` (else `default_filter`, e.g. `off` or
/// `warn,lapin=off`: the bus's own warnings, without the AMQP client's echo of them).
pub fn init_tracing(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .init();
}

/// The log filter of the service binaries when `RUST_LOG` is unset.
pub const SERVICE_LOG: &str = "warn,bus_core=info,lapin=off";

/// Install the telemetry of a process named `program`: logs on stderr filtered by `RUST_LOG`
/// (else [`SERVICE_LOG`]), and OpenTelemetry traces and metrics as the `OTEL_*` variables say
/// (exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` or its per-signal forms are set; the
/// metrics are always there for `/metrics`). `OTEL_SERVICE_NAME` overrides `program` as the
/// service name. On failure (an `OTEL_*` value that cannot be honoured), says why on stderr
/// and returns the exit code to end with.
pub fn start_telemetry(program: &str) -> Result<Telemetry, ExitCode> {
    Telemetry::builder(program)
        .default_log_filter(SERVICE_LOG)
        // The AMQP client's connection span would be a trace of its own, as long as the
        // connection lasts, in every service: only the bus's spans and the handlers' go out.
        .trace_filter(&format!("{DEFAULT_TRACE_FILTER},lapin=off"))
        .install()
        .map_err(|e| {
            eprintln!("{program}: {e}");
            ExitCode::from(2)
        })
}

/// Export what is left and shut the telemetry down. Blocking (up to the telemetry's shutdown
/// deadline, when a collector does not answer), so it runs off the async worker threads.
pub async fn stop_telemetry(telemetry: Telemetry) {
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
}

/// The transport settings of a program that talks to other processes: loaded from
/// `bus.toml` and `BUS_*`, and never the in-memory transport, which cannot reach another
/// process. On failure, says why on stderr and returns the exit code to end with.
pub fn broker_settings(program: &str) -> Result<TransportSettings, ExitCode> {
    let settings = TransportSettings::load().map_err(|e| {
        eprintln!("{program}: {e}");
        ExitCode::from(2)
    })?;
    if settings.is_memory() {
        eprintln!(
            "{program}: the configured transport is `memory` (the default when BUS_TRANSPORT is unset).\n\
             The in-memory transport lives inside one process: {program} could not exchange a single\n\
             message with the other services. Point every process at the same broker, e.g.\n\
             \n    BUS_TRANSPORT=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p bus-examples --bin {program}\n\
             \n(or BUS_TRANSPORT=nats://127.0.0.1:4222, or BUS_TRANSPORT=redis://127.0.0.1:6379),\n\
             or run all the services in one process on the in-memory transport:\n\
             \n    cargo run -p bus-examples --bin shop"
        );
        return Err(ExitCode::from(2));
    }
    Ok(settings)
}

/// Open the configured transport, saying where on stdout, or why not on stderr.
pub async fn open_transport(
    program: &str,
    settings: &TransportSettings,
) -> Result<ConfiguredTransport, ExitCode> {
    match settings.open(program).await {
        Ok(transport) => {
            println!(
                "{program}: connected to {} ({} transport)",
                settings.redacted_url(),
                transport.name()
            );
            Ok(transport)
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Where the error queue of `endpoint` lives on the transport, as its broker names it, for
/// messages to the user (after "the").
///
/// ```
/// use bus_examples::service::error_queue_location;
/// use bus_transport_config::ConfiguredTransport;
/// use bus_transport_memory::MemoryTransport;
///
/// let memory = ConfiguredTransport::Memory(MemoryTransport::new());
/// assert_eq!(error_queue_location(&memory, "sales"), "in-memory error queue of `sales`");
/// ```
///
/// On RabbitMQ that is the queue `sales.error`, on NATS the stream `BUS_ERR_sales`, on Redis
/// the stream `bus:ep:sales:error` (with the default names).
pub fn error_queue_location(transport: &ConfiguredTransport, endpoint: &str) -> String {
    if let Some(amqp) = transport.as_amqp() {
        format!("queue `{}`", amqp.config().naming.error_queue(endpoint))
    } else if let Some(nats) = transport.as_nats() {
        format!("stream `{}`", nats.config().naming.error_stream(endpoint))
    } else if let Some(redis) = transport.as_redis() {
        format!("stream `{}`", redis.config().keys.error_stream(endpoint))
    } else {
        format!("in-memory error queue of `{endpoint}`")
    }
}

/// Run one service of the shop as its own process: host `endpoints` on the configured broker,
/// print a line per handled message, and on Ctrl-C or SIGTERM stop taking messages, let the
/// ones in flight finish (what is left stays queued for the other instances), print a summary
/// and exit. A second signal during shutdown abandons the messages in flight at once; the
/// broker redelivers them.
///
/// Telemetry comes from [`start_telemetry`] and is flushed at exit. With `metrics_addr` set,
/// `/metrics`, `/healthz` and `/readyz` are served on it from the moment the bus has started
/// until it has shut down (`/readyz` answers 503 while it drains).
pub async fn run(program: &str, endpoints: &[&str]) -> ExitCode {
    let telemetry = match start_telemetry(program) {
        Ok(telemetry) => Arc::new(telemetry),
        Err(code) => return code,
    };
    let code = serve_endpoints(program, endpoints, &telemetry).await;
    // The ops server has stopped by now, so this is the last reference, and the spans and
    // metrics not yet exported can be flushed. Were one left, dropping it flushes too.
    if let Ok(telemetry) = Arc::try_unwrap(telemetry) {
        stop_telemetry(telemetry).await;
    }
    code
}

/// Bind the address the ops endpoints are to be served on, if one is configured, so that an
/// address in use is reported before the service connects to its broker.
async fn bind_ops(
    program: &str,
    settings: &TransportSettings,
) -> Result<Option<TcpListener>, ExitCode> {
    let Some(addr) = settings.metrics_addr else {
        return Ok(None);
    };
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) => {
            eprintln!(
                "{program}: cannot serve metrics on {addr} (metrics_addr, BUS_METRICS_ADDR): {e}"
            );
            Err(ExitCode::FAILURE)
        }
    }
}

/// The body of [`run`], between installing the telemetry and flushing it.
async fn serve_endpoints(
    program: &str,
    endpoints: &[&str],
    telemetry: &Arc<Telemetry>,
) -> ExitCode {
    let settings = match broker_settings(program) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let ops_listener = match bind_ops(program, &settings).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let transport = match open_transport(program, &settings).await {
        Ok(transport) => transport,
        Err(code) => return code,
    };
    let stats = ShopStats::default();
    let named = endpoint_list(endpoints);
    let bus = match shop_bus(transport.shared(), &stats)
        .host(endpoints.iter().copied())
        .start()
        .await
    {
        Ok(bus) => bus,
        Err(e) => {
            eprintln!("{program}: could not start {named}: {e}");
            let _ = transport.close().await;
            return ExitCode::FAILURE;
        }
    };
    let ops = match ops_listener {
        Some(listener) => {
            let metrics: Arc<dyn MetricsSource> = telemetry.clone();
            match OpsServer::from_listener(listener, bus.clone(), metrics) {
                Ok(ops) => {
                    println!(
                        "{program}: serving /metrics, /healthz and /readyz on http://{}",
                        ops.local_addr()
                    );
                    Some(ops)
                }
                Err(e) => {
                    eprintln!("{program}: cannot serve metrics: {e}");
                    bus.shutdown().await;
                    let _ = transport.close().await;
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    println!("{program}: hosting {named}; Ctrl-C to stop (twice: at once)");
    let watch = tokio::spawn(watch_health(program.to_string(), bus.clone()));

    // Until Ctrl-C or SIGTERM; then the messages in flight finish and the rest stay queued. A
    // second signal abandons the ones in flight: the broker redelivers them.
    let report = bus.run_until_stop_signal().await;
    watch.abort();
    // Served through the drain, so probes saw 503 while it lasted; stopped only now.
    if let Some(ops) = ops {
        if let Err(e) = ops.shutdown().await {
            eprintln!("{program}: the metrics server failed: {e}");
        }
    }
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("{program}: {e}");
            let _ = transport.close().await;
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = transport.close().await {
        eprintln!("{program}: closing the connection: {e}");
    }

    let s = bus.stats();
    println!("\n{program}: summary");
    println!("  messages handled  {}", s.handled);
    for (what, n) in endpoints.iter().flat_map(|e| stats.of_endpoint(e)) {
        println!("  {what:<17} {n}");
    }
    println!("  failed attempts   {}", s.failed_attempts);
    println!("  delayed retries   {}", s.delayed_retries);
    println!("  to error queue    {}", s.dead_lettered);
    println!(
        "  shutdown          {} in {:?}",
        if report.drained {
            "drained"
        } else {
            "abandoned in-flight work (it will be redelivered)"
        },
        report.elapsed
    );
    ExitCode::SUCCESS
}

/// "endpoint `sales`", "endpoints `shipping` and `fulfilment`", for messages to the user.
///
/// ```
/// use bus_examples::service::endpoint_list;
///
/// assert_eq!(endpoint_list(&["billing"]), "endpoint `billing`");
/// assert_eq!(endpoint_list(&["shipping", "fulfilment"]), "endpoints `shipping` and `fulfilment`");
/// ```
pub fn endpoint_list(endpoints: &[&str]) -> String {
    let quoted: Vec<String> = endpoints.iter().map(|e| format!("`{e}`")).collect();
    match quoted.as_slice() {
        [] => "no endpoint".to_string(),
        [one] => format!("endpoint {one}"),
        [rest @ .., last] => format!("endpoints {} and {last}", rest.join(", ")),
    }
}

/// Say when the bus stops being ready (broker connection lost) and when it is ready again.
async fn watch_health(program: String, bus: Bus) {
    let mut ready = true;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = bus.health().is_ready();
        if now != ready {
            if now {
                println!("{program}: connected again; consuming");
            } else {
                println!("{program}: not ready (connection to the broker lost?); recovering");
            }
            ready = now;
        }
    }
}

//! The operational HTTP endpoints of a service, for Prometheus and for an orchestrator's
//! probes:
//!
//! - `GET /metrics`: the process's metrics in the Prometheus text format, from a
//!   [`MetricsSource`] (in the services, the OpenTelemetry meter provider).
//! - `GET /healthz`: liveness; `200 ok` for as long as the process answers at all.
//! - `GET /readyz`: readiness; `200 ready` while the bus is running, connected to its broker
//!   and consuming every hosted endpoint, else `503` with the reason (see [`readiness`]). It
//!   turns `503` as soon as shutdown begins, so a load balancer stops routing to the instance
//!   while its messages in flight drain.
//!
//! The services serve them when `metrics_addr` (`BUS_METRICS_ADDR`) is set:
//!
//! ```
//! use std::sync::Arc;
//! use bus_examples::ops::{MetricsSource, OpsServer};
//! # use bus_core::Bus;
//! # use bus_transport_memory::MemoryTransport;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # let bus = Bus::builder().transport(MemoryTransport::new()).without_discovery().build().await?;
//! let metrics: Arc<dyn MetricsSource> = Arc::new(|| "# no metrics yet\n".to_string());
//! let server = OpsServer::start("127.0.0.1:0".parse().unwrap(), bus.clone(), metrics).await?;
//! println!("probes on http://{}/readyz", server.local_addr());
//! // ... bus.run_until_stop_signal().await ...
//! server.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bus_core::{Bus, Health};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The content type of the Prometheus text exposition format (version 0.0.4), for a
/// [`MetricsSource`] that does not name its own.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long [`OpsServer::shutdown`] lets requests in progress finish before it drops them:
/// a scrape or a probe takes milliseconds, and an exiting service must not hang on a client
/// that keeps its connection open.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where `GET /metrics` gets its text from.
///
/// Any `Fn() -> String` is one, serving [`PROMETHEUS_TEXT`]:
///
/// ```
/// use bus_examples::ops::{MetricsSource, PROMETHEUS_TEXT};
///
/// let source = || "requests_total 3\n".to_string();
/// assert_eq!(source.render(), "requests_total 3\n");
/// assert_eq!(source.content_type(), PROMETHEUS_TEXT);
/// ```
pub trait MetricsSource: Send + Sync + 'static {
    /// The metrics as of now, in the Prometheus text format.
    fn render(&self) -> String;

    /// The `Content-Type` of what [`MetricsSource::render`] returns.
    fn content_type(&self) -> &str {
        PROMETHEUS_TEXT
    }
}

impl<F: Fn() -> String + Send + Sync + 'static> MetricsSource for F {
    fn render(&self) -> String {
        self()
    }
}

/// What the services serve: every metric recorded through the global meter provider (the
/// bus's own among them), in the Prometheus form of their names.
impl MetricsSource for bus_otel::Telemetry {
    fn render(&self) -> String {
        self.prometheus_text()
    }

    fn content_type(&self) -> &str {
        bus_otel::PROMETHEUS_CONTENT_TYPE
    }
}

/// Whether a bus in this state should receive work: `Ok` when it is running, connected to
/// its broker and consuming every endpoint it hosts; otherwise why not, in a few words, for
/// the body of a `503` (the first reason that applies: not running, then not connected, then
/// not consuming).
///
/// ```
/// use bus_core::Health;
/// use bus_examples::ops::readiness;
///
/// let ready = Health { running: true, transport_connected: true, endpoints: 1, consumers_running: 1 };
/// assert_eq!(readiness(&ready), Ok(()));
/// let cut_off = Health { transport_connected: false, consumers_running: 0, ..ready };
/// assert_eq!(readiness(&cut_off).unwrap_err(), "not connected to the broker");
/// ```
pub fn readiness(health: &Health) -> Result<(), String> {
    if !health.running {
        return Err("the bus is not running (not started yet, or shutting down)".into());
    }
    if !health.transport_connected {
        return Err("not connected to the broker".into());
    }
    if health.consumers_running < health.endpoints {
        return Err(format!(
            "consuming {} of {} endpoints (reconnecting?)",
            health.consumers_running, health.endpoints
        ));
    }
    Ok(())
}

/// What the handlers share.
#[derive(Clone)]
struct Ops {
    bus: Bus,
    metrics: Arc<dyn MetricsSource>,
}

/// The routes: `/metrics`, `/healthz` and `/readyz`, for `bus`, with metrics from `metrics`.
/// Anything else is `404`. For a server of your own; [`OpsServer`] serves them.
pub fn router(bus: Bus, metrics: Arc<dyn MetricsSource>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Ops { bus, metrics })
}

async fn metrics_text(State(ops): State<Ops>) -> Response {
    let text = ops.metrics.render();
    (
        [(header::CONTENT_TYPE, ops.metrics.content_type().to_string())],
        text,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ops): State<Ops>) -> Response {
    match readiness(&ops.bus.health()) {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Serve [`router`] on `listener` until `shutdown` completes, then stop accepting
/// connections and let the requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    bus: Bus,
    metrics: Arc<dyn MetricsSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(bus, metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The endpoints served in the background, until [`OpsServer::shutdown`].
#[derive(Debug)]
pub struct OpsServer {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl OpsServer {
    /// Listen on `addr` and serve in a task of its own. Port 0 takes a free port; see
    /// [`OpsServer::local_addr`]. Fails when the address cannot be bound (in use, not an
    /// address of this machine, a privileged port).
    pub async fn start(
        addr: SocketAddr,
        bus: Bus,
        metrics: Arc<dyn MetricsSource>,
    ) -> std::io::Result<OpsServer> {
        let listener = TcpListener::bind(addr).await?;
        OpsServer::from_listener(listener, bus, metrics)
    }

    /// Serve on a listener bound already, e.g. early in a service's start, so that a port in
    /// use is reported before the service connects to its broker.
    pub fn from_listener(
        listener: TcpListener,
        bus: Bus,
        metrics: Arc<dyn MetricsSource>,
    ) -> std::io::Result<OpsServer> {
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, bus, metrics, async {
            // A dropped sender stops the server too: nothing could stop it after that.
            let _ = stopped.await;
        }));
        Ok(OpsServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The address served, with the actual port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting connections, let the requests in progress finish for up to
    /// [`SHUTDOWN_GRACE`], then drop what is left. Returns the server's error, if it failed.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => {
                task.abort();
                Ok(())
            }
        }
    }
}

//! [`Rates`]: how many messages each endpoint handles per second, read from the services' own
//! Prometheus endpoints (`/metrics`, served on `BUS_METRICS_ADDR`), for `bus ui`.
//!
//! A broker does not say how fast its consumers work; the services do, in the counter
//! `messaging_client_consumed_messages_total` per endpoint (label
//! `messaging_consumer_group_name`). A background task scrapes every address given at an
//! interval and keeps the last two totals: the rate is their difference over the time between
//! them, summed over the services (instances of one endpoint add up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header::HOST;
use axum::http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// The counter read, in its Prometheus name.
const CONSUMED: &str = "messaging_client_consumed_messages_total";
/// The label naming the endpoint.
const ENDPOINT_LABEL: &str = "messaging_consumer_group_name";

/// Messages handled per second per endpoint, from the services' `/metrics`.
#[derive(Clone, Default)]
pub struct Rates {
    state: Arc<Mutex<Samples>>,
}

#[derive(Default)]
struct Samples {
    previous: Option<(Instant, HashMap<String, f64>)>,
    latest: Option<(Instant, HashMap<String, f64>)>,
}

impl Rates {
    /// Scrape `urls` (e.g. `http://10.0.0.5:9464/metrics`) every `interval` in a background
    /// task, until the returned value and its clones are all dropped.
    pub fn start(urls: Vec<String>, interval: Duration) -> Rates {
        let rates = Rates::default();
        let state = Arc::downgrade(&rates.state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let mut totals: HashMap<String, f64> = HashMap::new();
                for url in &urls {
                    // A service that does not answer in time counts as nothing this round.
                    let Ok(Ok(text)) =
                        tokio::time::timeout(interval.max(Duration::from_secs(1)), fetch(url))
                            .await
                    else {
                        continue;
                    };
                    for (endpoint, value) in consumed(&text) {
                        *totals.entry(endpoint).or_default() += value;
                    }
                }
                let Some(state) = state.upgrade() else { return };
                let mut samples = state.lock().unwrap_or_else(|p| p.into_inner());
                samples.previous = samples.latest.take();
                samples.latest = Some((Instant::now(), totals));
            }
        });
        rates
    }

    /// Messages handled per second by each endpoint between the last two scrapes; empty until
    /// there have been two.
    pub fn per_second(&self) -> HashMap<String, f64> {
        let samples = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (Some((t0, before)), Some((t1, after))) = (&samples.previous, &samples.latest) else {
            return HashMap::new();
        };
        let seconds = t1.duration_since(*t0).as_secs_f64();
        if seconds <= 0.0 {
            return HashMap::new();
        }
        after
            .iter()
            .map(|(endpoint, total)| {
                // A restarted service starts its counter again: no negative rate.
                let delta = (total - before.get(endpoint).copied().unwrap_or(0.0)).max(0.0);
                (endpoint.clone(), delta / seconds)
            })
            .collect()
    }
}

/// The consumed-messages totals per endpoint in a Prometheus text exposition.
///
/// ```
/// let text = r#"
/// # TYPE messaging_client_consumed_messages_total counter
/// messaging_client_consumed_messages_total{messaging_consumer_group_name="sales",messaging_bus_message_type="a"} 3
/// messaging_client_consumed_messages_total{messaging_consumer_group_name="sales",messaging_bus_message_type="b"} 4
/// messaging_client_sent_messages_total{messaging_destination_name="sales"} 9
/// "#;
/// let totals = bus_cli::rates::consumed(text);
/// assert_eq!(totals, vec![("sales".to_string(), 7.0)]);
/// ```
pub fn consumed(text: &str) -> Vec<(String, f64)> {
    let mut totals: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(CONSUMED) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) else {
            continue;
        };
        let Ok(value) = value.trim().split(' ').next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        let endpoint = labels.split(',').find_map(|pair| {
            let (name, quoted) = pair.split_once('=')?;
            (name.trim() == ENDPOINT_LABEL).then(|| quoted.trim().trim_matches('"').to_string())
        });
        if let Some(endpoint) = endpoint {
            *totals.entry(endpoint).or_default() += value;
        }
    }
    let mut totals: Vec<(String, f64)> = totals.into_iter().collect();
    totals.sort_by(|a, b| a.0.cmp(&b.0));
    totals
}

/// `GET url` over plain HTTP/1.1: the body as text.
async fn fetch(url: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let uri: axum::http::Uri = url.parse()?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// metrics addresses are read").into());
    }
    let host = uri.host().ok_or("no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let path = uri.path_and_query().map_or("/metrics", |p| p.as_str());
    let request = Request::get(path)
        .header(HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(String::from_utf8_lossy(&body).into())
    };
    tokio::pin!(exchange);
    tokio::select! {
        done = &mut exchange => done,
        ended = connection => match ended {
            Err(e) => Err(e.into()),
            Ok(()) => exchange.await,
        },
    }
}

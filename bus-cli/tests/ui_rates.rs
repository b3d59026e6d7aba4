//! `bus ui --metrics`: the endpoints page shows how many messages each endpoint handles per
//! second, read from the services' Prometheus endpoints (here a real HTTP server inside the
//! test whose counter grows by 50 a scrape), summed over the services of one endpoint.

mod ui_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use bus_cli::rates::Rates;
use bus_cli::ui::{self, Access};
use ui_support::{Setup, ENDPOINT};

/// A service's `/metrics`: its consumed counter for the endpoint goes up by `step` a request.
async fn service(step: u64) -> String {
    let count = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let total = count.fetch_add(step, Ordering::SeqCst) + step;
            async move {
                format!(
                    "# TYPE messaging_client_consumed_messages_total counter\n\
                     messaging_client_consumed_messages_total{{messaging_consumer_group_name=\"{ENDPOINT}\",otel_scope_name=\"bus\"}} {total}\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/metrics")
}

#[tokio::test]
async fn ui_shows_the_rate_each_endpoint_handles_from_the_services_metrics() {
    let setup = Setup::start().await;
    let urls = vec![service(50).await, service(25).await];
    let interval = Duration::from_millis(200);
    let rates = Rates::start(urls, interval);

    let router = ui::router_with_rates(setup.ops.clone(), Access::loopback(), Some(rates.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { ui::serve(listener, router, std::future::pending()).await });

    // Two scrapes make a rate: 75 more messages per 0.2 s between them, about 375/s.
    let started = Instant::now();
    let rate = loop {
        if let Some(rate) = rates.per_second().get(ENDPOINT).copied() {
            break rate;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a rate within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        (200.0..600.0).contains(&rate),
        "about 75 per 0.2 s from the two services, got {rate:.1}/s"
    );

    let page = reqwest::get(format!("http://{addr}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<th class=\"n\">Handled/s</th>"),
        "the column is there"
    );
    assert!(
        page.contains(&format!("data-rate-of=\"{ENDPOINT}\"")),
        "the endpoint's rate cell is there"
    );
    let cell = page
        .split(&format!("data-rate-of=\"{ENDPOINT}\">"))
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap();
    let shown: f64 = cell
        .parse()
        .unwrap_or_else(|_| panic!("a number, got {cell:?}"));
    assert!(shown > 0.0, "a rate, got {cell}");
    setup.bus.shutdown().await;
}

#[tokio::test]
async fn ui_without_metrics_addresses_has_no_rate_column() {
    let setup = Setup::start().await;
    let base = setup.serve(Access::loopback()).await;
    let page = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<th class=\"n\">Handled/s</th>"));
    assert!(page.contains(ENDPOINT));
    setup.bus.shutdown().await;
}

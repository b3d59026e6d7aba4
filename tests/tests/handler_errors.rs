//! Handlers return the error types Rust services use: `anyhow::Error`,
//! `Box<dyn Error + Send + Sync>`, their own `thiserror` type, `String`; each reaches the
//! error queue with its type, its text and its chain of causes, and `Unrecoverable` skips the
//! retries whichever way it is wrapped. On the in-memory transport with encoding on.

use std::time::Duration;

use anyhow::Context as _;
use bus_core::{header, Bus, Command, HandlerError, Headers, Unrecoverable};
use bus_tests::eventually;
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.err.ViaAnyhow", endpoint = "t-err")]
struct ViaAnyhow {
    unrecoverable: bool,
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.err.ViaBox", endpoint = "t-err")]
struct ViaBox {
    unrecoverable: bool,
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.err.ViaString", endpoint = "t-err")]
struct ViaString;

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.err.ViaOwn", endpoint = "t-err")]
struct ViaOwn;

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.err.ViaQuestionMark", endpoint = "t-err")]
struct ViaQuestionMark;

#[derive(Debug, thiserror::Error)]
#[error("reading the tariff table")]
struct TariffError(#[source] std::io::Error);

fn missing_file() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, "tariffs.csv not found")
}

#[bus_core::handler]
async fn via_anyhow(cmd: ViaAnyhow) -> anyhow::Result<()> {
    if cmd.unrecoverable {
        return Err(anyhow::Error::new(Unrecoverable::new("customer unknown")))
            .context("checking the customer");
    }
    Err(TariffError(missing_file())).context("pricing the order")
}

#[bus_core::handler]
async fn via_box(cmd: ViaBox) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if cmd.unrecoverable {
        return Err(Unrecoverable::new(TariffError(missing_file())).into());
    }
    Err(Box::new(TariffError(missing_file())))
}

#[bus_core::handler]
async fn via_string(_cmd: ViaString) -> Result<(), String> {
    Err("carrier refused the parcel".to_string())
}

#[bus_core::handler]
async fn via_own(_cmd: ViaOwn) -> Result<(), TariffError> {
    Err(TariffError(missing_file()))
}

fn boxed_failure() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("the boxed call failed".into())
}

fn anyhow_failure() -> anyhow::Result<()> {
    Err(anyhow::anyhow!("the anyhow call failed"))
}

#[bus_core::handler]
async fn via_question_mark(_cmd: ViaQuestionMark, headers: Headers) -> Result<(), HandlerError> {
    // `?` converts boxed errors, `anyhow::Error` and strings into `HandlerError`.
    if headers.get("which") == Some("anyhow") {
        anyhow_failure()?;
    }
    boxed_failure()?;
    Ok(())
}

/// Sends `command` to a bus with two immediate retries and no delayed ones, waits for it in
/// the error queue and returns its headers and how many attempts it got.
async fn failed_headers<C: Command>(command: C, which: &str) -> Headers {
    let transport = MemoryTransport::new().serialize(true);
    let bus = Bus::builder()
        .transport(transport.clone())
        .host(["t-err"])
        .endpoint("t-err", |e| {
            e.immediate_retries(2).delayed_retries(0, Duration::ZERO)
        })
        .start()
        .await
        .unwrap();
    bus.send_with(command, bus_core::SendOptions::new().header("which", which))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || transport
            .error_queue("t-err")
            .len()
            == 1)
        .await,
        "the message reached the error queue"
    );
    bus.shutdown().await;
    (*transport.error_queue("t-err")[0].headers).clone()
}

#[tokio::test]
async fn an_anyhow_error_reaches_the_error_queue_with_its_chain_of_causes() {
    let h = failed_headers(
        ViaAnyhow {
            unrecoverable: false,
        },
        "",
    )
    .await;
    assert_eq!(h.get(header::FAILURE_REASON), Some("handler-error"));
    assert_eq!(h.get(header::FAILURE_ERROR_TYPE), Some("anyhow::Error"));
    assert_eq!(h.get(header::FAILURE_ERROR), Some("pricing the order"));
    assert_eq!(
        h.get(header::FAILURE_CAUSES),
        Some("reading the tariff table: tariffs.csv not found")
    );
    assert_eq!(h.get(header::FAILURE_ATTEMPTS), Some("3"), "retried");
}

#[tokio::test]
async fn unrecoverable_inside_anyhow_context_skips_the_retries() {
    let h = failed_headers(
        ViaAnyhow {
            unrecoverable: true,
        },
        "",
    )
    .await;
    assert_eq!(h.get(header::FAILURE_ERROR), Some("checking the customer"));
    assert_eq!(h.get(header::FAILURE_CAUSES), Some("customer unknown"));
    assert_eq!(h.get(header::FAILURE_ATTEMPTS), Some("1"), "not retried");
}

#[tokio::test]
async fn a_boxed_error_keeps_its_text_and_causes_in_the_error_queue() {
    let h = failed_headers(
        ViaBox {
            unrecoverable: false,
        },
        "",
    )
    .await;
    assert_eq!(
        h.get(header::FAILURE_ERROR_TYPE),
        Some("Box<dyn Error + Send + Sync>")
    );
    assert_eq!(
        h.get(header::FAILURE_ERROR),
        Some("reading the tariff table")
    );
    assert_eq!(h.get(header::FAILURE_CAUSES), Some("tariffs.csv not found"));
    assert_eq!(h.get(header::FAILURE_ATTEMPTS), Some("3"));
}

#[tokio::test]
async fn a_boxed_unrecoverable_error_names_the_wrapped_type_and_is_not_retried() {
    let h = failed_headers(
        ViaBox {
            unrecoverable: true,
        },
        "",
    )
    .await;
    assert_eq!(
        h.get(header::FAILURE_ERROR_TYPE),
        Some("handler_errors::TariffError")
    );
    assert_eq!(
        h.get(header::FAILURE_ERROR),
        Some("reading the tariff table")
    );
    assert_eq!(h.get(header::FAILURE_CAUSES), Some("tariffs.csv not found"));
    assert_eq!(h.get(header::FAILURE_ATTEMPTS), Some("1"));
}

#[tokio::test]
async fn a_string_error_reaches_the_error_queue_as_its_text() {
    let h = failed_headers(ViaString, "").await;
    assert_eq!(h.get(header::FAILURE_ERROR_TYPE), Some("String"));
    assert_eq!(
        h.get(header::FAILURE_ERROR),
        Some("carrier refused the parcel")
    );
    assert_eq!(h.get(header::FAILURE_CAUSES), None, "no causes, no header");
}

#[tokio::test]
async fn a_thiserror_type_keeps_its_type_name_and_source() {
    let h = failed_headers(ViaOwn, "").await;
    assert_eq!(
        h.get(header::FAILURE_ERROR_TYPE),
        Some("handler_errors::TariffError")
    );
    assert_eq!(h.get(header::FAILURE_CAUSES), Some("tariffs.csv not found"));
}

#[tokio::test]
async fn question_mark_converts_boxed_and_anyhow_errors_in_a_handler_error_handler() {
    let boxed = failed_headers(ViaQuestionMark, "boxed").await;
    assert_eq!(
        boxed.get(header::FAILURE_ERROR),
        Some("the boxed call failed")
    );
    let anyhow = failed_headers(ViaQuestionMark, "anyhow").await;
    assert_eq!(
        anyhow.get(header::FAILURE_ERROR),
        Some("the anyhow call failed")
    );
    assert_eq!(
        anyhow.get(header::FAILURE_ERROR_TYPE),
        Some("anyhow::Error")
    );
}

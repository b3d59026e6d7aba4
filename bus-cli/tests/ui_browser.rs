//! The `bus ui` page in a real browser: the ui served on 127.0.0.1 against the in-memory
//! transport, with failed messages in the error queue, driven by `tests/browser/ui.mjs`
//! (playwright-core and Debian's headless Chromium) through home page, list, message, Retry and
//! confirmation; the error queue shrinks and the handler gets the message. Without Chromium or
//! the script's npm packages the test is skipped with a printed reason, and fails instead when
//! `BUS_REQUIRE_BROKERS=1` (`.ci/chromium` installs both).

mod ui_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bus_cli::ui::Access;
use ui_support::{until, Setup, ENDPOINT};

/// The browser the script drives: `CHROMIUM`, by default Debian's.
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("node is not installed".into());
    }
    if !chromium().exists() {
        return Some(format!("{} is not installed", chromium().display()));
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Some("tests/browser/node_modules is missing (npm ci)".into());
    }
    None
}

#[tokio::test]
async fn ui_browser_retries_a_failed_message_after_confirming_and_the_error_queue_shrinks() {
    if let Some(why) = missing() {
        if bus_tests::broker::brokers_required() {
            panic!("ui_browser: {why} and BUS_REQUIRE_BROKERS=1; run .ci/chromium");
        }
        eprintln!("skipping ui_browser: {why}; run .ci/chromium to install it");
        return;
    }
    let setup = Setup::start().await;
    let ids = setup.poison(3, "gift wrap").await;
    setup.shop.fix();
    let url = setup.serve(Access::loopback()).await;
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui.png");
    let _ = std::fs::remove_file(&screenshot);

    let run = tokio::process::Command::new("node")
        .arg(browser_dir().join("ui.mjs"))
        .arg(&url)
        .arg(&screenshot)
        .arg(ENDPOINT)
        .env("CHROMIUM", chromium())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser script finishes within 2 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ui.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");

    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON line");
    assert_eq!(seen["before"], 3);
    assert_eq!(seen["after"], 2);
    let retried = seen["retried"].as_str().unwrap();
    assert_eq!(retried, ids[0], "the oldest is listed first");
    until(Duration::from_secs(30), "the retried order handled", || {
        setup.shop.times(retried) == 1
    })
    .await;
    assert_eq!(setup.failed().await, 2, "the error queue shrank by one");
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    println!("screenshot: {}", screenshot.display());
    setup.bus.shutdown().await;
}

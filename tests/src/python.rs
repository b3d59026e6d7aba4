//! Running the Python scripts of the interop tests (`tests/python/`): clients this project did
//! not write (pika, the CloudEvents SDK), to check the bus against them.

use std::time::Duration;

use crate::broker::brokers_required;

/// Whether python3 can `import` each module of `modules` (`"cloudevents.core.bindings.amqp,
/// pika"`); otherwise the test is skipped with the reason, or fails when brokers are required.
/// `install` says what provides them (`pip install pika`).
pub async fn python_or_skip(test: &str, modules: &str, install: &str) -> bool {
    let probe = tokio::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .await;
    let why = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("python3: {e}"),
    };
    if brokers_required() {
        panic!("{test}: python3 with {modules} is unavailable ({why}) and BUS_REQUIRE_BROKERS=1");
    }
    eprintln!("skipping {test}: python3 with {modules} is unavailable ({why}); `{install}`");
    false
}

/// Run `tests/python/<script>` with `args` (within a minute); its standard output. A script
/// that fails fails the test, with its standard error.
pub async fn run_script(script: &str, args: &[&str]) -> String {
    let path = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(&path)
            .args(args)
            .output(),
    )
    .await
    .expect("python3 finished in time")
    .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 {script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the script prints UTF-8")
}

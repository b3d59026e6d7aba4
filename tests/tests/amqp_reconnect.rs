//! Reconnection against the running RabbitMQ: the broker force-closes every connection while
//! commands are being sent and handled; publishers and consumers recover by themselves and no
//! confirmed command is lost.
//!
//! This test disturbs every client of the broker, so it lives in its own test binary (cargo
//! runs test binaries one at a time) and holds a single test.

use std::time::{Duration, Instant};

use bus_core::{Bus, HandlerError, MessageContext, State};
use bus_tests::broker::AmqpScope;
use bus_tests::messages::Work;
use bus_tests::{eventually, Ledger};

async fn record(
    cmd: Work,
    ctx: MessageContext,
    State(ledger): State<Ledger>,
) -> Result<(), HandlerError> {
    ledger.record(cmd.n.to_string(), ctx.endpoint());
    Ok(())
}

fn close_all_connections() {
    let status = std::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "reconnect test"])
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl close_all_connections failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_and_consumers_recover_after_connections_are_closed() {
    let Some(scope) = AmqpScope::new("amqp reconnect").await else {
        return;
    };
    let body = {
        let scope = scope.clone();
        tokio::spawn(async move {
            let ledger = Ledger::new();
            let consumer = Bus::builder()
                .transport(scope.transport("reconnect-consumer").await)
                .without_discovery()
                .handler("recon", record)
                .route::<Work>("recon")
                .state(ledger.clone())
                .start()
                .await
                .unwrap();
            let producer = Bus::builder()
                .transport(scope.transport("reconnect-producer").await)
                .without_discovery()
                .route::<Work>("recon")
                .build()
                .await
                .unwrap();
            const N: u64 = 3_000;
            let mut confirmed = Vec::new();
            let mut failed = 0;
            let mut slowest = Duration::ZERO;
            for n in 0..N {
                if n == 1_000 || n == 2_000 {
                    close_all_connections();
                }
                let t = Instant::now();
                match producer.send(Work { n, fail_first: 0 }).await {
                    Ok(()) => confirmed.push(n),
                    Err(e) => {
                        failed += 1;
                        eprintln!("send {n} failed: {e}");
                    }
                }
                slowest = slowest.max(t.elapsed());
            }
            let all = eventually(Duration::from_secs(60), || {
                confirmed.iter().all(|n| ledger.count(&n.to_string()) > 0)
            })
            .await;
            let lost = confirmed
                .iter()
                .filter(|n| ledger.count(&n.to_string()) == 0)
                .count();
            println!(
                "reconnect: sent {N}, confirmed {}, failed {failed}, handled {}, lost {lost}, duplicates {}, slowest send {slowest:?}",
                confirmed.len(),
                ledger.distinct(),
                ledger.duplicates()
            );
            assert!(
                all && lost == 0,
                "{lost} confirmed commands were never handled"
            );
            assert!(
                slowest < Duration::from_secs(11),
                "a send blocked past its timeout: {slowest:?}"
            );
            assert!(
                consumer.health().is_ready(),
                "consumer healthy again: {:?}",
                consumer.health()
            );
            consumer.shutdown().await;
        })
    };
    let result = body.await;
    scope.cleanup().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

//! The idempotent consumer with its inbox in PostgreSQL: a message delivered twice, also across
//! a restart of the endpoint, has its side effect once.

use std::time::Duration;

use bus_core::postgres::PostgresInbox;
use bus_core::{Bus, HandlerError, SendOptions, State};
use bus_tests::broker::{postgres_or_skip, unique};
use bus_tests::messages::Work;
use bus_tests::{eventually, Ledger};
use bus_transport_memory::MemoryTransport;

async fn count(cmd: Work, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
    ledger.record(cmd.n.to_string(), "inbox");
    Ok(())
}

async fn start(transport: &MemoryTransport, inbox: PostgresInbox, ledger: &Ledger) -> Bus {
    Bus::builder()
        .transport(transport.clone())
        .without_discovery()
        .handler("pg-inbox", count)
        .route::<Work>("pg-inbox")
        .state(ledger.clone())
        .endpoint("pg-inbox", move |e| e.inbox(inbox))
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_is_skipped_even_after_a_restart() {
    let Some(config) = postgres_or_skip("postgres inbox").await else {
        return;
    };
    let table = unique("inbox").replace('-', "_");
    let transport = MemoryTransport::new();
    let ledger = Ledger::new();

    let bus = start(
        &transport,
        PostgresInbox::connect(&config, &table).await.unwrap(),
        &ledger,
    )
    .await;
    for _ in 0..2 {
        bus.send_with(
            Work {
                n: 1,
                fail_first: 0,
            },
            SendOptions::new().message_id("dup-1"),
        )
        .await
        .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || bus.stats().duplicates_skipped
            == 1)
        .await
    );
    bus.shutdown().await;

    // A new instance, with a fresh connection to the same inbox, sees the id as handled.
    let bus = start(
        &transport,
        PostgresInbox::connect(&config, &table).await.unwrap(),
        &ledger,
    )
    .await;
    bus.send_with(
        Work {
            n: 1,
            fail_first: 0,
        },
        SendOptions::new().message_id("dup-1"),
    )
    .await
    .unwrap();
    bus.send_with(
        Work {
            n: 2,
            fail_first: 0,
        },
        SendOptions::new().message_id("new-2"),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || bus.stats().duplicates_skipped
            == 1
            && ledger.count("2") == 1)
        .await
    );
    bus.shutdown().await;
    assert_eq!(ledger.count("1"), 1, "side effect once across the restart");

    let (client, conn) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

//! The relay: sends committed entries nobody dispatched, woken by the commits' notifications
//! and, since a notification can be missed (it is not sent while no relay listens), at a
//! bounded interval too.

use std::sync::Arc;
use std::time::Duration;

use bus_core::{StorageError, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use crate::storage::PostgresStorage;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a batch being sent when the relay is stopped may take to finish: abandoned
/// between the send and the delete, its entries would go out twice.
const STOP_DRAIN: Duration = Duration::from_secs(1);

/// A connection of its own that LISTENs on the outbox channel.
struct Listener {
    notified: mpsc::Receiver<()>,
    client: Client,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    async fn connect(storage: &PostgresStorage) -> Result<Listener, StorageError> {
        let pool = &storage.shared.pool;
        let (client, mut connection) = pool
            .timed_connect(pool_config(storage).connect(tokio_postgres::NoTls))
            .await?;
        // Only the channel's wake-ups matter: one pending is as good as many.
        let (tx, notified) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        let _ = tx.try_send(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::debug!(%error, "the outbox relay's listening connection failed");
                        return;
                    }
                    None => return,
                }
            }
        });
        let listener = Listener {
            notified,
            client,
            task,
        };
        pool.timed(
            "listening for outbox notifications",
            listener
                .client
                .batch_execute(&format!("LISTEN {}", storage.shared.sql.channel)),
        )
        .await?;
        Ok(listener)
    }
}

fn pool_config(storage: &PostgresStorage) -> tokio_postgres::Config {
    storage.shared.pool.config().clone()
}

/// Wait for a notification; `false` when the listening connection is gone (or there is none).
async fn notified(listener: &mut Option<Listener>) -> bool {
    match listener {
        Some(l) => l.notified.recv().await.is_some(),
        None => std::future::pending().await,
    }
}

/// `false` when `stop` was cancelled during the wait.
async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

pub(crate) async fn run(
    storage: PostgresStorage,
    transport: Arc<dyn Transport>,
    stop: CancellationToken,
) {
    let settings = storage.shared.settings;
    let mut listener: Option<Listener> = None;
    let mut backoff = BACKOFF_FIRST;
    let mut failing = false;
    while !stop.is_cancelled() {
        if listener.is_none() {
            let connecting = tokio::select! {
                () = stop.cancelled() => return,
                connected = Listener::connect(&storage) => connected,
            };
            match connecting {
                Ok(l) => listener = Some(l),
                Err(error) => {
                    tracing::warn!(%error, "the outbox relay cannot listen for commits; it polls meanwhile")
                }
            }
        }
        // Everything due, batch after batch; a failure waits longer each time, up to a bound.
        let swept = loop {
            let sweeping = storage.sweep_once(&*transport);
            tokio::pin!(sweeping);
            let once = tokio::select! {
                once = &mut sweeping => once,
                () = stop.cancelled() => {
                    let _ = tokio::time::timeout(STOP_DRAIN, sweeping).await;
                    return;
                }
            };
            match once {
                Ok(n) if n < settings.relay_batch => break Ok(()),
                Ok(_) => continue,
                Err(error) => break Err(error),
            }
        };
        match swept {
            Ok(()) => {
                if failing {
                    tracing::info!(outbox = %storage.shared.sql.outbox, "the outbox relay sends again");
                }
                failing = false;
                backoff = BACKOFF_FIRST;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "the outbox relay could not send; trying again");
                failing = true;
                // The listening connection may be as dead as the one that failed.
                if listener.as_ref().is_some_and(|l| l.client.is_closed()) {
                    listener = None;
                }
                if !pause(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            alive = notified(&mut listener) => {
                if !alive {
                    tracing::warn!("the outbox relay lost its listening connection; reconnecting");
                    listener = None;
                    continue;
                }
                // Fresh entries are their committer's to dispatch first; the sweep after the
                // grace takes what is left.
                if !pause(&stop, settings.relay_grace).await {
                    return;
                }
                if let Some(l) = &mut listener {
                    while l.notified.try_recv().is_ok() {}
                }
            }
            () = tokio::time::sleep(settings.relay_interval) => {}
        }
    }
}

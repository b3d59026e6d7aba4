//! Scheduled messages that fell due on a broker, handed to their destination.
//!
//! A broker transport keeps a scheduled message ([`crate::SendOptions::deliver_at`]) on the
//! broker until it is due, with its destination in [`header::DESTINATION`]; a running bus
//! takes the due ones ([`crate::Transport::subscribe_due`]), sends each where it goes, and only
//! then acks it. Buses taking them compete, so each is delivered by one of them; one that
//! crashes between the send and the ack leaves a duplicate, never a loss (the receiving
//! endpoint's inbox drops it where it has one).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::envelope::{header, Envelope, Headers};
use crate::error::TransportError;
use crate::runtime::Signal;
use crate::transport::{Delivery, Destination, Outgoing, Subscription, Transport};

/// Pause before a due message whose send failed is handed out again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Due messages sent on at once. Many fall due together (a batch scheduled for the same
/// minute); one at a time, each waiting for its broker's confirm, the last would be late by
/// the sum of the others' round trips.
const IN_FLIGHT: usize = 64;

/// Forward due messages until `stop` fires or the transport ends the subscription; then wait
/// for those on their way.
pub(crate) async fn forward_due(
    transport: Arc<dyn Transport>,
    mut due: Box<dyn Subscription>,
    stop: Signal,
) {
    let room = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut running = JoinSet::new();
    loop {
        let next = match stop.unless(due.next()).await {
            None => break,
            Some(next) => next,
        };
        match next {
            None => break,
            Some(Err(error)) => {
                tracing::warn!(%error, "taking due scheduled messages failed; trying again");
                if stop.unless(tokio::time::sleep(RETRY_PAUSE)).await.is_none() {
                    break;
                }
            }
            Some(Ok(delivery)) => {
                let Ok(permit) = room.clone().acquire_owned().await else {
                    break;
                };
                let transport = transport.clone();
                running.spawn(async move {
                    forward(&*transport, delivery).await;
                    drop(permit);
                });
                while running.try_join_next().is_some() {}
            }
        }
    }
    due.cancel().await;
    while running.join_next().await.is_some() {}
}

/// Send one due message to its destination, then ack it.
async fn forward(transport: &dyn Transport, delivery: Delivery) {
    let envelope = delivery.envelope();
    let id = envelope.headers.message_id.clone();
    let Some(destination) = envelope
        .headers
        .get(header::DESTINATION)
        .and_then(Destination::from_header)
    else {
        // Not written by a bus, and no way to know where it should go: kept out of the way
        // of the others, with a line saying which.
        tracing::error!(message_id = %id, destination = envelope.headers.get(header::DESTINATION).unwrap_or(""), "a scheduled message has no destination the bus can read; dropped");
        ack(delivery, &id).await;
        return;
    };
    let out = Outgoing::new(destination.clone(), due_copy(envelope));
    match transport.send(out).await {
        Ok(()) => {
            tracing::debug!(message_id = %id, %destination, "scheduled message delivered");
            ack(delivery, &id).await;
        }
        Err(TransportError::Unroutable(what)) => {
            tracing::error!(message_id = %id, %destination, %what, "a scheduled message fell due for a destination that no longer exists; dropped");
            ack(delivery, &id).await;
        }
        Err(error) => {
            tracing::warn!(message_id = %id, %destination, %error, "a due scheduled message could not be sent; it will be tried again");
            tokio::time::sleep(RETRY_PAUSE).await;
            if let Err(error) = delivery.nack().await {
                tracing::debug!(%error, "returning a due scheduled message failed; the broker hands it out again later");
            }
        }
    }
}

/// The message as it was sent, without what it carried while it waited.
fn due_copy(envelope: &Envelope) -> Envelope {
    let mut headers: Headers = (*envelope.headers).clone();
    headers.custom.remove(header::DESTINATION);
    headers.custom.remove(header::DELIVER_AT);
    Envelope {
        headers: Arc::new(headers),
        body: envelope.body.clone(),
    }
}

async fn ack(delivery: Delivery, id: &str) {
    if let Err(error) = delivery.ack().await {
        tracing::warn!(message_id = %id, %error, "ack of a delivered scheduled message failed; it may be delivered twice");
    }
}

//! Reply addresses: plain (core) NATS subjects, outside JetStream.
//!
//! A reply is wanted by one waiting caller, right now, and by nobody once it gave up: keeping
//! it in a stream would only leave it to be cleaned up. So the reply address of a bus instance
//! is a subject of the naming, `[<namespace>.]<prefix>.reply.<instance>`, on which that
//! instance holds a core subscription; a reply is a core publish to it with the usual bus
//! headers. Nobody listening (the caller's process ended, or it closed the address) means the
//! server drops the message, which is what the contract asks of a reply to an address that
//! no longer exists; there is no publish ack to wait for, so a reply costs the requester's
//! round trip nothing beyond the message itself. The address goes away with the subscription,
//! or with the connection of a process that crashed: the server forgets its subscriptions.

use bus_core::{
    async_trait, Acker, Delivery, Envelope, Outgoing, ReplyChannel, Subscription, TransportError,
};
use futures_util::StreamExt;

use crate::config::check_subject_part;
use crate::transport::NatsTransport;
use crate::wire;

const SUBSCRIBING: &str = "subscribing to the reply address";

/// Open the reply address of bus instance `instance`: its subject is the address.
pub(crate) async fn open(
    transport: &NatsTransport,
    instance: &str,
) -> Result<ReplyChannel, TransportError> {
    check_subject_part("bus instance", instance)?;
    let inner = &transport.inner;
    let address = inner.config.naming.reply_subject(instance);
    let subscribing = inner.client.subscribe(address.clone());
    let subscriber = TransportError::within(SUBSCRIBING, inner.config.request_timeout, subscribing)
        .await?
        .map_err(|e| TransportError::connection(SUBSCRIBING, e))?;
    Ok(ReplyChannel {
        address,
        replies: Box::new(Replies {
            subscriber: Some(subscriber),
        }),
    })
}

/// Send a reply to `address` (a reply subject of this naming). Returns once the client took
/// it: nobody may be listening any more, and the server says nothing either way.
pub(crate) async fn send(
    transport: &NatsTransport,
    out: &Outgoing,
    address: &str,
) -> Result<(), TransportError> {
    let inner = &transport.inner;
    if !is_reply_address(&inner.config.naming.reply_subject(""), address) {
        // Not an address this naming hands out: publishing there could reach anything on
        // the server (a command subject, the JetStream API). Its caller, if any, times out.
        tracing::warn!(%address, message_id = %out.envelope.headers.message_id, "a reply to an address that is no reply address of this bus was dropped");
        return Ok(());
    }
    let body = wire::body(&out.envelope)?;
    let headers = wire::headers(&out.envelope.headers, None);
    transport.check_size(&headers, &body)?;
    inner
        .client
        .publish_with_headers(address.to_string(), headers, body)
        .await
        .map_err(|e| TransportError::connection("sending a reply", e))
}

/// Whether `address` is one subject token after `prefix` (`<...>.reply.`), without wildcards.
fn is_reply_address(prefix: &str, address: &str) -> bool {
    address
        .strip_prefix(prefix)
        .is_some_and(|instance| check_subject_part("reply address", instance).is_ok())
}

/// The replies reaching one reply address.
struct Replies {
    /// `None` once cancelled.
    subscriber: Option<async_nats::Subscriber>,
}

#[async_trait]
impl Subscription for Replies {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        let message = self.subscriber.as_mut()?.next().await?;
        let envelope = wire::envelope(message.headers.as_ref(), message.payload);
        Some(Ok(Delivery::new(envelope, Box::new(Received), false, 1)))
    }

    async fn cancel(&mut self) {
        if let Some(mut subscriber) = self.subscriber.take() {
            if let Err(error) = subscriber.unsubscribe().await {
                tracing::debug!(%error, "closing the reply address failed; it goes with the connection");
            }
        }
    }
}

/// A reply is gone from the server once received: settling it has nothing left to do.
struct Received;

#[async_trait]
impl Acker for Received {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        Ok(())
    }

    fn ack_now(&mut self) -> Option<Result<(), TransportError>> {
        Some(Ok(()))
    }

    async fn nack(self: Box<Self>, _envelope: Envelope) -> Result<(), TransportError> {
        Ok(())
    }

    fn abandon(self: Box<Self>, _envelope: Envelope) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reply_subjects_of_the_naming_are_reply_addresses() {
        let prefix = "staging.bus.reply.";
        assert!(is_reply_address(prefix, "staging.bus.reply.0193abcd-ef"));
        assert!(!is_reply_address(prefix, "staging.bus.reply."));
        assert!(!is_reply_address(prefix, "staging.bus.reply.*"));
        assert!(!is_reply_address(prefix, "staging.bus.reply.>"));
        assert!(!is_reply_address(prefix, "staging.bus.reply.a b"));
        assert!(!is_reply_address(prefix, "staging.bus.cmd.billing"));
        assert!(!is_reply_address(prefix, "$JS.API.STREAM.DELETE.X"));
        assert!(!is_reply_address(prefix, "other.bus.reply.abc"));
    }
}

//! Publishing: where a message goes (exchange, routing key, `mandatory`), and a batch
//! published with confirms, again after the connection recovered, until the publish timeout.

use std::time::Duration;

use bus_core::{Destination, Outgoing, TransportError};
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation};
use tokio::time::{timeout_at, Instant};

use crate::transport::AmqpTransport;
use crate::wire;

impl AmqpTransport {
    /// Publish a batch and wait for the broker's confirms; after a connection or channel
    /// failure, publish it again (same message ids) once recovered, within the publish timeout.
    pub(crate) async fn publish_batch(&self, messages: &[Outgoing]) -> Result<(), TransportError> {
        let limit = self.inner.config.publish_timeout;
        let deadline = Instant::now() + limit;
        let timed_out =
            || TransportError::timeout("publishing (waiting for the broker's confirm)", limit);
        loop {
            let ch = self.current_publisher();
            let error = match timeout_at(deadline, self.publish_all(&ch, messages)).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(())) => return Ok(()),
                Ok(Err(PublishError::Final(e))) => return Err(e),
                Ok(Err(PublishError::Broker(e))) => e,
            };
            tracing::warn!(error = %self.inner.config.scrub(&error.to_string()), "publish failed; waiting for the connection to recover");
            let wait = (Instant::now() + Duration::from_secs(2)).min(deadline);
            match timeout_at(wait, ch.wait_for_recovery(error)).await {
                Err(_) => {
                    if Instant::now() >= deadline {
                        return Err(timed_out());
                    }
                    self.reconnect_if_dead().await;
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.reconnect_if_dead().await;
                    // Not recoverable on this channel (e.g. it was closed by a channel error):
                    // open another one, if the connection is up, and try again.
                    tracing::debug!(error = %self.inner.config.scrub(&e.to_string()), "publisher channel lost; opening a new one");
                    if timeout_at(deadline, self.replace_publisher())
                        .await
                        .is_err()
                    {
                        return Err(timed_out());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
        }
    }

    /// Exchange, routing key and mandatory flag for a message.
    async fn route(&self, out: &Outgoing) -> Result<(String, String, bool), TransportError> {
        let naming = &self.inner.config.naming;
        Ok(
            match (&out.destination, out.delay.filter(|d| !d.is_zero())) {
                (Destination::Endpoint(e), Some(delay)) => (
                    String::new(),
                    self.ensure_delay_queue(e, delay).await?,
                    true,
                ),
                (Destination::Endpoint(e), None) => (String::new(), naming.queue(e), true),
                (Destination::ErrorQueue(e), _) => (String::new(), naming.error_queue(e), true),
                (Destination::Event(name), None) => {
                    (naming.events_exchange_name(), name.to_string(), false)
                }
                (Destination::Event(name), Some(_)) => {
                    return Err(TransportError::Other {
                        context: format!(
                            "event `{name}` cannot be delayed; only endpoint messages can"
                        ),
                        source: None,
                    })
                }
            },
        )
    }

    /// Publish everything, then wait for every confirm.
    async fn publish_all(&self, ch: &Channel, messages: &[Outgoing]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(messages.len());
        for out in messages {
            let (exchange, key, mandatory) = self.route(out).await.map_err(PublishError::Final)?;
            let props = wire::properties(&out.envelope.headers).map_err(PublishError::Final)?;
            let body = wire::body(&out.envelope).map_err(PublishError::Final)?;
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props,
                )
                .await
                .map_err(PublishError::Broker)?;
            confirms.push(confirm);
        }
        for (confirm, out) in confirms.into_iter().zip(messages) {
            match confirm.await.map_err(PublishError::Broker)? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_returned)) => {
                    return Err(PublishError::Final(TransportError::Unroutable(
                        out.destination.to_string(),
                    )))
                }
                Confirmation::Nack(_) => {
                    return Err(PublishError::Final(TransportError::Refused {
                        context: format!(
                            "the broker did not accept the message for {}",
                            out.destination
                        ),
                        source: None,
                    }))
                }
                Confirmation::NotRequested => {
                    return Err(PublishError::Final(TransportError::Other {
                        context: "publisher confirms are off on this channel".into(),
                        source: None,
                    }))
                }
            }
        }
        Ok(())
    }
}

/// Why publishing a batch failed.
enum PublishError {
    /// Retrying cannot help (unroutable, refused, bad message).
    Final(TransportError),
    /// The channel or connection failed; after recovery the batch is published again with the
    /// same message ids.
    Broker(lapin::Error),
}

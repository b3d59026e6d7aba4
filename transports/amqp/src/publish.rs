//! Publishing: where a message goes (exchange, routing key, `mandatory`), and a batch
//! published with confirms, again after the connection recovered, until the publish timeout.

use std::time::{Duration, SystemTime};

use bus_core::{Destination, Outgoing, TransportError};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::time::{timeout_at, Instant};

use crate::schedule;
use crate::transport::AmqpTransport;
use crate::wire;

/// One message as it goes onto the wire: where, how, and what.
pub(crate) struct Publication<'a> {
    pub(crate) exchange: String,
    pub(crate) key: String,
    /// A message no queue takes comes back (and is [`TransportError::Unroutable`]).
    pub(crate) mandatory: bool,
    pub(crate) props: BasicProperties,
    pub(crate) body: &'a [u8],
    /// What the message is for, as errors name it.
    pub(crate) about: About<'a>,
}

/// What a publication is for, as errors name it.
#[derive(Clone, Copy)]
pub(crate) enum About<'a> {
    /// A message for a destination of the bus.
    Destination(&'a Destination),
    /// A scheduled message moved to the delay level for its remaining wait.
    Schedule,
}

impl std::fmt::Display for About<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            About::Destination(d) => d.fmt(f),
            About::Schedule => f.write_str("the delay levels of scheduled messages"),
        }
    }
}

impl AmqpTransport {
    /// Publish a batch and wait for the broker's confirms; after a connection or channel
    /// failure, publish it again (same message ids) once recovered, within the publish timeout.
    pub(crate) async fn publish_batch(&self, messages: &[Outgoing]) -> Result<(), TransportError> {
        let now = SystemTime::now();
        let mut publications = Vec::with_capacity(messages.len());
        let mut scheduled = false;
        for out in messages {
            let publication = match out.scheduled_after(now) {
                Some(at)
                    if matches!(
                        out.destination,
                        Destination::Endpoint(_) | Destination::Event(_)
                    ) =>
                {
                    self.ensure_schedule_topology().await?;
                    scheduled = true;
                    schedule::publication(&self.inner.config.naming, out, at, now)?
                }
                _ => self.publication(out).await?,
            };
            publications.push(publication);
        }
        let published = self.publish_confirmed(&publications).await;
        if scheduled && matches!(published, Err(TransportError::Unroutable(_))) {
            // Perhaps a delay level that was deleted, rather than a missing endpoint queue.
            self.forget_schedule_topology();
        }
        published
    }

    /// Publish and wait for the broker's confirms, again after a connection or channel failure
    /// once recovered, within the publish timeout.
    pub(crate) async fn publish_confirmed(
        &self,
        publications: &[Publication<'_>],
    ) -> Result<(), TransportError> {
        let limit = self.inner.config.publish_timeout;
        let deadline = Instant::now() + limit;
        let timed_out =
            || TransportError::timeout("publishing (waiting for the broker's confirm)", limit);
        loop {
            let ch = self.current_publisher();
            let error = match timeout_at(deadline, publish_all(&ch, publications)).await {
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

    /// How a message that is not scheduled for later goes out.
    async fn publication<'a>(&self, out: &'a Outgoing) -> Result<Publication<'a>, TransportError> {
        let (exchange, key, mandatory) = self.route(out).await?;
        let mut props = wire::properties(&out.envelope.headers)?;
        if let Destination::Reply(_) = out.destination {
            // The reply queue is not durable: nothing would be written to disk anyway.
            props = props.with_delivery_mode(1);
        }
        Ok(Publication {
            exchange,
            key,
            mandatory,
            props,
            body: wire::body(&out.envelope)?,
            about: About::Destination(&out.destination),
        })
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
                // The address is the reply queue's name. Not mandatory: a queue that is gone
                // means its caller is gone, and the reply is dropped, not an error.
                (Destination::Reply(address), _) => (String::new(), address.to_string(), false),
            },
        )
    }
}

/// Publish everything, then wait for every confirm.
async fn publish_all(ch: &Channel, publications: &[Publication<'_>]) -> Result<(), PublishError> {
    let mut confirms = Vec::with_capacity(publications.len());
    for p in publications {
        let confirm = ch
            .basic_publish(
                p.exchange.as_str().into(),
                p.key.as_str().into(),
                BasicPublishOptions {
                    mandatory: p.mandatory,
                    ..BasicPublishOptions::default()
                },
                p.body,
                p.props.clone(),
            )
            .await
            .map_err(PublishError::Broker)?;
        confirms.push(confirm);
    }
    for (confirm, p) in confirms.into_iter().zip(publications) {
        match confirm.await.map_err(PublishError::Broker)? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(_returned)) => {
                return Err(PublishError::Final(TransportError::Unroutable(
                    p.about.to_string(),
                )))
            }
            Confirmation::Nack(_) => {
                return Err(PublishError::Final(TransportError::Refused {
                    context: format!("the broker did not accept the message for {}", p.about),
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

/// Why publishing a batch failed.
enum PublishError {
    /// Retrying cannot help (unroutable, refused, bad message).
    Final(TransportError),
    /// The channel or connection failed; after recovery the batch is published again with the
    /// same message ids.
    Broker(lapin::Error),
}

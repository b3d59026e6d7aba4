//! Declaring the topology on the broker: the events exchange, each endpoint's queue and error
//! queue with their bindings, and the delay queues of delayed retries.

use std::time::Duration;

use bus_core::{Topology, TransportError};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::ExchangeKind;

use crate::config::QueueType;
use crate::error::broker_error;
use crate::transport::AmqpTransport;

impl AmqpTransport {
    /// Declare the events exchange and, for every endpoint, its queues and event bindings.
    pub(crate) async fn declare_topology(&self, topology: &Topology) -> Result<(), TransportError> {
        let naming = self.inner.config.naming.clone();
        let exchange = naming.events_exchange_name();
        let ch = self.topology_channel().await?;
        let work = async {
            ch.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_error("declaring the events exchange", e))?;
            for ep in &topology.endpoints {
                let queue = naming.queue(&ep.name);
                let error_queue = naming.error_queue(&ep.name);
                let mut error_args = FieldTable::default();
                if let QueueType::Quorum { .. } = self.inner.config.queue_type {
                    error_args.insert(
                        "x-queue-type".into(),
                        AMQPValue::LongString("quorum".into()),
                    );
                }
                ch.queue_declare(
                    error_queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    error_args,
                )
                .await
                .map_err(|e| broker_error(format!("declaring queue `{error_queue}`"), e))?;
                ch.queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    self.queue_args(&ep.name),
                )
                .await
                .map_err(|e| broker_error(format!("declaring queue `{queue}`"), e))?;
                for event in &ep.events {
                    ch.queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        event.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| broker_error(format!("binding `{queue}` to `{event}`"), e))?;
                }
            }
            Ok::<(), TransportError>(())
        };
        let result = TransportError::within(
            "declaring the topology",
            self.inner.config.connect_timeout,
            work,
        )
        .await;
        let _ = ch.close(200, "declared".into()).await;
        result?
    }

    /// Queue arguments of an endpoint's input queue.
    fn queue_args(&self, endpoint: &str) -> FieldTable {
        let mut args = FieldTable::default();
        if let QueueType::Quorum { delivery_limit } = self.inner.config.queue_type {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(i32::try_from(delivery_limit).unwrap_or(i32::MAX)),
            );
            // Past the delivery limit the broker moves the message to the error queue.
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(
                    self.inner.config.naming.error_queue(endpoint),
                )),
            );
        }
        args
    }

    /// The delay queue of `endpoint` for `delay`, declared on first use: its TTL dead-letters
    /// each message back into the endpoint's queue once the delay is over.
    pub(crate) async fn ensure_delay_queue(
        &self,
        endpoint: &str,
        delay: Duration,
    ) -> Result<String, TransportError> {
        let naming = &self.inner.config.naming;
        let name = naming.delay_queue(endpoint, delay);
        if self
            .inner
            .delay_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&name)
        {
            return Ok(name);
        }
        let mut args = FieldTable::default();
        let ttl = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(ttl));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(naming.queue(endpoint))),
        );
        let ch = self.topology_channel().await?;
        let declared = TransportError::within(
            "declaring a delay queue",
            self.inner.config.connect_timeout,
            ch.queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args),
        )
        .await;
        let _ = ch.close(200, "declared".into()).await;
        declared?.map_err(|e| broker_error(format!("declaring delay queue `{name}`"), e))?;
        self.inner
            .delay_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        Ok(name)
    }
}

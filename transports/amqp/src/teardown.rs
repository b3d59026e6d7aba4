//! Removing what `declare` created for some endpoints: their delay queues, input queues and
//! error queues, with the bindings and messages they hold.
//!
//! Whether something exists is asked with a passive declare. The broker answers a missing
//! queue or exchange by closing the channel, so the checks run on a channel of their own,
//! opened again after each miss.

use bus_core::{Declared, Topology, TransportError};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

use crate::error::{broker_error, is_not_found, is_precondition_failed};
use crate::transport::AmqpTransport;

/// A channel for passive declares, replaced after the broker closed it over a miss.
pub(crate) struct Checker<'t> {
    transport: &'t AmqpTransport,
    channel: Option<Channel>,
}

/// What a passive declare tells of a queue, at the moment it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueFigures {
    /// Messages ready to be delivered (not those delivered and not settled).
    pub(crate) ready: u32,
    /// Consumers of the queue.
    pub(crate) consumers: u32,
}

impl<'t> Checker<'t> {
    /// Passive declares on a channel of `transport`'s connection, opened when first needed.
    pub(crate) fn new(transport: &'t AmqpTransport) -> Self {
        Checker {
            transport,
            channel: None,
        }
    }

    /// The channel, opened if there is none.
    async fn channel(&mut self) -> Result<Channel, TransportError> {
        if let Some(ch) = self.channel.as_ref().filter(|c| c.status().connected()) {
            return Ok(ch.clone());
        }
        let ch = self.transport.topology_channel().await?;
        self.channel = Some(ch.clone());
        Ok(ch)
    }

    /// Whether the queue `name` exists.
    async fn queue_exists(&mut self, name: &str) -> Result<bool, TransportError> {
        Ok(self.queue_figures(name).await?.is_some())
    }

    /// The figures of the queue `name`; `None` when it does not exist.
    pub(crate) async fn queue_figures(
        &mut self,
        name: &str,
    ) -> Result<Option<QueueFigures>, TransportError> {
        let ch = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match ch
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => Ok(Some(QueueFigures {
                ready: q.message_count(),
                consumers: q.consumer_count(),
            })),
            Err(e) if is_not_found(&e) => {
                self.channel = None;
                Ok(None)
            }
            Err(e) => Err(broker_error(format!("looking up queue `{name}`"), e)),
        }
    }

    /// Whether the exchange `name` exists.
    async fn exchange_exists(&mut self, name: &str) -> Result<bool, TransportError> {
        let ch = self.channel().await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        match ch
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => {
                self.channel = None;
                Ok(false)
            }
            Err(e) => Err(broker_error(format!("looking up exchange `{name}`"), e)),
        }
    }

    /// Delete the queue `name`, messages, consumers and bindings included.
    async fn delete_queue(&mut self, name: &str) -> Result<(), TransportError> {
        let ch = self.channel().await?;
        ch.queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .map(drop)
            .map_err(|e| broker_error(format!("deleting queue `{name}`"), e))
    }

    /// Delete the queue `name` unless it holds messages or has consumers; `false` when the
    /// broker kept it for either.
    async fn delete_queue_if_idle(&mut self, name: &str) -> Result<bool, TransportError> {
        let ch = self.channel().await?;
        let idle = QueueDeleteOptions {
            if_unused: true,
            if_empty: true,
            ..QueueDeleteOptions::default()
        };
        match ch.queue_delete(name.into(), idle).await {
            Ok(_) => Ok(true),
            Err(e) if is_precondition_failed(&e) => {
                self.channel = None;
                Ok(false)
            }
            Err(e) => Err(broker_error(format!("deleting queue `{name}`"), e)),
        }
    }

    /// Close the channel, if one is open.
    pub(crate) async fn close(self) {
        if let Some(ch) = self.channel {
            let _ = ch.close(200, "checked".into()).await;
        }
    }
}

impl AmqpTransport {
    /// Delete (or with `dry_run`, list) the queues of the endpoints of `topology`.
    pub(crate) async fn teardown_topology(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        let naming = &self.inner.config.naming;
        let mut checker = Checker::new(self);
        let work = async {
            let mut found = Vec::new();
            for ep in &topology.endpoints {
                // Delay queues first: they dead-letter into the input queue. Only those
                // declared through this transport are known by name; AMQP cannot list queues.
                let mut queues = self.known_delay_queues(&ep.name);
                queues.push(naming.queue(&ep.name));
                queues.push(naming.error_queue(&ep.name));
                for name in queues {
                    if !checker.queue_exists(&name).await? {
                        continue;
                    }
                    if !dry_run {
                        checker.delete_queue(&name).await?;
                        self.forget_delay_queue(&name);
                    }
                    found.push(Declared {
                        kind: "queue",
                        name,
                    });
                }
            }
            if !topology.endpoints.is_empty() {
                found.extend(self.teardown_schedule(&mut checker, dry_run).await?);
            }
            Ok::<_, TransportError>(found)
        };
        let result = TransportError::within(
            "tearing down endpoints",
            self.inner.config.connect_timeout,
            work,
        )
        .await;
        checker.close().await;
        let mut found = result??;
        // An endpoint listed twice is reported once.
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Delete the events exchange (see [`crate::Naming::events_exchange_name`]) if no queue is
    /// bound to it any more, and say so: `Some` with the exchange when it was deleted, `None`
    /// when it is not there or still has bindings. With `dry_run` nothing is deleted and the
    /// answer is the exchange if it exists (it would still be kept if in use).
    ///
    /// [`Transport::teardown`](bus_core::Transport::teardown) keeps the exchange: every
    /// endpoint and publisher under the same naming shares it, and publishing to an exchange
    /// that is gone fails (events nobody subscribes to are fine; a missing exchange is not).
    /// Call this once the last endpoint of a namespace is torn down and no bus publishes
    /// under it any more.
    ///
    /// ```no_run
    /// # async fn demo(topology: bus_core::Topology) -> Result<(), Box<dyn std::error::Error>> {
    /// use bus_core::Transport;
    /// use bus_transport_amqp::{AmqpConfig, AmqpTransport};
    ///
    /// let transport =
    ///     AmqpTransport::connect(AmqpConfig::new("amqp://127.0.0.1:5672/%2f").namespace("ci-42"))
    ///         .await?;
    /// let removed = transport.teardown(&topology, false).await?;
    /// let exchange = transport.delete_events_exchange(false).await?;
    /// # drop((removed, exchange)); Ok(()) }
    /// ```
    pub async fn delete_events_exchange(
        &self,
        dry_run: bool,
    ) -> Result<Option<Declared>, TransportError> {
        let name = self.inner.config.naming.events_exchange_name();
        let mut checker = Checker::new(self);
        let work = async {
            if !checker.exchange_exists(&name).await? {
                return Ok(None);
            }
            if !dry_run {
                let ch = checker.channel().await?;
                let unused = ExchangeDeleteOptions {
                    if_unused: true,
                    ..ExchangeDeleteOptions::default()
                };
                match ch.exchange_delete(name.as_str().into(), unused).await {
                    Ok(()) => {}
                    // Still bound (`PRECONDITION_FAILED`): in use, so kept. The broker closed
                    // the channel; the checker is dropped with it.
                    Err(e) if is_precondition_failed(&e) => {
                        checker.channel = None;
                        return Ok(None);
                    }
                    Err(e) => return Err(broker_error(format!("deleting exchange `{name}`"), e)),
                }
            }
            Ok::<_, TransportError>(Some(Declared {
                kind: "exchange",
                name: name.clone(),
            }))
        };
        let result = TransportError::within(
            "deleting the events exchange",
            self.inner.config.connect_timeout,
            work,
        )
        .await;
        checker.close().await;
        result?
    }

    /// The scheduled-message queues of the naming (its levels and due queue), which every bus
    /// under it shares: removed only while nothing waits in them and nothing consumes them, so
    /// a teardown never drops a scheduled message or pulls the queues from under a running
    /// bus. The broker checks both as it deletes.
    async fn teardown_schedule(
        &self,
        checker: &mut Checker<'_>,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        let naming = &self.inner.config.naming;
        let mut names: Vec<String> = (0..=crate::schedule::MAX_LEVEL)
            .map(|level| naming.schedule_level_queue(level))
            .collect();
        names.push(naming.schedule_due_queue());
        let mut found = Vec::new();
        for name in names {
            let Some(figures) = checker.queue_figures(&name).await? else {
                continue;
            };
            if figures.ready > 0 || figures.consumers > 0 {
                continue;
            }
            if !dry_run && !checker.delete_queue_if_idle(&name).await? {
                continue;
            }
            found.push(Declared {
                kind: "queue",
                name,
            });
        }
        if !dry_run && !found.is_empty() {
            self.inner
                .schedule_declared
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(found)
    }

    /// The delay queues of `endpoint` declared through this transport (or a clone).
    fn known_delay_queues(&self, endpoint: &str) -> Vec<String> {
        let naming = &self.inner.config.naming;
        let mut names: Vec<String> = self
            .inner
            .delay_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|q| naming.is_delay_queue_of(q, endpoint))
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// A deleted queue is no longer known to exist: a later delayed retry declares it again.
    fn forget_delay_queue(&self, name: &str) {
        self.inner
            .delay_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

//! [`UnitOfWork`]: a unit of work outside handlers, e.g. in an HTTP handler of the service:
//! the user's database writes and the messages sent through it commit together.

use std::sync::Arc;

use crate::bus::Bus;
use crate::error::BusError;
use crate::message::{Command, Event};
use crate::outgoing::SendOptions;
use crate::runtime::Runtime;
use crate::storage::{Session, Storage};
use crate::transport::Outgoing;

/// A unit of work of the bus's storage, opened by [`Bus::unit_of_work`]: write through its
/// session (the storage crate's transaction), send and publish through it, then
/// [`commit`](UnitOfWork::commit): the writes and the messages commit at once, and the
/// messages leave only then. Dropped without a commit, it is rolled back (at the storage's
/// own pace: a database rolls back a transaction whose connection goes away).
///
/// ```
/// use bus_core::{Bus, Command, MemoryStorage};
/// use bus_transport_memory::MemoryTransport;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Command, Serialize, Deserialize, Clone, Debug)]
/// #[command(name = "docs.uow.Ship", endpoint = "docs-uow-shipping")]
/// struct Ship { order: u32 }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let storage = MemoryStorage::new();
/// let bus = Bus::builder()
///     .transport(MemoryTransport::new())
///     .storage(storage.clone())
///     .without_discovery()
///     .route::<Ship>("docs-uow-shipping")
///     .build()
///     .await?;
/// # bus.transport().declare(&bus_core::Topology { endpoints: vec![bus_core::EndpointTopology {
/// #     name: "docs-uow-shipping".into(), ..Default::default() }] }).await?;
/// let mut work = bus.unit_of_work().await?;
/// // ... the service's own writes through `work.session()` ...
/// work.send(Ship { order: 7 })?;
/// work.commit().await?;
/// assert_eq!(storage.undispatched(), 0, "sent once committed");
/// # Ok::<(), bus_core::BusError>(())
/// # }).unwrap();
/// ```
pub struct UnitOfWork {
    runtime: Arc<Runtime>,
    storage: Arc<dyn Storage>,
    session: Option<Box<dyn Session>>,
    staged: Vec<Outgoing>,
}

impl std::fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("storage", &self.storage.name())
            .field("staged", &self.staged.len())
            .finish()
    }
}

impl UnitOfWork {
    pub(crate) async fn open(runtime: Arc<Runtime>) -> Result<Self, BusError> {
        let storage = runtime.storage.clone().ok_or(BusError::NoStorage)?;
        let session = storage.open(None).await?;
        Ok(UnitOfWork {
            runtime,
            storage,
            session: Some(session),
            staged: Vec::new(),
        })
    }

    /// The session: the storage's transaction, for the service's own writes.
    pub fn session(&mut self) -> &mut dyn Session {
        self.session
            .as_deref_mut()
            .expect("a unit of work holds its session until committed")
    }

    /// The session as the storage's own type (e.g. `bus_postgres::PostgresSession`).
    pub fn downcast<T: Session>(&mut self) -> Option<&mut T> {
        self.session().as_any_mut().downcast_mut::<T>()
    }

    /// Send a command when the unit of work commits.
    pub fn send<C: Command>(&mut self, command: C) -> Result<(), BusError> {
        self.send_with(command, SendOptions::default())
    }

    /// Send a command with options when the unit of work commits.
    pub fn send_with<C: Command>(
        &mut self,
        command: C,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let destination = self.runtime.route::<C>()?;
        let out = self.runtime.outgoing(command, destination, None, options)?;
        self.staged.push(out);
        Ok(())
    }

    /// Publish an event when the unit of work commits.
    pub fn publish<E: Event>(&mut self, event: E) -> Result<(), BusError> {
        self.publish_with(event, SendOptions::default())
    }

    /// Publish an event with options when the unit of work commits.
    pub fn publish_with<E: Event>(
        &mut self,
        event: E,
        options: SendOptions,
    ) -> Result<(), BusError> {
        let destination = self.runtime.event(E::NAME);
        let out = self.runtime.outgoing(event, destination, None, options)?;
        self.staged.push(out);
        Ok(())
    }

    /// Commit the writes and the messages at once; then hand the messages to the transport
    /// (what cannot be sent now, the storage's relay sends later: `Ok` means committed).
    pub async fn commit(mut self) -> Result<(), BusError> {
        let session = self
            .session
            .take()
            .expect("a unit of work holds its session until committed");
        let staged = std::mem::take(&mut self.staged);
        let telemetry = &self.runtime.telemetry;
        let sent: Vec<_> = match telemetry.counts_sends() {
            true => staged.iter().map(|out| telemetry.sending(out)).collect(),
            false => Vec::new(),
        };
        let ids = session.commit(staged).await?;
        for sent in sent {
            sent.done(1);
        }
        if !ids.is_empty() {
            if let Err(error) = self.storage.dispatch(&ids, &*self.runtime.transport).await {
                tracing::warn!(%error, "committed messages not sent yet; the outbox relay sends them");
            }
        }
        Ok(())
    }

    /// Undo the writes; nothing is sent.
    pub async fn rollback(mut self) {
        if let Some(session) = self.session.take() {
            session.rollback().await;
        }
    }
}

impl Bus {
    /// Open a unit of work of the bus's storage ([`crate::BusBuilder::storage`]), outside any
    /// handler: see [`UnitOfWork`]. [`BusError::NoStorage`] without one.
    pub async fn unit_of_work(&self) -> Result<UnitOfWork, BusError> {
        UnitOfWork::open(self.runtime().clone()).await
    }
}

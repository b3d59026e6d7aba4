//! [`MemoryStorage`]: the storage of units of work kept in process, for tests and demos. It
//! behaves as a database would (a session's writes apply at commit or not at all, saga
//! versions conflict, an outbox entry is sent by one dispatcher), without outliving the
//! process.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::StorageError;
use crate::storage::{SagaRecord, Session, Storage};
use crate::transport::{Outgoing, Transport};

/// How often the relay looks for entries a failed dispatch left.
const RELAY_EVERY: Duration = Duration::from_millis(200);

/// Units of work in process memory: saga instances, inbox records and outbox entries.
///
/// ```
/// use bus_core::{Bus, MemoryStorage};
/// use bus_transport_memory::MemoryTransport;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = Bus::builder()
///     .transport(MemoryTransport::new())
///     .storage(MemoryStorage::new())
///     .without_discovery()
///     .build()
///     .await?;
/// # Ok::<(), bus_core::BusError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<Stored>>,
}

#[derive(Default)]
struct Stored {
    handled: HashSet<(String, String)>,
    sagas: HashMap<(String, String), SagaRecord>,
    outbox: BTreeMap<i64, Outgoing>,
    next_entry: i64,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stored = self.lock();
        f.debug_struct("MemoryStorage")
            .field("sagas", &stored.sagas.len())
            .field("outbox", &stored.outbox.len())
            .finish()
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored state of saga instance `id` of `saga`, if it is running.
    pub fn saga(&self, saga: &str, id: &str) -> Option<SagaRecord> {
        self.lock()
            .sagas
            .get(&(saga.to_string(), id.to_string()))
            .cloned()
    }

    /// How many instances of `saga` are running.
    pub fn running(&self, saga: &str) -> usize {
        self.lock().sagas.keys().filter(|(s, _)| s == saga).count()
    }

    /// Outbox entries committed and not yet handed to the transport.
    pub fn undispatched(&self) -> usize {
        self.lock().outbox.len()
    }

    /// Take these entries out of the outbox (those still there), so that no other dispatcher
    /// sends them; they go back if the send fails.
    fn take(&self, ids: &[i64]) -> Vec<(i64, Outgoing)> {
        let mut stored = self.lock();
        ids.iter()
            .filter_map(|id| stored.outbox.remove(id).map(|out| (*id, out)))
            .collect()
    }

    async fn send(
        &self,
        taken: Vec<(i64, Outgoing)>,
        transport: &dyn Transport,
    ) -> Result<(), StorageError> {
        if taken.is_empty() {
            return Ok(());
        }
        let (ids, messages): (Vec<i64>, Vec<Outgoing>) = taken.iter().cloned().unzip();
        match transport.send_batch(messages).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let mut stored = self.lock();
                for (id, out) in taken {
                    stored.outbox.insert(id, out);
                }
                Err(StorageError::other(
                    format!(
                        "sending {} outbox entries failed; the relay tries again",
                        ids.len()
                    ),
                    error,
                ))
            }
        }
    }
}

/// A saga write of a session: the state to store (`None`: completed) and the version it was
/// read at (`None`: a new instance), by (saga, instance id).
type SagaWrites = HashMap<(String, String), (Option<Vec<u8>>, Option<i64>)>;

/// What a session changes, applied at commit.
struct MemorySession {
    storage: MemoryStorage,
    handling: Option<(String, String)>,
    sagas: SagaWrites,
}

#[async_trait]
impl Session for MemorySession {
    async fn handled_before(&mut self) -> Result<bool, StorageError> {
        Ok(match &self.handling {
            Some(key) => self.storage.lock().handled.contains(key),
            None => false,
        })
    }

    async fn load_saga(
        &mut self,
        saga: &str,
        id: &str,
    ) -> Result<Option<SagaRecord>, StorageError> {
        Ok(self.storage.saga(saga, id))
    }

    async fn save_saga(
        &mut self,
        saga: &str,
        id: &str,
        state: Vec<u8>,
        read: Option<i64>,
    ) -> Result<(), StorageError> {
        self.sagas
            .insert((saga.to_string(), id.to_string()), (Some(state), read));
        Ok(())
    }

    async fn complete_saga(&mut self, saga: &str, id: &str, read: i64) -> Result<(), StorageError> {
        self.sagas
            .insert((saga.to_string(), id.to_string()), (None, Some(read)));
        Ok(())
    }

    async fn commit(self: Box<Self>, outgoing: Vec<Outgoing>) -> Result<Vec<i64>, StorageError> {
        let mut stored = self.storage.lock();
        // Every saga change must still apply to the version it read: check all, then write.
        for ((saga, id), (_, read)) in &self.sagas {
            let now = stored
                .sagas
                .get(&(saga.clone(), id.clone()))
                .map(|r| r.version);
            if now != *read {
                return Err(StorageError::Conflict {
                    saga: saga.clone(),
                    id: id.clone(),
                });
            }
        }
        for (key, (state, read)) in self.sagas {
            match state {
                Some(state) => {
                    let version = read.map_or(1, |v| v + 1);
                    stored.sagas.insert(key, SagaRecord { state, version });
                }
                None => {
                    stored.sagas.remove(&key);
                }
            }
        }
        if let Some(key) = self.handling {
            stored.handled.insert(key);
        }
        let mut ids = Vec::with_capacity(outgoing.len());
        for out in outgoing {
            stored.next_entry += 1;
            let id = stored.next_entry;
            stored.outbox.insert(id, out);
            ids.push(id);
        }
        Ok(ids)
    }

    async fn rollback(self: Box<Self>) {}

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        "memory"
    }

    async fn open(&self, handling: Option<(&str, &str)>) -> Result<Box<dyn Session>, StorageError> {
        Ok(Box::new(MemorySession {
            storage: self.clone(),
            handling: handling.map(|(e, m)| (e.to_string(), m.to_string())),
            sagas: HashMap::new(),
        }))
    }

    async fn dispatch(&self, ids: &[i64], transport: &dyn Transport) -> Result<(), StorageError> {
        let taken = self.take(ids);
        self.send(taken, transport).await
    }

    async fn relay(&self, transport: Arc<dyn Transport>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RELAY_EVERY) => {}
            }
            let ids: Vec<i64> = self.lock().outbox.keys().copied().take(1_000).collect();
            let taken = self.take(&ids);
            if let Err(error) = self.send(taken, &*transport).await {
                tracing::warn!(%error, "the outbox relay could not send; trying again");
            }
        }
    }
}

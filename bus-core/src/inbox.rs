//! The idempotent-consumer option: an inbox of handled message ids per endpoint.
//!
//! At-least-once delivery means a message can arrive twice (a crash between handling and
//! acking, a connection lost before the ack reached the broker). With an inbox, an endpoint
//! records the id of every message it handled successfully and acks a second copy without
//! running its handlers again. Enable it with [`crate::EndpointConfig::inbox`].
//!
//! The record is written after the handler succeeded and its outgoing messages were accepted,
//! before the ack; a crash between the handler's side effect and the record can still let one
//! duplicate through. For exactly-once side effects, keep the side effect and the record in one
//! database transaction.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::TransportError;

/// A store of handled message ids, per endpoint.
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Whether `message_id` was already handled by `endpoint`.
    async fn contains(&self, endpoint: &str, message_id: &str) -> Result<bool, TransportError>;
    /// Remember that `endpoint` handled `message_id`.
    async fn record(&self, endpoint: &str, message_id: &str) -> Result<(), TransportError>;
}

/// An in-memory inbox remembering the last `capacity` ids (per process; oldest forgotten first).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use bus_core::{Inbox, MemoryInbox};
///
/// let inbox = MemoryInbox::new(2);
/// inbox.record("billing", "a").await.unwrap();
/// inbox.record("billing", "b").await.unwrap();
/// assert!(inbox.contains("billing", "a").await.unwrap());
/// assert!(!inbox.contains("shipping", "a").await.unwrap());
/// inbox.record("billing", "c").await.unwrap(); // forgets "a"
/// assert!(!inbox.contains("billing", "a").await.unwrap());
/// # });
/// ```
pub struct MemoryInbox {
    capacity: usize,
    state: Mutex<(HashSet<(String, String)>, VecDeque<(String, String)>)>,
}

impl MemoryInbox {
    /// An inbox keeping at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        MemoryInbox {
            capacity: capacity.max(1),
            state: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }
}

impl std::fmt::Debug for MemoryInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryInbox")
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[async_trait]
impl Inbox for MemoryInbox {
    async fn contains(&self, endpoint: &str, message_id: &str) -> Result<bool, TransportError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(state
            .0
            .contains(&(endpoint.to_string(), message_id.to_string())))
    }

    async fn record(&self, endpoint: &str, message_id: &str) -> Result<(), TransportError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = (endpoint.to_string(), message_id.to_string());
        if state.0.insert(key.clone()) {
            state.1.push_back(key);
            while state.1.len() > self.capacity {
                if let Some(old) = state.1.pop_front() {
                    state.0.remove(&old);
                }
            }
        }
        Ok(())
    }
}

//! The inbox stage, a [`Layer`] like a user's: an endpoint with an inbox acks a message it
//! already handled without running its handlers again (an idempotent consumer), and records
//! each message it handled once what the handlers sent was released.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::context::MessageContext;
use crate::failure::Failure;
use crate::inbox::Inbox;
use crate::layer::{Layer, LayerFuture, Next};
use crate::runtime::Counters;

/// An endpoint's inbox, as the innermost of its layers.
pub(crate) struct InboxLayer {
    inbox: Arc<dyn Inbox>,
    /// Message ids being handled now at this endpoint, in this process: a second copy of one
    /// (a redelivery racing the first) waits for the first to be recorded.
    in_flight: Mutex<HashSet<String>>,
}

impl InboxLayer {
    pub(crate) fn new(inbox: Arc<dyn Inbox>) -> Self {
        InboxLayer {
            inbox,
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A message id claimed as in flight, released on drop.
struct Claim<'a> {
    layer: &'a InboxLayer,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.layer.in_flight().remove(&self.id);
    }
}

impl Layer for InboxLayer {
    fn call<'a>(&'a self, ctx: &'a MessageContext, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let id = ctx.message_id();
            if !self.in_flight().insert(id.to_string()) {
                // Once the copy being handled is done the inbox will know it: come back later.
                return Err(Failure::requeue(
                    "a copy of this message is being handled right now",
                ));
            }
            let _claim = Claim {
                layer: self,
                id: id.to_string(),
            };
            match self.inbox.contains(ctx.endpoint(), id).await {
                Ok(true) => {
                    Counters::bump(&ctx.runtime().counters.duplicates_skipped);
                    tracing::debug!(
                        endpoint = ctx.endpoint(),
                        message_id = id,
                        "already handled; acking the duplicate"
                    );
                    ctx.mark_duplicate();
                    return Ok(());
                }
                Ok(false) => {}
                Err(error) => {
                    return Err(Failure::requeue(format!(
                        "the inbox is unavailable: {error}"
                    )));
                }
            }
            next.run(ctx).await?;
            if let Err(error) = self.inbox.record(ctx.endpoint(), id).await {
                tracing::warn!(endpoint = ctx.endpoint(), message_id = id, %error, "could not record the message in the inbox; a redelivery would run again");
            }
            Ok(())
        })
    }

    fn name(&self) -> &str {
        "inbox"
    }
}

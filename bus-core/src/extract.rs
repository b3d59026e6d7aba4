//! Extractors: the extra arguments of a handler, built from its [`MessageContext`].
//!
//! As in axum, a handler's first argument is the message and every other argument is
//! extracted: [`MessageContext`] itself, [`State<T>`] for shared application data, and
//! [`Headers`] for the message metadata. Implement [`FromContext`] for your own.

use std::any::TypeId;

use crate::context::MessageContext;
use crate::envelope::Headers;
use crate::error::HandlerError;
use crate::state::StateRequirement;

/// A value a handler can take as an argument after the message.
///
/// ```
/// use bus_core::{FromContext, HandlerError, MessageContext};
///
/// /// The tenant a message belongs to, from its `tenant` header.
/// struct Tenant(String);
///
/// impl FromContext for Tenant {
///     fn from_context(ctx: &MessageContext) -> Result<Self, HandlerError> {
///         ctx.headers()
///             .get("tenant")
///             .map(|t| Tenant(t.to_string()))
///             .ok_or_else(|| HandlerError::unrecoverable("missing `tenant` header"))
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument",
    label = "not an extractor",
    note = "after the message, handler arguments must implement `FromContext`: `MessageContext`, `State<T>`, `Headers`, or your own type"
)]
pub trait FromContext: Sized {
    /// Build the value for one handler call.
    fn from_context(ctx: &MessageContext) -> Result<Self, HandlerError>;

    /// State the extractor needs, checked when the bus is built.
    fn requires() -> Option<StateRequirement> {
        None
    }
}

impl FromContext for MessageContext {
    fn from_context(ctx: &MessageContext) -> Result<Self, HandlerError> {
        Ok(ctx.clone())
    }
}

impl FromContext for Headers {
    fn from_context(ctx: &MessageContext) -> Result<Self, HandlerError> {
        Ok(ctx.headers().clone())
    }
}

/// Shared application state given to the bus with [`crate::BusBuilder::state`].
///
/// ```
/// use std::sync::Arc;
/// use bus_core::{Event, HandlerError, State};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, Clone, Debug)]
/// #[event(name = "docs.Counted")]
/// struct Counted;
///
/// #[derive(Clone, Default)]
/// struct Stats { seen: Arc<std::sync::atomic::AtomicUsize> }
///
/// #[bus_core::handler(endpoint = "docs-stats")]
/// async fn count(_: Counted, State(stats): State<Stats>) -> Result<(), HandlerError> {
///     stats.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug, Default)]
pub struct State<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromContext for State<T> {
    fn from_context(ctx: &MessageContext) -> Result<Self, HandlerError> {
        ctx.state::<T>().map(State).ok_or_else(|| {
            HandlerError::unrecoverable(format!(
                "no state of type `{}` was given to the bus",
                std::any::type_name::<T>()
            ))
        })
    }

    fn requires() -> Option<StateRequirement> {
        Some(StateRequirement {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        })
    }
}

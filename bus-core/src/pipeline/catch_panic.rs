//! The panic-catching stage: a panic in a handler (or a layer) fails its attempt like an
//! error does, and the worker, the process and the other messages go on.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::failure::Failure;

/// Run `work`, turning a panic into a [`Failure`] attributed to `by` (a handler or layer).
///
/// `AssertUnwindSafe`: after a panic nothing of the attempt is used again but the failure;
/// its context's outbox is closed and dropped by the runtime.
pub(super) async fn caught<F>(work: F, by: impl FnOnce() -> Option<String>) -> Result<(), Failure>
where
    F: Future<Output = Result<(), Failure>>,
{
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let failure = Failure::panic(panic.as_ref());
            Err(match by() {
                Some(by) => failure.with_handler(&by),
                None => failure,
            })
        }
    }
}

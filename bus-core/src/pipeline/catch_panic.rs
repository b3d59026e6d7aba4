//! The panic-catching stage: a panic in a handler (or a layer) fails its attempt like an
//! error does ([`crate::Failure`] with reason `panic`), and the worker, the process and the
//! other messages go on.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::future::CatchUnwind;
use futures_util::FutureExt;

/// `work`, with a panic in it caught and returned as its payload.
///
/// `AssertUnwindSafe`: after a panic nothing of the attempt is used again but the failure;
/// its context's outbox is closed and dropped by the runtime.
pub(super) fn guarded<F: Future>(work: F) -> CatchUnwind<AssertUnwindSafe<F>> {
    AssertUnwindSafe(work).catch_unwind()
}

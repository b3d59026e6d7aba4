//! The release stage: what the handlers sent or published through their context was held
//! back while they ran; once they all succeeded it is handed to the transport, and only when
//! the transport accepted it (confirmed, on brokers) can the delivery be acked. A failed
//! release fails the attempt, so a retry sends again (with the same message ids it had: a
//! consumer with an inbox sees the duplicate).

use crate::failure::Failure;
use crate::runtime::Runtime;
use crate::transport::Outgoing;

/// Hand `staged` to the transport.
pub(super) async fn release(runtime: &Runtime, staged: Vec<Outgoing>) -> Result<(), Failure> {
    if staged.is_empty() {
        return Ok(());
    }
    runtime
        .transport
        .send_batch(staged)
        .await
        .map_err(|e| Failure::dispatch(&e))
}

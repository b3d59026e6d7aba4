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
    let telemetry = &runtime.telemetry;
    // Counted once the transport took them. Most handlers send one message: its count needs
    // no list.
    let (one, many) = match staged.as_slice() {
        _ if !telemetry.counts_sends() => (None, Vec::new()),
        [only] => (Some(telemetry.sending(only)), Vec::new()),
        all => (None, all.iter().map(|out| telemetry.sending(out)).collect()),
    };
    runtime
        .transport
        .send_batch(staged)
        .await
        .map_err(|e| Failure::dispatch(&e))?;
    for sent in one.into_iter().chain(many) {
        sent.done(1);
    }
    Ok(())
}

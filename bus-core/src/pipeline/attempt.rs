//! One attempt at a delivery: its context, then the layers (when the endpoint has any), then
//! each handler under its timeout and panic catching, then the release of what the handlers
//! sent. An endpoint without layers runs the same stages without going through [`Next`].

use std::sync::Arc;

use super::{catch_panic, release, timeout, EndpointRuntime};
use crate::codec::Codec;
use crate::context::MessageContext;
use crate::envelope::Envelope;
use crate::failure::{Failure, FailureReason};
use crate::handler::{Decoded, HandlerDescriptor};
use crate::layer::Next;

/// How a successful attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Done {
    /// The handlers ran and what they sent was released.
    Handled,
    /// The inbox knew the message: nothing ran.
    Duplicate,
}

/// What an attempt works on: the delivery's checked parts.
pub(super) struct Work<'a> {
    pub(super) handlers: &'a [HandlerDescriptor],
    /// The body decoded for each handler by the checks, taken by the first attempt.
    pub(super) decoded: &'a mut [Option<Decoded>],
    pub(super) envelope: &'a Envelope,
    pub(super) codec: &'a dyn Codec,
    pub(super) redelivered: bool,
}

/// Make attempt number `number`. `spare` is the worker's previous context, whose allocation
/// is reused when nothing else holds it; the attempt's context goes back there.
pub(super) async fn run(
    ep: &EndpointRuntime,
    work: &mut Work<'_>,
    number: u32,
    spare: &mut Option<MessageContext>,
) -> Result<Done, Failure> {
    let mut ctx = MessageContext::for_attempt(
        spare.take(),
        &ep.runtime,
        &work.envelope.headers,
        &ep.name,
        number,
        work.redelivered,
    );
    if let Some(storage) = &ep.config.storage {
        let outcome = in_unit_of_work(ep, work, &ctx, &**storage).await;
        ctx.take_outbox();
        *spare = Some(ctx);
        return outcome;
    }
    let outcome = if ep.layers.is_empty() {
        let ran = run_handlers(ep, work, &ctx).await;
        // Closed either way: what a failed attempt staged is dropped, and a handler that kept
        // its context can stage nothing more. Nobody else holds the context now (as a rule):
        // its outbox is taken unlocked.
        let staged = ctx.take_outbox();
        match ran {
            // Most handlers send nothing: no release to await.
            Ok(()) if staged.is_empty() => Ok(()),
            Ok(()) => release::release(&ep.runtime, staged).await,
            Err(failure) => Err(failure),
        }
    } else {
        let outcome = {
            let ctx = &ctx;
            let innermost = std::pin::pin!(async move {
                run_handlers(ep, work, ctx).await?;
                release::release(&ep.runtime, ctx.close_outbox()).await
            });
            let chain = Next::new(&ep.layers, innermost).run(ctx);
            match catch_panic::guarded(chain).await {
                Ok(outcome) => outcome,
                Err(panic) => Err(Failure::panic(panic.as_ref()).with_handler("a layer")),
            }
        };
        // Closed, as above, whether or not the innermost stage was reached.
        ctx.take_outbox();
        outcome
    };
    let done = match ctx.is_duplicate() {
        true => Done::Duplicate,
        false => Done::Handled,
    };
    *spare = Some(ctx);
    outcome.map(|()| done)
}

/// An attempt in a unit of work of the endpoint's storage: a message handled before is a
/// duplicate; otherwise the layers and handlers run, and what they wrote, sent and changed
/// commits at once, with the record that the message was handled. Only then are the
/// messages handed to the transport, by the storage (what it cannot send now, its relay
/// sends later): the attempt succeeded once the commit did.
async fn in_unit_of_work(
    ep: &EndpointRuntime,
    work: &mut Work<'_>,
    ctx: &MessageContext,
    storage: &dyn crate::Storage,
) -> Result<Done, Failure> {
    let headers = &work.envelope.headers;
    let mut session = storage
        .open(Some((&ep.name, &headers.message_id)))
        .await
        .map_err(|e| Failure::storage(&e))?;
    match session.handled_before().await {
        Ok(false) => {}
        Ok(true) => {
            session.rollback().await;
            ctx.mark_duplicate();
            crate::runtime::Counters::bump(&ep.runtime.counters.duplicates_skipped);
            tracing::debug!(endpoint = %ep.name, message_id = %headers.message_id, "handled before (its unit of work committed): acked without handling");
            return Ok(Done::Duplicate);
        }
        Err(error) => {
            session.rollback().await;
            return Err(Failure::storage(&error));
        }
    }
    ctx.set_session(session);
    let ran = if ep.layers.is_empty() {
        run_handlers(ep, work, ctx).await
    } else {
        let innermost = std::pin::pin!(run_handlers(ep, work, ctx));
        let chain = Next::new(&ep.layers, innermost).run(ctx);
        match catch_panic::guarded(chain).await {
            Ok(outcome) => outcome,
            Err(panic) => Err(Failure::panic(panic.as_ref()).with_handler("a layer")),
        }
    };
    let staged = ctx.close_outbox();
    let Some(session) = ctx.take_session() else {
        return Err(Failure::storage(&crate::StorageError::Other {
            context: "a handler kept its session past its end; its work was not committed".into(),
            source: None,
        }));
    };
    if let Err(failure) = ran {
        session.rollback().await;
        return Err(failure);
    }
    // Counted as sent once committed: from then on they leave, now or through the relay.
    let telemetry = &ep.runtime.telemetry;
    let sent: Vec<_> = match telemetry.counts_sends() {
        true => staged.iter().map(|out| telemetry.sending(out)).collect(),
        false => Vec::new(),
    };
    let ids = session
        .commit(staged)
        .await
        .map_err(|e| Failure::storage(&e))?;
    for sent in sent {
        sent.done(1);
    }
    if !ids.is_empty() {
        if let Err(error) = storage.dispatch(&ids, &*ep.runtime.transport).await {
            tracing::warn!(endpoint = %ep.name, %error, "committed messages not sent yet; the outbox relay sends them");
        }
    }
    Ok(Done::Handled)
}

/// Run the attempt's handlers in order, each with a clone of `ctx`; the first failure ends it.
async fn run_handlers(
    ep: &EndpointRuntime,
    work: &mut Work<'_>,
    ctx: &MessageContext,
) -> Result<(), Failure> {
    let limit = ep.config.handler_timeout;
    for (h, slot) in work.handlers.iter().zip(work.decoded.iter_mut()) {
        // Decoded by the checks for the first attempt; again for each retry.
        let message = match slot.take() {
            Some(m) => m,
            None => h
                .decode(&work.envelope.body, work.codec, false)
                .map_err(|e| {
                    Failure::rejected(FailureReason::Deserialization, e.to_string())
                        .with_handler(h.name())
                })?,
        };
        let call = catch_panic::guarded(h.invoke(message, &work.envelope.body, ctx.clone()));
        let call = std::pin::pin!(call);
        let failure = match timeout::within(limit, call).await {
            Some(Ok(Ok(()))) => continue,
            Some(Ok(Err(error))) => Failure::from_handler(&error),
            Some(Err(panic)) => Failure::panic(panic.as_ref()),
            None => Failure::timeout(limit.unwrap_or_default()),
        };
        return Err(failure.with_handler(h.name()));
    }
    Ok(())
}

/// The layers of an endpoint: the bus-wide ones, the endpoint's own, then its inbox.
pub(super) fn layers_of(
    bus: &[Arc<dyn crate::Layer>],
    endpoint: &crate::EndpointConfig,
) -> Box<[Arc<dyn crate::Layer>]> {
    let mut layers: Vec<Arc<dyn crate::Layer>> = bus.to_vec();
    layers.extend(endpoint.layers.iter().cloned());
    if let Some(inbox) = &endpoint.inbox {
        layers.push(Arc::new(super::inbox::InboxLayer::new(inbox.clone())));
    }
    layers.into_boxed_slice()
}

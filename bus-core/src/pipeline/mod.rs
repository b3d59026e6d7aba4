//! The handling pipeline: what happens to one delivery, stage by stage.
//!
//! 1. [`checks`]: headers, a handler for the type, size, codec, decoding. Failing here goes
//!    straight to the error queue.
//! 2. Attempts ([`attempt`]): the endpoint's [layers](crate::Layer) (the bus's, the
//!    endpoint's, then its [`inbox`]), then each handler under its [`timeout`] and
//!    [`catch_panic`], then the [`release`] of what the handlers sent.
//! 3. After a failed attempt, the endpoint's [recoverability policy](crate::RecoverabilityPolicy)
//!    decides: attempt again now, retry after a delay, or the error queue.
//! 4. [`settle`]: the runtime carries out the outcome (ack, delayed retry, error queue).

mod attempt;
mod catch_panic;
mod checks;
mod inbox;
mod release;
mod settle;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use crate::context::MessageContext;
use crate::endpoint::EndpointConfig;
use crate::envelope::header;
use crate::failure::Failure;
use crate::handler::{Decoded, HandlerDescriptor};
use crate::layer::Layer;
use crate::recoverability::{Attempts, Decision};
use crate::runtime::{Counters, NameMap, Runtime};
use crate::transport::Delivery;

use attempt::{Done, Work};
pub(crate) use settle::PendingAck;

/// One hosted endpoint, as its workers see it.
pub(crate) struct EndpointRuntime {
    pub(crate) name: Arc<str>,
    pub(crate) config: EndpointConfig,
    /// Handlers by message type.
    pub(crate) handlers: NameMap<Vec<HandlerDescriptor>>,
    pub(crate) runtime: Arc<Runtime>,
    /// The bus's layers, the endpoint's, and its inbox, outermost first.
    layers: Box<[Arc<dyn Layer>]>,
}

impl EndpointRuntime {
    pub(crate) fn new(
        name: &str,
        config: EndpointConfig,
        handlers: NameMap<Vec<HandlerDescriptor>>,
        runtime: Arc<Runtime>,
        bus_layers: &[Arc<dyn Layer>],
    ) -> Self {
        EndpointRuntime {
            name: Arc::from(name),
            layers: attempt::layers_of(bus_layers, &config),
            config,
            handlers,
            runtime,
        }
    }
}

/// What a delivery's handling came to.
enum Verdict {
    Ack(Done),
    RetryAfter {
        delay: Duration,
        round: u32,
        attempts: u32,
    },
    ErrorQueue(Failure, u32),
    /// Back to the queue for later, not counted as an attempt.
    Requeue(Failure),
}

/// Everything that happens to one delivery. A handled one's ack is returned when the
/// transport has to wait for it (see [`PendingAck`]); every other outcome is settled here.
pub(crate) async fn handle(
    ep: &EndpointRuntime,
    delivery: Delivery,
    spare: &mut Option<MessageContext>,
) -> Option<PendingAck> {
    let verdict = {
        let envelope = delivery.envelope();
        match checks::route(ep, envelope) {
            Err(failure) => Verdict::ErrorQueue(failure, 1),
            Ok((handlers, codec)) => {
                // One handler is the common case: its slot lives on the stack, not in a Vec.
                let mut one = [None];
                let mut many = Vec::new();
                let decoded: &mut [Option<Decoded>] = if handlers.len() == 1 {
                    &mut one
                } else {
                    many.resize_with(handlers.len(), || None);
                    &mut many
                };
                match checks::decode(ep, handlers, &envelope.body, codec, decoded) {
                    Err(failure) => Verdict::ErrorQueue(failure, 1),
                    Ok(()) => {
                        let mut work = Work {
                            handlers,
                            decoded,
                            envelope,
                            codec: codec.as_ref(),
                            redelivered: delivery.redelivered(),
                        };
                        attempts(ep, &mut work, spare).await
                    }
                }
            }
        }
    };
    match verdict {
        Verdict::Ack(done) => {
            if done == Done::Handled {
                Counters::bump(&ep.runtime.counters.handled);
            }
            settle::ack(ep, delivery)
        }
        Verdict::RetryAfter {
            delay,
            round,
            attempts,
        } => {
            settle::schedule_retry(ep, delivery, round, attempts, delay).await;
            None
        }
        Verdict::ErrorQueue(failure, attempts) => {
            settle::dead_letter(ep, delivery, failure, attempts).await;
            None
        }
        Verdict::Requeue(failure) => {
            tracing::debug!(endpoint = %ep.name, reason = %failure, "returning the message to its queue for later");
            settle::requeue_later(delivery).await;
            None
        }
    }
}

/// The endpoint's policy's decision. A policy that panics must not take the worker with it:
/// its message goes to the error queue, which keeps it.
fn decide(ep: &EndpointRuntime, failure: &Failure, made: Attempts) -> Decision {
    let policy = ep.config.policy_in_force();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| policy.decide(failure, made)))
        .unwrap_or_else(|_| {
            tracing::error!(endpoint = %ep.name, "the recoverability policy panicked; moving the message to the error queue");
            Decision::ErrorQueue
        })
}

/// Attempt until one succeeds or the policy says otherwise.
async fn attempts(
    ep: &EndpointRuntime,
    work: &mut Work<'_>,
    spare: &mut Option<MessageContext>,
) -> Verdict {
    let envelope = work.envelope;
    let headers = &envelope.headers;
    let delayed = headers.delayed_retries();
    // Attempts before this round: said by the envelope once it was retried with a delay.
    let before = match delayed {
        0 => 0,
        n => headers
            .get(header::ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| n.saturating_mul(ep.config.recoverability.attempts_per_round())),
    };
    let mut in_round = 0u32;
    loop {
        in_round = in_round.saturating_add(1);
        let number = before.saturating_add(in_round);
        let failure = match attempt::run(ep, work, number, spare).await {
            Ok(done) => return Verdict::Ack(done),
            Err(failure) if failure.requeue => return Verdict::Requeue(failure),
            Err(failure) => failure,
        };
        Counters::bump(&ep.runtime.counters.failed_attempts);
        tracing::warn!(
            endpoint = %ep.name,
            message_type = %headers.message_type,
            message_id = %headers.message_id,
            correlation_id = headers.correlation_id().unwrap_or(""),
            attempt = number,
            reason = failure.reason.as_str(),
            error = %failure.message,
            "handler attempt failed"
        );
        let made = Attempts::new(in_round, delayed, number);
        match decide(ep, &failure, made) {
            Decision::RetryNow => continue,
            Decision::RetryAfter(delay) => {
                return Verdict::RetryAfter {
                    delay,
                    round: delayed,
                    attempts: number,
                }
            }
            Decision::ErrorQueue => return Verdict::ErrorQueue(failure, number),
        }
    }
}

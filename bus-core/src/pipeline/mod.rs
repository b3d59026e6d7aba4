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
//!
//! Around it all, [`observe`]: a span per attempt, with the outcome recorded on it, and the
//! consumer-side metrics.

mod attempt;
mod catch_panic;
mod checks;
mod inbox;
mod observe;
mod release;
mod settle;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use crate::context::MessageContext;
use crate::endpoint::EndpointConfig;
use crate::envelope::{header, Envelope};
use crate::failure::Failure;
use crate::handler::{Decoded, HandlerDescriptor};
use crate::layer::Layer;
use crate::recoverability::{Attempts, Decision};
use crate::runtime::{Counters, NameMap, Runtime};
use crate::transport::Delivery;

use attempt::{Done, Work};
use observe::{Observer, Settle};
pub(crate) use settle::PendingAck;

/// The handlers of one message type at an endpoint.
pub(crate) struct Handlers {
    pub(crate) list: Vec<HandlerDescriptor>,
    /// What a delivery of the type is measured with, when the bus records metrics: found with
    /// the handlers, so that measuring costs no lookup of its own.
    #[cfg(feature = "opentelemetry")]
    pub(crate) attributes: Option<Box<[opentelemetry::KeyValue]>>,
}

/// One hosted endpoint, as its workers see it.
pub(crate) struct EndpointRuntime {
    pub(crate) name: Arc<str>,
    pub(crate) config: EndpointConfig,
    /// Handlers by message type.
    pub(crate) handlers: NameMap<Handlers>,
    pub(crate) runtime: Arc<Runtime>,
    /// The bus's layers, the endpoint's, and its inbox, outermost first.
    layers: Box<[Arc<dyn Layer>]>,
    /// What a delivery of a type it has no handler for is measured with.
    #[cfg(feature = "opentelemetry")]
    other_attributes: Option<Box<[opentelemetry::KeyValue]>>,
}

impl EndpointRuntime {
    pub(crate) fn new(
        name: &str,
        config: EndpointConfig,
        handlers: NameMap<Vec<HandlerDescriptor>>,
        runtime: Arc<Runtime>,
        bus_layers: &[Arc<dyn Layer>],
    ) -> Self {
        // What its deliveries are measured with, made once here when the bus records metrics.
        #[cfg(feature = "opentelemetry")]
        let attributes = |message_type: Option<&str>| {
            let telemetry = &runtime.telemetry;
            let system = telemetry.system();
            let set = || crate::telemetry::consumer_attributes(system, name, message_type);
            telemetry.metrics().map(|_| set())
        };
        let handlers = handlers
            .into_iter()
            .map(|(message_type, list)| {
                let entry = Handlers {
                    list,
                    #[cfg(feature = "opentelemetry")]
                    attributes: attributes(Some(&message_type)),
                };
                (message_type, entry)
            })
            .collect();
        #[cfg(feature = "opentelemetry")]
        let other_attributes = attributes(None);
        EndpointRuntime {
            name: Arc::from(name),
            layers: attempt::layers_of(bus_layers, &config),
            config,
            handlers,
            runtime,
            #[cfg(feature = "opentelemetry")]
            other_attributes,
        }
    }
}

/// What a delivery's handling came to. Small (failures boxed): it is handed up through the
/// stages on every delivery, and most deliveries are acked.
enum Verdict {
    Ack(Done),
    Unacked(Unacked),
}

/// A delivery's handling that did not end in an ack.
enum Unacked {
    RetryAfter {
        delay: Duration,
        round: u32,
        attempts: u32,
    },
    ErrorQueue(Box<Failure>, u32),
    /// Back to the queue for later, not counted as an attempt.
    Requeue(Box<Failure>),
}

impl From<Unacked> for Verdict {
    fn from(unacked: Unacked) -> Self {
        Verdict::Unacked(unacked)
    }
}

/// Everything that happens to one delivery. A handled one's ack is returned when the
/// transport has to wait for it (see [`PendingAck`]); every other outcome is settled here.
pub(crate) async fn handle(
    ep: &EndpointRuntime,
    delivery: Delivery,
    spare: &mut Option<MessageContext>,
) -> Option<PendingAck> {
    // A CloudEvent, MassTransit envelope or NServiceBus message is read as the bus message it
    // stands for; the delivery keeps what arrived, for the error queue and delayed retries
    // (read again on their way back).
    let (foreign, invalid) = match crate::cloudevents::incoming(delivery.envelope())
        .and_then(|m| crate::masstransit::incoming(&ep.runtime, delivery.envelope(), m))
        .and_then(|m| crate::nservicebus::incoming(&ep.runtime, delivery.envelope(), m))
    {
        Ok(mapped) => (mapped, None),
        Err(failure) => (None, Some(failure)),
    };
    let envelope = foreign.as_deref().unwrap_or(delivery.envelope());
    let routed = match invalid {
        Some(failure) => Err(failure),
        None => checks::route(ep, envelope),
    };
    let mut observer = Observer::new(ep, envelope, routed.as_ref().ok().map(|(h, _)| *h));
    // The checks, then the attempts, in this one future: each stage an `async fn` of its own
    // would cost a call per poll on every delivery.
    let verdict = {
        match routed {
            Err(failure) => refused(&mut observer, envelope, failure),
            Ok((Handlers { list: handlers, .. }, codec)) => {
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
                    Err(failure) => refused(&mut observer, envelope, failure),
                    Ok(()) => {
                        let mut work = Work {
                            handlers,
                            decoded,
                            envelope,
                            codec: codec.as_ref(),
                            redelivered: delivery.redelivered(),
                        };
                        attempts(ep, &mut work, spare, &mut observer).await
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
            observer.settled(Settle::Ack);
            settle::ack(ep, delivery)
        }
        Verdict::Unacked(unacked) => {
            // Boxed: the rare path stays out of the common one's future and code.
            Box::pin(settle_unacked(ep, delivery, unacked, observer)).await;
            None
        }
    }
}

/// A delivery the checks refused: one attempt, failed before any handler ran, and the error
/// queue.
fn refused(observer: &mut Observer<'_>, envelope: &Envelope, failure: Failure) -> Verdict {
    observer.begin(envelope, 1);
    observer.ended(Some(&failure));
    Unacked::ErrorQueue(Box::new(failure), 1).into()
}

/// Carry out a verdict other than an ack, inside the last attempt's span, and record it there.
async fn settle_unacked(
    ep: &EndpointRuntime,
    delivery: Delivery,
    unacked: Unacked,
    observer: Observer<'_>,
) {
    match unacked {
        Unacked::RetryAfter {
            delay,
            round,
            attempts,
        } => {
            let retry = settle::schedule_retry(ep, delivery, round, attempts, delay);
            let scheduled = observer.run(std::pin::pin!(retry)).await;
            observer.settled(match scheduled {
                true => Settle::DelayedRetry,
                false => Settle::Requeue,
            });
        }
        Unacked::ErrorQueue(failure, attempts) => {
            let moving = settle::dead_letter(ep, delivery, *failure, attempts);
            let moved = observer.run(std::pin::pin!(moving)).await;
            observer.settled(match moved {
                true => Settle::ErrorQueue,
                false => Settle::Requeue,
            });
        }
        Unacked::Requeue(failure) => {
            observer.in_scope(|| tracing::debug!(endpoint = %ep.name, reason = %failure, "returning the message to its queue for later"));
            observer.settled(Settle::Requeue);
            // The span ends here, not after the pause before the message goes back.
            drop(observer);
            settle::requeue_later(delivery).await;
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

/// Attempt until one succeeds or the policy says otherwise, each attempt observed.
async fn attempts(
    ep: &EndpointRuntime,
    work: &mut Work<'_>,
    spare: &mut Option<MessageContext>,
    observer: &mut Observer<'_>,
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
        observer.begin(envelope, number);
        let attempt = std::pin::pin!(attempt::run(ep, work, number, spare));
        let failure = match observer.run(attempt).await {
            Ok(done) => {
                observer.ended(None);
                return Verdict::Ack(done);
            }
            Err(failure) if failure.requeue => {
                observer.ended(None);
                return Unacked::Requeue(Box::new(failure)).into();
            }
            Err(failure) => failure,
        };
        observer.ended(Some(&failure));
        Counters::bump(&ep.runtime.counters.failed_attempts);
        observer.in_scope(|| {
            tracing::warn!(
                endpoint = %ep.name,
                message_type = %headers.message_type,
                message_id = %headers.message_id,
                correlation_id = headers.correlation_id().unwrap_or(""),
                attempt = number,
                reason = failure.reason.as_str(),
                error = %failure.message,
                "handler attempt failed"
            )
        });
        let made = Attempts::new(in_round, delayed, number);
        match decide(ep, &failure, made) {
            Decision::RetryNow => {
                observer.settled(Settle::Retry);
                continue;
            }
            Decision::RetryAfter(delay) => {
                return Unacked::RetryAfter {
                    delay,
                    round: delayed,
                    attempts: number,
                }
                .into()
            }
            Decision::ErrorQueue => return Unacked::ErrorQueue(Box::new(failure), number).into(),
        }
    }
}

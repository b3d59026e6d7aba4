//! The receive pipeline of an endpoint: take a delivery, check it, run its handlers with retries,
//! release their outgoing messages, then ack, schedule a delayed retry, or move it to the error
//! queue. [`classify`]-style decisions live in one place: [`handle_delivery`].

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::bus::{NameMap, Shared};
use crate::codec::Codec;
use crate::context::MessageContext;
use crate::endpoint::EndpointConfig;
use crate::envelope::{header, Body, Envelope, Headers};
use crate::error::TransportError;
use crate::failure::{Failure, FailureReason};
use crate::handler::{Decoded, HandlerDescriptor};
use crate::transport::{Delivery, Destination, Outgoing, Subscription};

/// A one-way signal (stop taking messages, abandon handlers) checked with one atomic load.
/// Waiting for it goes through a `CancellationToken`, whose own check takes a lock that every
/// worker thread and every sender would share.
#[derive(Clone, Default)]
pub(crate) struct Signal {
    fired: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Signal {
    /// Fire it; idempotent.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether it fired.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once it fired.
    fn fired(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

/// One hosted endpoint.
pub(crate) struct EndpointRuntime {
    pub(crate) name: Arc<str>,
    pub(crate) config: EndpointConfig,
    pub(crate) handlers: NameMap<Vec<HandlerDescriptor>>,
    pub(crate) shared: Arc<Shared>,
    /// Message ids being handled now (only tracked for endpoints with an inbox).
    pub(crate) in_flight: Mutex<HashSet<String>>,
}

/// A message id claimed as in flight at an endpoint, released on drop.
struct InFlight<'a> {
    ep: &'a EndpointRuntime,
    id: String,
}

impl<'a> InFlight<'a> {
    fn claim(ep: &'a EndpointRuntime, id: &str) -> Option<Self> {
        let mut set = ep.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id.to_string()).then(|| InFlight {
            ep,
            id: id.to_string(),
        })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ep
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Take deliveries with `concurrency` worker tasks, each handling one delivery at a time,
/// until `stop`. A handler still running when `abort` fires is dropped, and with it its
/// delivery, which the transport then redelivers.
///
/// Long-lived workers rather than a task per delivery: a spawn and two cross-task wake-ups per
/// message cost more than the in-memory transport's whole hand-over, and workers still spread
/// over the runtime's threads like spawned tasks do.
pub(crate) async fn consume(
    ep: Arc<EndpointRuntime>,
    sub: Box<dyn Subscription>,
    stop: Signal,
    abort: Signal,
    tracker: TaskTracker,
    running: Arc<AtomicUsize>,
) {
    running.fetch_add(1, Ordering::SeqCst);
    let concurrency = ep.config.concurrency.max(1);
    // One worker owns the subscription outright; several share it through its slot.
    let (workers, shared): (Vec<_>, _) = if concurrency == 1 {
        let worker = work_alone(ep.clone(), sub, stop.clone(), abort.clone());
        (vec![tracker.spawn(worker)], None)
    } else {
        let sub = Arc::new(SharedSubscription::new(sub));
        let workers = (0..concurrency)
            .map(|_| tracker.spawn(work(ep.clone(), sub.clone(), stop.clone(), abort.clone())))
            .collect();
        (workers, Some(sub))
    };
    let mut all_done = std::pin::pin!(futures_util::future::join_all(workers));
    let ended = tokio::select! {
        _ = stop.fired() => false,
        _ = &mut all_done => true,
    };
    running.fetch_sub(1, Ordering::SeqCst);
    tracing::debug!(endpoint = %ep.name, "stopped taking messages");
    if !ended {
        // Keep the subscription open until the in-flight handlers are done (or abandoned), so
        // their deliveries can still be acked on it. Workers give it back once `stop` fired;
        // a lone worker cancels it itself.
        let kept = match &shared {
            Some(shared) => {
                let mut sub = shared.once_back().await;
                sub.cancel().await;
                Some(sub)
            }
            None => None,
        };
        all_done.await;
        drop(kept);
    }
    drop(shared);
}

/// The only worker of an endpoint: it owns the subscription, so taking a delivery needs no
/// lock. Like [`work`] otherwise; it cancels the subscription itself when `stop` fires (at
/// once, while a handler that waits finishes) or when it ends.
async fn work_alone(
    ep: Arc<EndpointRuntime>,
    mut sub: Box<dyn Subscription>,
    stop: Signal,
    abort: Signal,
) {
    let mut spare = None;
    let mut cancelled = false;
    let mut settling = Settling::default();
    loop {
        if stop.is_fired() {
            break;
        }
        let next = match sub.next_now() {
            Some(delivery) => {
                // Nothing on this path waits: count it against the cooperative budget, so a
                // backlog cannot keep the worker from yielding.
                tokio::task::coop::consume_budget().await;
                Some(Ok(delivery))
            }
            None => {
                let waiting = std::pin::pin!(unless_cancelled(&stop, sub.next()));
                match settling.alongside(waiting).await {
                    Some(next) => next,
                    None => break,
                }
            }
        };
        let (go_on, pending) = {
            let taking = std::pin::pin!(take(&ep, next, &stop, &abort, &mut spare));
            let mut taking = std::pin::pin!(settling.alongside(taking));
            // Most deliveries are handled in their first poll. One that waits is watched for
            // `stop`: the subscription is then cancelled at once, as with shared workers (what
            // it took ahead goes back to the queue for other consumers), while the handler
            // finishes.
            match futures_util::poll!(taking.as_mut()) {
                Poll::Ready(taken) => taken,
                Poll::Pending => tokio::select! {
                    biased;
                    taken = taking.as_mut() => taken,
                    () = stop.fired() => {
                        let (taken, ()) =
                            futures_util::future::join(taking.as_mut(), sub.cancel()).await;
                        cancelled = true;
                        taken
                    }
                },
            }
        };
        settling.push(pending);
        if !go_on {
            break;
        }
    }
    if !cancelled {
        // The last delivery's ack may have just been pushed: keep it going while cancelling.
        let cancelling = std::pin::pin!(sub.cancel());
        settling.alongside(cancelling).await;
    }
    settling.finish(&abort).await;
}

/// A subscription shared by an endpoint's workers. It sits in its slot, where any worker
/// takes a ready delivery from it under a plain lock held for nanoseconds; a worker that finds
/// nothing ready takes it out of the slot to wait for the next delivery, and puts it back
/// after. Workers that find the slot empty meanwhile wait for it to come back.
///
/// Not an async lock held across the wait: a fair async lock hands itself to the next queued
/// worker on every release, so once workers queue on it (one brief collision is enough), each
/// delivery costs a wake-up of another thread, and the queue of workers never drains while
/// deliveries keep coming.
struct SharedSubscription {
    slot: Mutex<Option<Box<dyn Subscription>>>,
    /// Told when the subscription is back in its slot.
    back: tokio::sync::Notify,
}

/// What a worker found in the slot.
enum Found {
    /// A delivery ready at once.
    Ready(Delivery),
    /// Nothing ready: the subscription, taken out to wait on it.
    Taken(Box<dyn Subscription>),
    /// The slot was empty: another worker waits on the subscription.
    Away,
}

impl SharedSubscription {
    fn new(sub: Box<dyn Subscription>) -> Self {
        SharedSubscription {
            slot: Mutex::new(Some(sub)),
            back: tokio::sync::Notify::new(),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Box<dyn Subscription>>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready delivery, or the subscription itself when none is ready (unless `stop` fired:
    /// then nothing new is taken and the subscription stays).
    fn find(&self, stop: &Signal) -> Found {
        let mut slot = self.slot();
        let Some(sub) = slot.as_mut() else {
            return Found::Away;
        };
        if stop.is_fired() {
            return Found::Away;
        }
        match sub.next_now() {
            Some(delivery) => Found::Ready(delivery),
            None => slot.take().map_or(Found::Away, Found::Taken),
        }
    }

    /// Put the subscription back and tell one waiting worker.
    fn put_back(&self, sub: Box<dyn Subscription>) {
        *self.slot() = Some(sub);
        self.back.notify_one();
    }

    /// The subscription, taken out for good once it is back in its slot.
    async fn once_back(&self) -> Box<dyn Subscription> {
        loop {
            let back = self.back.notified();
            let mut back = std::pin::pin!(back);
            back.as_mut().enable();
            if let Some(sub) = self.slot().take() {
                return sub;
            }
            back.await;
        }
    }
}

/// A subscription taken out of its slot, put back when dropped (a wait that ended or was
/// cancelled).
struct TakenOut<'a> {
    shared: &'a SharedSubscription,
    sub: Option<Box<dyn Subscription>>,
}

impl Drop for TakenOut<'_> {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            self.shared.put_back(sub);
        }
    }
}

/// One worker: take a delivery, handle it, repeat, until `stop` (or the subscription ends).
async fn work(
    ep: Arc<EndpointRuntime>,
    shared: Arc<SharedSubscription>,
    stop: Signal,
    abort: Signal,
) {
    let mut spare = None;
    let mut settling = Settling::default();
    // Woken to take the subscription's turn: another worker may be waiting behind this one.
    let mut woken = false;
    loop {
        if stop.is_fired() {
            break;
        }
        // Most of the time the subscription is in its slot. When it is not, register for its
        // return, then look again (so a return right in between is not missed), then wait.
        // Registered only while waiting: a registration kept while the worker handles a
        // delivery would catch the wake-up meant for an idle worker.
        let found = match shared.find(&stop) {
            Found::Away => {
                let back = shared.back.notified();
                let mut back = std::pin::pin!(back);
                back.as_mut().enable();
                match shared.find(&stop) {
                    Found::Away => {
                        let back = std::pin::pin!(unless_cancelled(&stop, back));
                        if settling.alongside(back).await.is_none() {
                            break;
                        }
                        woken = true;
                        continue;
                    }
                    // Dropping the registration passes on a wake-up it caught meanwhile.
                    found => found,
                }
            }
            found => found,
        };
        let next = match found {
            Found::Ready(delivery) => {
                if std::mem::take(&mut woken) {
                    // More may be ready: pass the turn on while handling this one.
                    shared.back.notify_one();
                }
                // Nothing on this path waits (an in-process transport takes, hands out and
                // acks at once), so it must count against the task's cooperative budget
                // itself: a backlog must not keep the worker from ever yielding.
                tokio::task::coop::consume_budget().await;
                Some(Ok(delivery))
            }
            Found::Taken(sub) => {
                woken = false;
                let mut taken = TakenOut {
                    shared: &shared,
                    sub: Some(sub),
                };
                let Some(sub) = taken.sub.as_mut() else {
                    break;
                };
                let waiting = std::pin::pin!(unless_cancelled(&stop, sub.next()));
                match settling.alongside(waiting).await {
                    // Put back (and the turn passed on) before the delivery is handled.
                    Some(next) => next,
                    None => break,
                }
            }
            // Handled above.
            Found::Away => continue,
        };
        let (go_on, pending) = {
            let taking = std::pin::pin!(take(&ep, next, &stop, &abort, &mut spare));
            settling.alongside(taking).await
        };
        settling.push(pending);
        if !go_on {
            break;
        }
    }
    // A turn this worker was given is not lost with it: whoever waits for the subscription
    // (another worker, or the shutdown that cancels it) is told to look again.
    shared.back.notify_one();
    settling.finish(&abort).await;
}

/// What a worker does with what it took: handle a delivery, or pause after a receive error.
/// `false` when the worker should stop (the subscription ended, or `stop` fired in a pause);
/// with the delivery's ack when it is still on its way (see [`Settling`]).
async fn take(
    ep: &EndpointRuntime,
    next: Option<Result<Delivery, TransportError>>,
    stop: &Signal,
    abort: &Signal,
    spare: &mut Option<MessageContext>,
) -> (bool, Option<PendingAck>) {
    match next {
        None => (false, None),
        Some(Err(error)) => {
            tracing::warn!(endpoint = %ep.name, %error, "receive failed; retrying shortly");
            let pause = tokio::time::sleep(Duration::from_millis(200));
            (unless_cancelled(stop, pause).await.is_some(), None)
        }
        Some(Ok(delivery)) => {
            // Dropping the handler drops its delivery unsettled: redelivered.
            // Pinned in place: moving a future this size costs a copy per message.
            let handling = std::pin::pin!(handle_delivery(ep, delivery, spare));
            (true, unless_cancelled(abort, handling).await.flatten())
        }
    }
}

/// The ack of a handled delivery that the transport has to wait for (a broker's confirmation),
/// with what its failure is logged with.
pub(crate) struct PendingAck {
    ack: crate::BoxFuture<Result<(), TransportError>>,
    endpoint: Arc<str>,
    message_id: crate::MessageId,
}

impl Future for PendingAck {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match self.ack.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(error)) => {
                tracing::warn!(endpoint = %self.endpoint, message_id = %self.message_id, %error, "ack failed; the message may be redelivered");
                Poll::Ready(())
            }
        }
    }
}

/// A worker's acks still on their way. A transport whose ack has to wait (lapin writing the
/// AMQP frame, NATS JetStream's ack and its confirmation, Redis's `XACK`) would otherwise cost a
/// round trip per message before the worker takes the next one, even with one handler at a
/// time; instead the worker drives them alongside what it does next, and waits for the rest
/// before it ends (until the shutdown's abort). The delivery stays unsettled until its ack
/// completes, so it still counts against the prefetch, and one whose ack fails is redelivered
/// as before. A transport that acks at once (`Acker::ack_now`: in memory) never adds to it.
#[derive(Default)]
struct Settling {
    acks: futures_util::stream::FuturesUnordered<PendingAck>,
}

impl Settling {
    /// Keep an ack going; it is first polled (and so sent) by the worker's next poll of what it
    /// does next.
    fn push(&mut self, ack: Option<PendingAck>) {
        if let Some(ack) = ack {
            self.acks.push(ack);
        }
    }

    /// `work`, with the acks on their way driven each time it is polled. It takes the work
    /// pinned where it is, not by value: moving a future the size of a delivery's handling into
    /// another costs a copy per message.
    fn alongside<'a, F: Future>(
        &'a mut self,
        mut work: std::pin::Pin<&'a mut F>,
    ) -> impl Future<Output = F::Output> + 'a {
        std::future::poll_fn(move |cx| {
            if !self.acks.is_empty() {
                while let Poll::Ready(Some(())) = self.acks.poll_next_unpin(cx) {}
            }
            work.as_mut().poll(cx)
        })
    }

    /// Wait for the acks on their way, unless `abort` fires first. Each is polled at least
    /// once, so its request is on its way even then (dropped after that, the transport decides:
    /// the ack may still arrive, or the delivery is redelivered).
    async fn finish(&mut self, abort: &Signal) {
        if self.acks.is_empty() {
            return;
        }
        let acks = &mut self.acks;
        let mut aborted = std::pin::pin!(abort.fired());
        std::future::poll_fn(|cx| {
            loop {
                match acks.poll_next_unpin(cx) {
                    Poll::Ready(Some(())) => {}
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
            if abort.is_fired() {
                return Poll::Ready(());
            }
            aborted.as_mut().poll(cx)
        })
        .await;
    }
}

/// Run `work` unless `signal` fires first (or already did); `None` then, and `work` is dropped.
///
/// Like a biased `select!` on the signal, without registering a waiter on it for work that is
/// ready at once (the common case on a busy endpoint): that registration takes a lock.
async fn unless_cancelled<F: Future>(signal: &Signal, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    let mut cancelled = std::pin::pin!(signal.fired());
    std::future::poll_fn(|cx| {
        if signal.is_fired() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        cancelled.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Everything that happens to one delivery. A successful one's ack is returned when the
/// transport has to wait for it (see [`Settling`]); every other outcome is settled here.
pub(crate) async fn handle_delivery(
    ep: &EndpointRuntime,
    delivery: Delivery,
    spare: &mut Option<MessageContext>,
) -> Option<PendingAck> {
    // Only the headers are kept apart (they outlive the delivery in the logs below); the body
    // is read from the delivery in place: no clone of the envelope on the way through.
    let headers = delivery.envelope().headers.clone();

    // Checks that no retry can fix: straight to the error queue.
    if headers.message_id.is_empty() {
        let f = Failure::rejected(
            FailureReason::MissingHeader,
            "the message id header is missing",
        );
        dead_letter(ep, delivery, f, 1).await;
        return None;
    }
    if headers.message_type.is_empty() {
        let f = Failure::rejected(
            FailureReason::MissingHeader,
            "the message type header is missing",
        );
        dead_letter(ep, delivery, f, 1).await;
        return None;
    }
    let Some(handlers) = ep.handlers.get(headers.message_type.as_ref()) else {
        let f = Failure::rejected(
            FailureReason::UnknownMessageType,
            format!(
                "endpoint `{}` has no handler for message type `{}`",
                ep.name, headers.message_type
            ),
        );
        dead_letter(ep, delivery, f, 1).await;
        return None;
    };
    let codec: &Arc<dyn Codec> = match &delivery.envelope().body {
        Body::Message(_) => ep.shared.codecs.default_codec(),
        Body::Bytes(bytes) => {
            if bytes.len() > ep.shared.max_body_size {
                let f = Failure::rejected(
                    FailureReason::TooLarge,
                    format!(
                        "body of {} bytes exceeds the limit of {}",
                        bytes.len(),
                        ep.shared.max_body_size
                    ),
                );
                dead_letter(ep, delivery, f, 1).await;
                return None;
            }
            match ep.shared.codecs.get(&headers.content_type) {
                Some(c) => c,
                None => {
                    let f = Failure::rejected(
                        FailureReason::UnsupportedContentType,
                        format!("no codec for content type `{}`", headers.content_type),
                    );
                    dead_letter(ep, delivery, f, 1).await;
                    return None;
                }
            }
        }
    };
    // One handler is the common case: its slot lives on the stack, not in a Vec.
    let mut one = [None];
    let mut many = Vec::new();
    let decoded: &mut [Option<Decoded>] = if handlers.len() == 1 {
        &mut one
    } else {
        many.resize_with(handlers.len(), || None);
        &mut many
    };
    let builtin_json = ep.shared.codecs.is_builtin_json(codec);
    for (h, slot) in handlers.iter().zip(decoded.iter_mut()) {
        match h.decode(&delivery.envelope().body, codec.as_ref(), builtin_json) {
            Ok(value) => *slot = Some(value),
            Err(error) => {
                let f = Failure::rejected(FailureReason::Deserialization, error.to_string())
                    .with_handler(h.name());
                dead_letter(ep, delivery, f, 1).await;
                return None;
            }
        }
    }

    let _claim = match &ep.config.inbox {
        Some(_) => match InFlight::claim(ep, &headers.message_id) {
            Some(claim) => Some(claim),
            None => {
                // A copy of this message is being handled right now; once it is done the
                // inbox will know it, so return this one for later.
                requeue_later(delivery).await;
                return None;
            }
        },
        None => None,
    };
    if let Some(inbox) = &ep.config.inbox {
        match inbox.contains(&ep.name, &headers.message_id).await {
            Ok(true) => {
                ep.shared
                    .counters
                    .duplicates_skipped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(endpoint = %ep.name, message_id = %headers.message_id, "already handled; acking the duplicate");
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(endpoint = %ep.name, %error, "ack of a duplicate failed");
                }
                return None;
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(endpoint = %ep.name, %error, "inbox unavailable; returning the message to the queue");
                requeue_later(delivery).await;
                return None;
            }
        }
    }

    // Attempts: a round of immediate retries; after it, a delayed retry or the error queue.
    let policy = &ep.config.recoverability;
    let round = headers.delayed_retries();
    let per_round = policy.attempts_per_round();
    let mut made = 0;
    let mut failure = None;
    for i in 0..per_round {
        let attempt = round.saturating_mul(per_round).saturating_add(i + 1);
        made += 1;
        match run_attempt(
            ep,
            handlers,
            decoded,
            delivery.envelope(),
            codec.as_ref(),
            attempt,
            delivery.redelivered(),
            spare,
        )
        .await
        {
            Ok(()) => {
                ep.shared.counters.handled.fetch_add(1, Ordering::Relaxed);
                if let Some(inbox) = &ep.config.inbox {
                    if let Err(error) = inbox.record(&ep.name, &headers.message_id).await {
                        tracing::warn!(endpoint = %ep.name, message_id = %headers.message_id, %error, "could not record the message in the inbox; a redelivery would run again");
                    }
                }
                return match delivery.ack_or_pending() {
                    Ok(Ok(())) => None,
                    Ok(Err(error)) => {
                        tracing::warn!(endpoint = %ep.name, message_id = %headers.message_id, %error, "ack failed; the message may be redelivered");
                        None
                    }
                    Err(pending) => Some(PendingAck {
                        ack: pending,
                        endpoint: ep.name.clone(),
                        message_id: headers.message_id.clone(),
                    }),
                };
            }
            Err(f) => {
                ep.shared
                    .counters
                    .failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    endpoint = %ep.name,
                    message_type = %headers.message_type,
                    message_id = %headers.message_id,
                    correlation_id = headers.correlation_id().unwrap_or(""),
                    attempt,
                    reason = f.reason.as_str(),
                    error = %f.message,
                    "handler attempt failed"
                );
                let stop = f.unrecoverable;
                failure = Some(f);
                if stop {
                    break;
                }
            }
        }
    }
    let failure = failure.expect("a failed round records its failure");
    let total = round.saturating_mul(per_round).saturating_add(made);
    if !failure.unrecoverable && round < policy.delayed_retries {
        schedule_retry(ep, delivery, round, policy.delay_for(round)).await;
    } else {
        dead_letter(ep, delivery, failure, total).await;
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn run_attempt(
    ep: &EndpointRuntime,
    handlers: &[HandlerDescriptor],
    decoded: &mut [Option<Decoded>],
    envelope: &Envelope,
    codec: &dyn Codec,
    attempt: u32,
    redelivered: bool,
    spare: &mut Option<MessageContext>,
) -> Result<(), Failure> {
    let mut ctx = MessageContext::for_attempt(
        spare.take(),
        &ep.shared,
        &envelope.headers,
        &ep.name,
        attempt,
        redelivered,
    );
    let outcome = run_handlers(ep, handlers, decoded, envelope, codec, &ctx).await;
    // Closed either way: what a failed attempt staged is dropped, and a handler that kept
    // its context can stage nothing more.
    let outbox = ctx.take_outbox();
    *spare = Some(ctx);
    outcome?;
    if !outbox.is_empty() {
        ep.shared
            .transport
            .send_batch(outbox)
            .await
            .map_err(|e| Failure::dispatch(&e))?;
    }
    Ok(())
}

/// Run an attempt's handlers in order, each with a clone of `ctx`; the first failure ends it.
async fn run_handlers(
    ep: &EndpointRuntime,
    handlers: &[HandlerDescriptor],
    decoded: &mut [Option<Decoded>],
    envelope: &Envelope,
    codec: &dyn Codec,
    ctx: &MessageContext,
) -> Result<(), Failure> {
    for (h, slot) in handlers.iter().zip(decoded.iter_mut()) {
        let message = match slot.take() {
            Some(m) => m,
            None => h.decode(&envelope.body, codec, false).map_err(|e| {
                Failure::rejected(FailureReason::Deserialization, e.to_string())
                    .with_handler(h.name())
            })?,
        };
        let mut call =
            std::pin::pin!(
                AssertUnwindSafe(h.invoke(message, &envelope.body, ctx.clone())).catch_unwind()
            );
        // A handler done in its first poll (most are) needs neither a timer nor the clock; one
        // that waits is timed from then on. A limit too far away to express is no limit.
        let outcome = match futures_util::poll!(call.as_mut()) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => match ep
                .config
                .handler_timeout
                .and_then(|limit| Some((limit, tokio::time::Instant::now().checked_add(limit)?)))
            {
                Some((limit, deadline)) => match tokio::time::timeout_at(deadline, call).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(Failure::timeout(limit).with_handler(h.name())),
                },
                None => call.await,
            },
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(Failure::from_handler(&error).with_handler(h.name())),
            Err(panic) => return Err(Failure::panic(panic.as_ref()).with_handler(h.name())),
        }
    }
    Ok(())
}

/// Send the message back to the endpoint's own queue after `delay`, then ack the original.
async fn schedule_retry(ep: &EndpointRuntime, delivery: Delivery, round: u32, delay: Duration) {
    let envelope = delivery.envelope().clone();
    let mut headers: Headers = (*envelope.headers).clone();
    headers
        .custom
        .insert(header::DELAYED_RETRIES.to_string(), (round + 1).to_string());
    let out = Outgoing {
        destination: Destination::Endpoint(ep.name.to_string()),
        envelope: Envelope {
            headers: Arc::new(headers),
            body: envelope.body.clone(),
        },
        delay: Some(delay),
    };
    match ep.shared.transport.send(out).await {
        Ok(()) => {
            ep.shared
                .counters
                .delayed_retries
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(endpoint = %ep.name, message_id = %envelope.headers.message_id, retry = round + 1, ?delay, "delayed retry scheduled");
            if let Err(error) = delivery.ack().await {
                tracing::warn!(endpoint = %ep.name, %error, "ack after scheduling a retry failed; the message may be handled twice");
            }
        }
        Err(error) => {
            tracing::error!(endpoint = %ep.name, %error, "could not schedule a delayed retry; returning the message to the queue");
            requeue_later(delivery).await;
        }
    }
}

/// Move the message to the error queue with failure headers, body unchanged, then ack it.
/// If the error queue refuses it, the original is returned to its queue instead: never lost.
async fn dead_letter(ep: &EndpointRuntime, delivery: Delivery, failure: Failure, attempts: u32) {
    let envelope = delivery.envelope().clone();
    let mut headers: Headers = (*envelope.headers).clone();
    let body = match &envelope.body {
        Body::Bytes(b) => Body::Bytes(b.clone()),
        Body::Message(m) => {
            let codec = ep.shared.codecs.default_codec();
            match codec.encode(m.as_serialize()) {
                Ok(bytes) => {
                    headers.content_type = ep.shared.codecs.default_content_type();
                    Body::Bytes(bytes)
                }
                Err(_) => Body::Message(m.clone()),
            }
        }
    };
    let h = &mut headers.custom;
    h.insert(
        header::FAILURE_REASON.into(),
        failure.reason.as_str().into(),
    );
    h.insert(
        header::FAILURE_ERROR_TYPE.into(),
        failure.error_type.clone(),
    );
    h.insert(header::FAILURE_ERROR.into(), failure.message.clone());
    if let Some(handler) = &failure.handler {
        h.insert(header::FAILURE_HANDLER.into(), handler.clone());
    }
    h.insert(header::FAILURE_ENDPOINT.into(), ep.name.to_string());
    h.insert(header::FAILURE_ATTEMPTS.into(), attempts.to_string());
    h.insert(
        header::FAILURE_TIME.into(),
        humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    );
    let out = Outgoing {
        destination: Destination::ErrorQueue(ep.name.to_string()),
        envelope: Envelope {
            headers: Arc::new(headers),
            body,
        },
        delay: None,
    };
    match ep.shared.transport.send(out).await {
        Ok(()) => {
            ep.shared
                .counters
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                endpoint = %ep.name,
                message_type = %envelope.headers.message_type,
                message_id = %envelope.headers.message_id,
                correlation_id = envelope.headers.correlation_id().unwrap_or(""),
                reason = failure.reason.as_str(),
                error = %failure.message,
                attempts,
                "moved to the error queue"
            );
            if let Err(error) = delivery.ack().await {
                tracing::warn!(endpoint = %ep.name, %error, "ack after moving to the error queue failed; it may be there twice");
            }
        }
        Err(error) => {
            tracing::error!(endpoint = %ep.name, %error, "the error queue refused the message; returning it to its queue");
            requeue_later(delivery).await;
        }
    }
}

/// Nack after a pause, so a broken error queue does not turn into a hot loop.
async fn requeue_later(delivery: Delivery) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Err(error) = delivery.nack().await {
        tracing::warn!(%error, "nack failed; the transport will redeliver when the delivery expires");
    }
}

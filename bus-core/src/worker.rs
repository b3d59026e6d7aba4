//! The receive workers of an endpoint: each takes a delivery from the endpoint's subscription,
//! runs it through the [pipeline](crate::pipeline), and goes on to the next while the ack of
//! the last one is still on its way.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::task::TaskTracker;

use crate::context::MessageContext;
use crate::error::TransportError;
use crate::pipeline::{self, EndpointRuntime, PendingAck};
use crate::runtime::Signal;
use crate::transport::{Delivery, Subscription};

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
        let source = Source::Owned {
            sub,
            cancelled: false,
        };
        let worker = work(ep.clone(), source, stop.clone(), abort.clone());
        (vec![tracker.spawn(worker)], None)
    } else {
        let sub = Arc::new(SharedSubscription::new(sub));
        let workers = (0..concurrency)
            .map(|_| {
                let source = Source::Shared {
                    shared: sub.clone(),
                    woken: false,
                };
                tracker.spawn(work(ep.clone(), source, stop.clone(), abort.clone()))
            })
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

/// One worker: take a delivery, handle it, repeat, until `stop` (or the subscription ends).
async fn work(ep: Arc<EndpointRuntime>, mut source: Source, stop: Signal, abort: Signal) {
    let mut spare = None;
    let mut settling = Settling::default();
    loop {
        if stop.is_fired() {
            break;
        }
        let next = match source.next(&stop, &mut settling).await {
            Step::Take(next) => next,
            Step::Again => continue,
            Step::Stop => break,
        };
        let (go_on, pending) = {
            let taking = std::pin::pin!(handle_next(&ep, next, &stop, &abort, &mut spare));
            let mut taking = std::pin::pin!(settling.alongside(taking));
            // Most deliveries are handled in their first poll. A lone worker watches one that
            // waits for `stop`: it then cancels the subscription at once, as the shared
            // workers' endpoint does (what it took ahead goes back to the queue for other
            // consumers), while the handler finishes.
            match futures_util::poll!(taking.as_mut()) {
                Poll::Ready(taken) => taken,
                Poll::Pending => match &mut source {
                    Source::Owned { sub, cancelled } => tokio::select! {
                        biased;
                        taken = taking.as_mut() => taken,
                        () = stop.fired() => {
                            let (taken, ()) =
                                futures_util::future::join(taking.as_mut(), sub.cancel()).await;
                            *cancelled = true;
                            taken
                        }
                    },
                    Source::Shared { .. } => taking.await,
                },
            }
        };
        settling.push(pending);
        if !go_on {
            break;
        }
    }
    source.finish(&mut settling).await;
    settling.finish(&abort).await;
}

/// What a worker got from its source.
enum Step {
    /// A delivery, a receive error, or the end of the subscription (`None`).
    Take(Option<Result<Delivery, TransportError>>),
    /// Nothing yet: look again.
    Again,
    /// `stop` fired.
    Stop,
}

/// Where a worker takes its deliveries from.
enum Source {
    /// The endpoint's only worker owns the subscription: taking a delivery needs no lock.
    Owned {
        sub: Box<dyn Subscription>,
        /// The worker cancelled it already.
        cancelled: bool,
    },
    /// Several workers share it through its slot.
    Shared {
        shared: Arc<SharedSubscription>,
        /// Woken to take the subscription's turn: another worker may be waiting behind this one.
        woken: bool,
    },
}

impl Source {
    /// The next thing to take, with the acks on their way driven while it waits.
    async fn next(&mut self, stop: &Signal, settling: &mut Settling) -> Step {
        match self {
            Source::Owned { sub, .. } => match sub.next_now() {
                Some(delivery) => {
                    // Nothing on this path waits: count it against the cooperative budget, so
                    // a backlog cannot keep the worker from yielding.
                    tokio::task::coop::consume_budget().await;
                    Step::Take(Some(Ok(delivery)))
                }
                None => {
                    let waiting = std::pin::pin!(stop.unless(sub.next()));
                    match settling.alongside(waiting).await {
                        Some(next) => Step::Take(next),
                        None => Step::Stop,
                    }
                }
            },
            Source::Shared { shared, woken } => next_shared(shared, woken, stop, settling).await,
        }
    }

    /// The worker is done: a lone worker cancels its subscription (keeping its last ack going
    /// meanwhile); a shared one passes on a turn it was given, so whoever waits for the
    /// subscription (another worker, or the shutdown that cancels it) looks again.
    async fn finish(self, settling: &mut Settling) {
        match self {
            Source::Owned {
                mut sub,
                cancelled: false,
            } => {
                let cancelling = std::pin::pin!(sub.cancel());
                settling.alongside(cancelling).await;
            }
            Source::Owned { .. } => {}
            Source::Shared { shared, .. } => shared.back.notify_one(),
        }
    }
}

/// The next delivery of a shared subscription. Most of the time the subscription is in its
/// slot. When it is not, the worker registers for its return, then looks again (so a return
/// right in between is not missed), then waits. Registered only while waiting: a
/// registration kept while the worker handles a delivery would catch the wake-up meant for
/// an idle worker.
async fn next_shared(
    shared: &SharedSubscription,
    woken: &mut bool,
    stop: &Signal,
    settling: &mut Settling,
) -> Step {
    let found = match shared.find(stop) {
        Found::Away => {
            let back = shared.back.notified();
            let mut back = std::pin::pin!(back);
            back.as_mut().enable();
            match shared.find(stop) {
                Found::Away => {
                    let back = std::pin::pin!(stop.unless(back));
                    if settling.alongside(back).await.is_none() {
                        return Step::Stop;
                    }
                    *woken = true;
                    return Step::Again;
                }
                // Dropping the registration passes on a wake-up it caught meanwhile.
                found => found,
            }
        }
        found => found,
    };
    match found {
        Found::Ready(delivery) => {
            if std::mem::take(woken) {
                // More may be ready: pass the turn on while handling this one.
                shared.back.notify_one();
            }
            // Nothing on this path waits (an in-process transport takes, hands out and acks
            // at once), so it must count against the task's cooperative budget itself: a
            // backlog must not keep the worker from ever yielding.
            tokio::task::coop::consume_budget().await;
            Step::Take(Some(Ok(delivery)))
        }
        Found::Taken(sub) => {
            *woken = false;
            let mut taken = TakenOut {
                shared,
                sub: Some(sub),
            };
            let Some(sub) = taken.sub.as_mut() else {
                return Step::Stop;
            };
            let waiting = std::pin::pin!(stop.unless(sub.next()));
            match settling.alongside(waiting).await {
                // Put back (and the turn passed on) before the delivery is handled.
                Some(next) => Step::Take(next),
                None => Step::Stop,
            }
        }
        Found::Away => Step::Again,
    }
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

/// What a worker does with what it took: handle a delivery, or pause after a receive error.
/// `false` when the worker should stop (the subscription ended, or `stop` fired in a pause);
/// with the delivery's ack when it is still on its way (see [`Settling`]).
async fn handle_next(
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
            (stop.unless(pause).await.is_some(), None)
        }
        Some(Ok(delivery)) => {
            // Dropping the handling drops its delivery unsettled: redelivered.
            // Pinned in place: moving a future this size costs a copy per message.
            let handling = std::pin::pin!(pipeline::handle(ep, delivery, spare));
            (true, abort.unless(handling).await.flatten())
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

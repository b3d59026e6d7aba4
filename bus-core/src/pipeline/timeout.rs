//! The handler-timeout stage: a handler attempt that runs past the endpoint's
//! `handler_timeout` is dropped and fails with reason `timeout`.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// Run `call` within `limit`, timed from its first wait: a call done in its first poll (most
/// are) needs neither a timer nor the clock. `None` when it ran out of time. A limit too far
/// away to express is no limit. The call is polled where it is pinned: moving a future of
/// this size costs a copy per message.
pub(super) async fn within<F: Future>(
    limit: Option<Duration>,
    mut call: Pin<&mut F>,
) -> Option<F::Output> {
    match futures_util::poll!(call.as_mut()) {
        Poll::Ready(outcome) => Some(outcome),
        Poll::Pending => {
            match limit.and_then(|limit| tokio::time::Instant::now().checked_add(limit)) {
                Some(deadline) => tokio::time::timeout_at(deadline, call).await.ok(),
                None => Some(call.await),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_that_waits_past_the_limit_times_out_and_one_done_at_once_never_does() {
        let slow = std::pin::pin!(tokio::time::sleep(Duration::from_secs(5)));
        assert_eq!(within(Some(Duration::from_secs(1)), slow).await, None);
        let quick = std::pin::pin!(async { 7 });
        assert_eq!(within(Some(Duration::ZERO), quick).await, Some(7));
        let unbounded = std::pin::pin!(tokio::time::sleep(Duration::from_secs(5)));
        assert_eq!(within(None, unbounded).await, Some(()));
        let far = std::pin::pin!(tokio::time::sleep(Duration::from_secs(5)));
        assert_eq!(within(Some(Duration::MAX), far).await, Some(()));
    }
}

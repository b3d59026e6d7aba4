//! Request/response: a command sent with the caller's reply address, answered on it.
//!
//! Each bus instance opens one reply address on its transport the first time it makes a
//! request ([`crate::Transport::open_replies`]): an in-process queue, an exclusive RabbitMQ
//! queue, a NATS subject, a Redis stream. A request carries the address in
//! [`header::REPLY_TO`]; the handler's answer goes there with [`header::IN_REPLY_TO`] set to
//! the request's message id, which is how the waiting caller is found. One task per instance
//! reads the address and hands each reply to its caller; a reply nobody waits for any more
//! (its caller timed out or went away) is dropped with a log line.
//!
//! A handler that fails for good (its message goes to the error queue) answers its caller
//! with the failure: the reply then carries the error queue's failure headers and no body, so
//! the caller gets [`BusError::RequestFailed`] at once instead of waiting for its timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::envelope::{header, Body, Envelope, Headers, MessageId};
use crate::error::{BusError, CodecError};
use crate::failure::FailureReason;
use crate::message::Request;
use crate::outgoing::SendOptions;
use crate::runtime::{NameMap, Runtime};
use crate::transport::{Destination, Outgoing, Subscription, Transport};

/// How long [`crate::Bus::request`] waits for an answer unless told otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of one request: how long to wait for the answer, and the options of the request
/// message itself.
///
/// ```
/// use std::time::Duration;
/// use bus_core::RequestOptions;
/// let options = RequestOptions::timeout(Duration::from_secs(2)).header("tenant", "acme");
/// # drop(options);
/// ```
#[derive(Clone, Debug)]
pub struct RequestOptions {
    timeout: Duration,
    send: SendOptions,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            timeout: DEFAULT_REQUEST_TIMEOUT,
            send: SendOptions::default(),
        }
    }
}

impl RequestOptions {
    /// Wait at most `timeout` for the answer.
    pub fn timeout(timeout: Duration) -> Self {
        RequestOptions {
            timeout,
            ..RequestOptions::default()
        }
    }

    /// Send the request with these options (ids, headers).
    pub fn send_options(mut self, send: SendOptions) -> Self {
        self.send = send;
        self
    }

    /// Add a custom header to the request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.send = self.send.header(name, value);
        self
    }

    /// How long the caller waits.
    pub fn wait(&self) -> Duration {
        self.timeout
    }
}

/// The callers waiting for an answer, by the message id of their request.
type Waiting = Mutex<NameMap<oneshot::Sender<Envelope>>>;

/// This instance's reply address and the callers waiting on it.
pub(crate) struct Replies {
    instance: String,
    address: OnceCell<Arc<str>>,
    waiting: Arc<Waiting>,
    stop: CancellationToken,
}

impl Replies {
    pub(crate) fn new() -> Self {
        let id = crate::outgoing::new_message_id(SystemTime::now());
        Replies {
            instance: id.to_string(),
            address: OnceCell::new(),
            waiting: Arc::default(),
            stop: CancellationToken::new(),
        }
    }

    /// The reply address, opened (with its reader) the first time it is asked for.
    async fn address(&self, transport: &Arc<dyn Transport>) -> Result<Arc<str>, BusError> {
        let address = self
            .address
            .get_or_try_init(|| async {
                let channel = transport.open_replies(&self.instance).await?;
                tracing::debug!(address = %channel.address, "reply address opened");
                tokio::spawn(read_replies(
                    channel.replies,
                    self.waiting.clone(),
                    self.stop.clone(),
                ));
                Ok::<_, BusError>(Arc::from(channel.address))
            })
            .await?;
        Ok(address.clone())
    }

    /// Stop reading replies (the bus shuts down); callers still waiting time out.
    pub(crate) fn close(&self) {
        self.stop.cancel();
    }
}

/// Hand each reply to its caller until stopped or the transport closes the channel.
async fn read_replies(
    mut replies: Box<dyn Subscription>,
    waiting: Arc<Waiting>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = replies.next() => next,
        };
        let delivery = match next {
            None => break,
            Some(Err(error)) => {
                tracing::warn!(%error, "reading replies failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Some(Ok(delivery)) => delivery,
        };
        let envelope = delivery.envelope().clone();
        if let Err(error) = delivery.ack().await {
            tracing::debug!(%error, "settling a reply failed");
        }
        let Some(request) = envelope.headers.get(header::IN_REPLY_TO) else {
            tracing::warn!(message_id = %envelope.headers.message_id, "a message without `bus-in-reply-to` reached the reply address; dropped");
            continue;
        };
        let caller = waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(request);
        match caller {
            Some(caller) => {
                let _ = caller.send(envelope);
            }
            None => tracing::info!(
                request = %request,
                message_type = %envelope.headers.message_type,
                "a reply arrived after its caller stopped waiting; dropped"
            ),
        }
    }
    replies.cancel().await;
}

/// Forgets a waiting caller when its request ends, however it ends (answered, timed out,
/// failed to send, or the caller's future dropped).
struct Waiter<'a> {
    waiting: &'a Waiting,
    id: MessageId,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.id.as_str());
    }
}

impl Runtime {
    /// Send `request` and wait for its answer: from the bus (`parent` none) or from a handler
    /// (the request then carries the handler's message's ids).
    pub(crate) async fn request<R: Request>(
        &self,
        request: R,
        parent: Option<&Headers>,
        options: RequestOptions,
    ) -> Result<R::Response, BusError> {
        let address = self.replies.address(&self.transport).await?;
        let destination = self.route::<R>()?;
        let endpoint = match &destination {
            Destination::Endpoint(e) => e.to_string(),
            other => other.to_string(),
        };
        let send = options.send.header(header::REPLY_TO, &*address);
        let out = self.outgoing(request, destination, parent, send)?;
        let id = out.envelope.headers.message_id.clone();
        let (tx, rx) = oneshot::channel();
        self.replies
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), tx);
        let _waiter = Waiter {
            waiting: &self.replies.waiting,
            id,
        };
        self.dispatch(out).await?;
        let reply = match tokio::time::timeout(options.timeout, rx).await {
            Ok(Ok(reply)) => reply,
            // The reader stopped: the bus is shutting down.
            Ok(Err(_)) => return Err(BusError::ShutDown),
            Err(_) => {
                return Err(BusError::RequestTimeout {
                    request: R::NAME.to_string(),
                    endpoint,
                    timeout: options.timeout,
                })
            }
        };
        self.read_reply::<R>(&reply, endpoint)
    }

    /// The answer in a reply, or the failure it reports.
    fn read_reply<R: Request>(
        &self,
        reply: &Envelope,
        endpoint: String,
    ) -> Result<R::Response, BusError> {
        let headers = &reply.headers;
        if let Some(reason) = headers.get(header::FAILURE_REASON) {
            return Err(BusError::RequestFailed {
                request: R::NAME.to_string(),
                endpoint,
                reason: FailureReason::parse(reason),
                error_type: headers
                    .get(header::FAILURE_ERROR_TYPE)
                    .unwrap_or_default()
                    .to_string(),
                error: headers
                    .get(header::FAILURE_ERROR)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        let Body::Bytes(bytes) = &reply.body else {
            return Err(
                CodecError::Decode("a reply carries bytes, not a typed value".into()).into(),
            );
        };
        let codec = self
            .codecs
            .get(&headers.content_type)
            .ok_or_else(|| CodecError::UnsupportedContentType(headers.content_type.to_string()))?;
        Ok(crate::codec::decode::<R::Response>(codec.as_ref(), bytes)?)
    }

    /// The reply to the message with `headers`, answering it with `response`; `None` when the
    /// message asked for no reply.
    pub(crate) fn reply_to<T: serde::Serialize>(
        &self,
        headers: &Headers,
        response: &T,
    ) -> Result<Option<Outgoing>, BusError> {
        let Some(address) = headers.get(header::REPLY_TO) else {
            return Ok(None);
        };
        let bytes = self.codecs.default_codec().encode(response)?;
        let mut reply = self.reply_headers(headers);
        reply.content_type = self.codecs.default_content_type();
        Ok(Some(Outgoing::new(
            Destination::Reply(Arc::from(address)),
            Envelope::from_bytes(reply, bytes),
        )))
    }

    /// The reply telling the caller of the message with `headers` that it failed for good:
    /// the failure headers of `failed` (as written for the error queue), and no body.
    pub(crate) fn failure_reply(&self, headers: &Headers, failed: &Headers) -> Option<Outgoing> {
        let address = headers.get(header::REPLY_TO)?;
        let mut reply = self.reply_headers(headers);
        for name in [
            header::FAILURE_REASON,
            header::FAILURE_ERROR_TYPE,
            header::FAILURE_ERROR,
            header::FAILURE_HANDLER,
            header::FAILURE_ENDPOINT,
            header::FAILURE_ATTEMPTS,
        ] {
            if let Some(value) = failed.get(name) {
                reply.custom.insert(name.to_string(), value.to_string());
            }
        }
        Some(Outgoing::new(
            Destination::Reply(Arc::from(address)),
            Envelope::from_bytes(reply, ""),
        ))
    }

    /// The headers of a reply to the message with `headers`: a message of its conversation,
    /// typed `<request type>:reply`, saying which request it answers.
    fn reply_headers(&self, headers: &Headers) -> Headers {
        let mut reply = crate::outgoing::new_headers(
            "",
            self.codecs.default_content_type(),
            Some(headers),
            SendOptions::default(),
        );
        reply.message_type = format!("{}:reply", headers.message_type).into();
        reply.custom.insert(
            header::IN_REPLY_TO.to_string(),
            headers.message_id.to_string(),
        );
        reply
    }
}

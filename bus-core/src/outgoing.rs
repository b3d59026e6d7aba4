//! Outgoing messages: per-message [`SendOptions`], the headers a new message gets (ids
//! inherited from the message being handled), new message ids, and the body encoded once for
//! the transport.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::codec::Codec;
use crate::envelope::{header, Body, Envelope, Headers, MessageId};
use crate::error::{BusError, CodecError};
use crate::message::{AnyMessage, Command, Message, MessageKind};
use crate::runtime::Runtime;
use crate::transport::{Destination, Outgoing};

/// Per-message options for [`crate::Bus::send_with`], [`crate::Bus::publish_with`] and their context twins.
///
/// ```
/// use bus_core::SendOptions;
/// let options = SendOptions::new().correlation_id("order-42").header("tenant", "acme");
/// # drop(options);
/// ```
///
/// Scheduling: a message sent with [`SendOptions::deliver_after`] or
/// [`SendOptions::deliver_at`] reaches its handlers no sooner than that. On a broker it waits
/// there, so it survives a restart of the sender and of the broker; it is delivered by any
/// running bus (one that hosts an endpoint takes due messages from the broker), and can be
/// cancelled before it is due with [`crate::Bus::cancel_scheduled`] where the transport can
/// (`docs/scheduling.md` says which can, and how precise each is).
///
/// ```
/// use std::time::Duration;
/// use bus_core::SendOptions;
/// let reminder = SendOptions::new()
///     .message_id("reminder-order-42") // to cancel it later by this id
///     .deliver_after(Duration::from_secs(30 * 60));
/// # drop(reminder);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    message_id: Option<String>,
    correlation_id: Option<String>,
    headers: BTreeMap<String, String>,
    deliver_at: Option<SystemTime>,
}

impl SendOptions {
    /// No options.
    pub fn new() -> Self {
        SendOptions::default()
    }

    /// Use this message id instead of a new UUIDv7 (e.g. to make a retried send idempotent).
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Set the correlation id (otherwise inherited from the handled message, or the message id).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Add a custom header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Deliver the message no sooner than `delay` from now (a scheduled message).
    pub fn deliver_after(self, delay: Duration) -> Self {
        self.deliver_at(SystemTime::now() + delay)
    }

    /// Deliver the message no sooner than `at` (a scheduled message); a time already past
    /// delivers it at once.
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.deliver_at = Some(at);
        self
    }

    /// When the message is to be delivered, if it is scheduled.
    pub fn scheduled_at(&self) -> Option<SystemTime> {
        self.deliver_at
    }
}

impl Runtime {
    /// The destination of event `name`: its shared name when the binary declares it.
    pub(crate) fn event(&self, name: &str) -> Destination {
        Destination::Event(match self.names.get(name) {
            Some(shared) => shared.clone(),
            None => Arc::from(name),
        })
    }

    pub(crate) fn route<C: Command>(&self) -> Result<Destination, BusError> {
        self.routes
            .get(C::NAME)
            .map(|e| Destination::Endpoint(e.clone()))
            .ok_or_else(|| BusError::NoRoute(C::NAME.to_string()))
    }

    pub(crate) fn body_of<M: Message>(
        &self,
        message: M,
    ) -> Result<(Body, Cow<'static, str>), BusError> {
        if self.typed {
            return Ok((
                Body::Message(Arc::new(message)),
                self.codecs.default_content_type(),
            ));
        }
        let default = self.codecs.default_codec();
        let codec: &dyn Codec = default.as_ref();
        let bytes = if self.codecs.is_builtin_json(default) {
            crate::codec::encode_json(&message)?
        } else {
            codec.encode(&message)?
        };
        self.check_size(bytes.len())?;
        Ok((Body::Bytes(bytes), self.codecs.default_content_type()))
    }

    /// The message in the foreign formats the bus is configured to send it in (NServiceBus
    /// headers, a MassTransit envelope, a CloudEvent); as it is when none applies.
    fn in_foreign_formats(
        &self,
        destination: &Destination,
        headers: Headers,
        body: Body,
    ) -> Result<(Headers, Body), BusError> {
        let headers = crate::nservicebus::apply(self, destination, headers);
        let (headers, body) = crate::masstransit::apply(self, destination, headers, body)?;
        match &self.cloudevents {
            None => Ok((headers, body)),
            Some(rules) => {
                let (rules, binding) = &**rules;
                Ok(rules.apply(destination, *binding, headers, body, &self.codecs)?)
            }
        }
    }

    fn check_size(&self, size: usize) -> Result<(), CodecError> {
        if size > self.max_body_size {
            return Err(CodecError::TooLarge {
                size,
                limit: self.max_body_size,
            });
        }
        Ok(())
    }

    /// Wrap a message in an envelope, inheriting ids from the message being handled.
    pub(crate) fn outgoing<M: Message>(
        &self,
        message: M,
        destination: Destination,
        parent: Option<&Headers>,
        options: SendOptions,
    ) -> Result<Outgoing, BusError> {
        let (body, content_type) = self.body_of(message)?;
        let deliver_at = options.deliver_at;
        let headers = new_headers(M::NAME, content_type, parent, options);
        let (headers, body) = self.in_foreign_formats(&destination, headers, body)?;
        Ok(Outgoing {
            destination,
            envelope: Envelope {
                headers: Arc::new(headers),
                body,
            },
            delay: None,
            deliver_at,
        })
    }

    /// Wrap a message whose type is known only at run time, routed by its kind.
    pub(crate) fn outgoing_any(
        &self,
        message: &dyn AnyMessage,
        options: SendOptions,
    ) -> Result<Outgoing, BusError> {
        let name = message.message_name();
        let destination = match message.message_kind() {
            MessageKind::Command => Destination::Endpoint(
                self.routes
                    .get(name)
                    .cloned()
                    .ok_or_else(|| BusError::NoRoute(name.to_string()))?,
            ),
            MessageKind::Event => self.event(name),
        };
        let body = if self.typed {
            Body::Message(Arc::from(message.clone_message()))
        } else {
            let bytes = self.codecs.default_codec().encode(message.as_serialize())?;
            self.check_size(bytes.len())?;
            Body::Bytes(bytes)
        };
        let deliver_at = options.deliver_at;
        let headers = new_headers(name, self.codecs.default_content_type(), None, options);
        let (headers, body) = self.in_foreign_formats(&destination, headers, body)?;
        Ok(Outgoing {
            destination,
            envelope: Envelope {
                headers: Arc::new(headers),
                body,
            },
            delay: None,
            deliver_at,
        })
    }
}

pub(crate) fn new_headers(
    message_type: &'static str,
    content_type: Cow<'static, str>,
    parent: Option<&Headers>,
    options: SendOptions,
) -> Headers {
    let sent_at = SystemTime::now();
    let message_id = options
        .message_id
        .map_or_else(|| new_message_id(sent_at), MessageId::from);
    let mut custom = options.headers;
    // A root message starts its conversation and carries neither a correlation id (unless
    // given one) nor the conversation header: its message id is both (see
    // `Headers::correlation_id()` and `Headers::conversation_id()`). Nothing to build, encode or
    // parse for the most common message there is; what it causes carries both explicitly.
    let correlation_id = options
        .correlation_id
        .or_else(|| parent.and_then(|p| p.correlation_id()).map(str::to_string));
    if let Some(parent) = parent {
        if let Some(conversation) = parent.conversation_id() {
            custom.insert(
                header::CONVERSATION_ID.to_string(),
                conversation.to_string(),
            );
        }
        custom.insert(
            header::CAUSATION_ID.to_string(),
            parent.message_id.to_string(),
        );
    }
    Headers {
        message_id,
        message_type: Cow::Borrowed(message_type),
        content_type,
        correlation_id,
        sent_at: Some(sent_at),
        custom,
    }
}

/// A new message id: a UUIDv7 as text (48 bits of Unix milliseconds, 74 random bits).
///
/// Built with `uuid::Builder` from a thread-local random generator (`fastrand`), because
/// `Uuid::now_v7` takes a global lock and asks the OS for random bytes on every call, which
/// was the largest single cost of a send. Ids are ordered by time to the millisecond; within
/// one millisecond their order is random.
pub(crate) fn new_message_id(now: SystemTime) -> MessageId {
    let millis = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    MessageId::from(&*id.hyphenated().encode_lower(&mut buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A root message carries no correlation id (unless given one) and no conversation
    /// header; what it causes carries both, and the causation id, explicitly.
    #[test]
    fn a_root_carries_no_implied_ids_and_its_children_carry_them_all() {
        let root = new_headers(
            "t.Root",
            "application/json".into(),
            None,
            SendOptions::default(),
        );
        assert_eq!(root.correlation_id, None);
        assert!(root.custom.is_empty(), "{:?}", root.custom);
        assert_eq!(root.correlation_id(), Some(root.message_id.as_str()));
        assert_eq!(root.conversation_id(), Some(root.message_id.as_str()));

        let child = new_headers(
            "t.Child",
            "application/json".into(),
            Some(&root),
            SendOptions::default(),
        );
        let id = Some(root.message_id.to_string());
        assert_eq!(child.correlation_id, id);
        assert_eq!(child.get(header::CONVERSATION_ID), id.as_deref());
        assert_eq!(child.get(header::CAUSATION_ID), id.as_deref());

        let given = new_headers(
            "t.Root",
            "application/json".into(),
            None,
            SendOptions::new().correlation_id("order-7"),
        );
        assert_eq!(given.correlation_id.as_deref(), Some("order-7"));
        let grandchild = new_headers(
            "t.Child",
            "application/json".into(),
            Some(&child),
            SendOptions::default(),
        );
        assert_eq!(
            grandchild.correlation_id, id,
            "the root's, through its child"
        );
        assert_eq!(grandchild.get(header::CONVERSATION_ID), id.as_deref());
        assert_eq!(
            grandchild.get(header::CAUSATION_ID),
            Some(child.message_id.as_str())
        );
    }

    #[test]
    fn message_ids_are_unique_uuid_v7_with_the_send_time() {
        let now = SystemTime::now();
        let millis = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: HashSet<MessageId> = (0..10_000).map(|_| new_message_id(now)).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            let (secs, nanos) = uuid.get_timestamp().expect("v7 timestamp").to_unix();
            assert_eq!(secs * 1_000 + u64::from(nanos) / 1_000_000, millis, "{id}");
        }
    }
}

//! The checks a delivery passes before any attempt: the headers it needs, a handler for its
//! type at this endpoint, its size, a codec for its content type, and a body that decodes for
//! every handler. What fails here no retry can fix: it goes straight to the error queue.

use std::sync::Arc;

use super::{EndpointRuntime, Handlers};
use crate::codec::Codec;
use crate::envelope::{Body, Envelope};
use crate::failure::{Failure, FailureReason};
use crate::handler::{Decoded, HandlerDescriptor};

/// The handlers of the message's type at this endpoint, and the codec of its body.
pub(super) fn route<'e>(
    ep: &'e EndpointRuntime,
    envelope: &Envelope,
) -> Result<(&'e Handlers, &'e Arc<dyn Codec>), Failure> {
    let headers = &envelope.headers;
    if headers.message_id.is_empty() {
        return Err(Failure::rejected(
            FailureReason::MissingHeader,
            "the message id header is missing",
        ));
    }
    if headers.message_type.is_empty() {
        return Err(Failure::rejected(
            FailureReason::MissingHeader,
            "the message type header is missing",
        ));
    }
    let Some(handlers) = ep.handlers.get(headers.message_type.as_ref()) else {
        return Err(Failure::rejected(
            FailureReason::UnknownMessageType,
            format!(
                "endpoint `{}` has no handler for message type `{}`",
                ep.name, headers.message_type
            ),
        ));
    };
    let codecs = &ep.runtime.codecs;
    let codec = match &envelope.body {
        Body::Message(_) => codecs.default_codec(),
        Body::Bytes(bytes) => {
            let limit = ep.runtime.max_body_size;
            if bytes.len() > limit {
                return Err(Failure::rejected(
                    FailureReason::TooLarge,
                    format!("body of {} bytes exceeds the limit of {limit}", bytes.len()),
                ));
            }
            codecs.get(&headers.content_type).ok_or_else(|| {
                Failure::rejected(
                    FailureReason::UnsupportedContentType,
                    format!("no codec for content type `{}`", headers.content_type),
                )
            })?
        }
    };
    Ok((handlers, codec))
}

/// Decode the body for each handler into its slot.
pub(super) fn decode(
    ep: &EndpointRuntime,
    handlers: &[HandlerDescriptor],
    body: &Body,
    codec: &Arc<dyn Codec>,
    slots: &mut [Option<Decoded>],
) -> Result<(), Failure> {
    let builtin_json = ep.runtime.codecs.is_builtin_json(codec);
    for (h, slot) in handlers.iter().zip(slots.iter_mut()) {
        let value = h
            .decode(body, codec.as_ref(), builtin_json)
            .map_err(|error| {
                Failure::rejected(FailureReason::Deserialization, error.to_string())
                    .with_handler(h.name())
            })?;
        *slot = Some(value);
    }
    Ok(())
}

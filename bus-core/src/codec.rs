//! Codecs turn messages into body bytes and back, chosen by the envelope's content type.
//!
//! A codec works through `erased_serde`, so one object-safe trait serves typed decoding and the
//! typetag-driven dynamic decoding of [`decode_any`] alike: a new codec gets both for free.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::Deserializer;

use crate::envelope::{Body, Envelope};
use crate::error::CodecError;
use crate::message::{AnyMessage, Message};

/// The content type of the default codec.
pub const JSON: &str = "application/json";

/// A serialization format for message bodies.
///
/// Implement it to add a format (MessagePack, CBOR, ...) and register it with
/// [`crate::BusBuilder::codec`]; the content type header tells receivers which one to use.
pub trait Codec: Send + Sync + 'static {
    /// The content type written to outgoing envelopes, e.g. `application/json`.
    fn content_type(&self) -> &str;

    /// Serialize a value.
    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Bytes, CodecError>;

    /// Run `visit` with a deserializer over `body`, and check nothing is left after it.
    fn decode_with(
        &self,
        body: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), CodecError>;
}

/// The default codec: JSON through `serde_json`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn content_type(&self) -> &str {
        JSON
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Bytes, CodecError> {
        let mut out = Vec::with_capacity(128);
        let mut ser = serde_json::Serializer::new(&mut out);
        erased_serde::serialize(value, &mut ser).map_err(|e| CodecError::Encode(e.to_string()))?;
        Ok(Bytes::from(out))
    }

    fn decode_with(
        &self,
        body: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), CodecError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de))
            .map_err(|e| CodecError::Decode(e.to_string()))?;
        de.end().map_err(|e| CodecError::Decode(e.to_string()))
    }
}

/// Encode a message with a codec.
pub fn encode<M: Message>(codec: &dyn Codec, message: &M) -> Result<Bytes, CodecError> {
    codec.encode(message)
}

/// Encode with the built-in JSON codec, typed: the same bytes as [`JsonCodec::encode`] without
/// going through `erased_serde` (a virtual call per field).
pub(crate) fn encode_json<M: Message>(message: &M) -> Result<Bytes, CodecError> {
    let mut out = Vec::with_capacity(256);
    serde_json::to_writer(&mut out, message).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Decode with the built-in JSON codec, typed: what [`decode`] does with [`JsonCodec`] without
/// going through `erased_serde`.
pub(crate) fn decode_json<M: Message>(body: &[u8]) -> Result<M, CodecError> {
    serde_json::from_slice(body).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Decode a message (or any value, such as a reply) of a known type.
pub fn decode<M: serde::de::DeserializeOwned>(
    codec: &dyn Codec,
    body: &[u8],
) -> Result<M, CodecError> {
    let mut out = None;
    codec.decode_with(body, &mut |de| {
        out = Some(erased_serde::deserialize::<M>(de)?);
        Ok(())
    })?;
    out.ok_or_else(|| CodecError::Decode("the codec produced no value".into()))
}

/// The codecs a bus knows, by content type. JSON is always present.
#[derive(Clone)]
pub struct Codecs {
    default: Arc<dyn Codec>,
    by_type: HashMap<String, Arc<dyn Codec>>,
    /// The built-in JSON codec, recognised by identity so typed code can skip the type erasure.
    json: Arc<dyn Codec>,
    /// The default codec's content type, as every outgoing envelope carries it: borrowed (no
    /// allocation per message) for JSON.
    default_content_type: Cow<'static, str>,
}

impl Default for Codecs {
    fn default() -> Self {
        let json: Arc<dyn Codec> = Arc::new(JsonCodec);
        let mut by_type = HashMap::new();
        by_type.insert(JSON.to_string(), json.clone());
        Codecs {
            default: json.clone(),
            by_type,
            json,
            default_content_type: Cow::Borrowed(JSON),
        }
    }
}

impl Codecs {
    /// Add a codec; with `default`, outgoing messages use it.
    pub fn register(&mut self, codec: Arc<dyn Codec>, default: bool) {
        self.by_type
            .insert(codec.content_type().to_string(), codec.clone());
        if default {
            self.default_content_type = match codec.content_type() {
                JSON => Cow::Borrowed(JSON),
                other => Cow::Owned(other.to_string()),
            };
            self.default = codec;
        }
    }

    /// The content type of the codec for outgoing messages.
    pub(crate) fn default_content_type(&self) -> Cow<'static, str> {
        self.default_content_type.clone()
    }

    /// The codec for outgoing messages.
    pub fn default_codec(&self) -> &Arc<dyn Codec> {
        &self.default
    }

    /// Whether `codec` is the built-in [`JsonCodec`] (not a replacement registered for JSON).
    pub(crate) fn is_builtin_json(&self, codec: &Arc<dyn Codec>) -> bool {
        Arc::ptr_eq(codec, &self.json)
    }

    /// The codec for a content type. Parameters such as `; charset=utf-8` are ignored.
    pub fn get(&self, content_type: &str) -> Option<&Arc<dyn Codec>> {
        let bare = content_type.split(';').next().unwrap_or("").trim();
        self.by_type.get(bare)
    }
}

/// Decode any registered message from its wire name and body bytes, through typetag.
///
/// This is how tools handle messages whose type is only known at run time: error-queue
/// inspection, auditing, replay.
///
/// ```
/// use bus_core::{decode_any, Event, JsonCodec};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
/// #[event(name = "docs.Pinged")]
/// struct Pinged { n: u32 }
///
/// let msg = decode_any(&JsonCodec, "docs.Pinged", br#"{"n":7}"#).unwrap();
/// assert_eq!(msg.message_name(), "docs.Pinged");
/// assert_eq!(msg.downcast_ref::<Pinged>(), Some(&Pinged { n: 7 }));
/// assert!(decode_any(&JsonCodec, "docs.Unknown", b"{}").is_err());
/// ```
pub fn decode_any(
    codec: &dyn Codec,
    message_type: &str,
    body: &[u8],
) -> Result<Box<dyn AnyMessage>, CodecError> {
    let mut out = None;
    codec.decode_with(body, &mut |de| {
        let tagged = Tagged {
            name: message_type,
            value: Some(de),
        };
        out = Some(
            <Box<dyn AnyMessage> as serde::Deserialize>::deserialize(tagged).map_err(
                |e: erased_serde::Error| {
                    if e.to_string().contains("unknown variant") {
                        de::Error::custom(format!("unknown message type `{message_type}`"))
                    } else {
                        e
                    }
                },
            )?,
        );
        Ok(())
    })?;
    out.ok_or_else(|| CodecError::Decode("the codec produced no value".into()))
}

/// Decode an envelope as a message of type `M`, whatever its body form: the typed value
/// itself when the transport carried it in-process, else its bytes with the codec of its
/// content type. A message of another type is an error.
pub fn decode_envelope_as<M: Message>(
    codecs: &Codecs,
    envelope: &Envelope,
) -> Result<M, CodecError> {
    let headers = &envelope.headers;
    if headers.message_type != M::NAME {
        return Err(CodecError::Decode(format!(
            "the message is a `{}`, not a `{}`",
            headers.message_type,
            M::NAME
        )));
    }
    match &envelope.body {
        Body::Message(m) => m
            .downcast_ref::<M>()
            .cloned()
            .ok_or_else(|| CodecError::Decode(format!("the body is not a `{}`", M::NAME))),
        Body::Bytes(bytes) => {
            let codec = codecs.get(&headers.content_type).ok_or_else(|| {
                CodecError::UnsupportedContentType(headers.content_type.to_string())
            })?;
            decode::<M>(&**codec, bytes)
        }
    }
}

/// Decode an envelope into a message of run-time type, whatever its body form.
pub fn decode_envelope(
    codecs: &Codecs,
    envelope: &Envelope,
) -> Result<Box<dyn AnyMessage>, CodecError> {
    match &envelope.body {
        Body::Message(m) => Ok(m.clone_message()),
        Body::Bytes(bytes) => {
            let codec = codecs.get(&envelope.headers.content_type).ok_or_else(|| {
                CodecError::UnsupportedContentType(envelope.headers.content_type.to_string())
            })?;
            decode_any(codec.as_ref(), &envelope.headers.message_type, bytes)
        }
    }
}

/// Presents `(name, body)` as the one-entry map `{ name: body }` that typetag's externally
/// tagged representation expects, without copying the body.
struct Tagged<'a, D> {
    name: &'a str,
    value: Option<D>,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tagged<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> MapAccess<'de> for Tagged<'_, D> {
    type Error = D::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        if self.value.is_none() {
            return Ok(None);
        }
        seed.deserialize(self.name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        match self.value.take() {
            Some(de) => seed.deserialize(de),
            None => Err(de::Error::custom("value requested twice")),
        }
    }
}

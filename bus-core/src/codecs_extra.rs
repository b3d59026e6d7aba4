//! Binary codecs beside the default JSON one: MessagePack (feature `msgpack`) and CBOR
//! (feature `cbor`).
//!
//! Both are self-describing and encode structs as maps keyed by field name, so a consumer in
//! another language reads the same field names it would in JSON, and typetag's dynamic
//! decoding ([`crate::decode_any`]) works as it does with JSON. A receiver picks the codec by
//! the envelope's content type, so registering one (not as default) is enough to accept it
//! beside JSON.
//!
//! Nesting is limited to 128 levels, as `serde_json` limits it, so that a hostile body is an
//! error and not a stack overflow.

use bytes::Bytes;

use crate::codec::Codec;
use crate::error::CodecError;

/// How deeply arrays and maps may nest in a body: `serde_json`'s own limit, so no codec is
/// an easier way to exhaust a handler's stack than JSON.
const MAX_DEPTH: usize = 128;

/// The error for a body with bytes left after its value: one body is one message, and
/// anything after it means the sender and receiver disagree about the framing.
fn trailing(left: usize) -> CodecError {
    CodecError::Decode(format!("{left} trailing byte(s) after the value"))
}

#[cfg(feature = "msgpack")]
pub use msgpack::{MessagePackCodec, MSGPACK};

#[cfg(feature = "cbor")]
pub use cbor::{CborCodec, CBOR};

#[cfg(feature = "msgpack")]
mod msgpack {
    use super::*;

    /// The content type of [`MessagePackCodec`].
    pub const MSGPACK: &str = "application/msgpack";

    /// MessagePack through `rmp-serde` (feature `msgpack`), content type
    /// `application/msgpack`.
    ///
    /// Structs are written as maps with their field names (what `rmp_serde::to_vec_named`
    /// writes), not as positional arrays, so consumers in other languages see named fields
    /// and a field added to a message does not shift the others. Enums are externally tagged
    /// as in JSON: a unit variant is its name, any other variant a one-entry map from its
    /// name to its content. Positional arrays are still accepted when decoding.
    ///
    /// ```
    /// use bus_core::{decode, Bus, Codec, MessagePackCodec};
    ///
    /// // Outgoing messages are MessagePack; JSON bodies are still understood.
    /// let builder = Bus::builder().codec(MessagePackCodec, true);
    /// # drop(builder);
    ///
    /// let body = MessagePackCodec.encode(&("ada", 7u32)).unwrap();
    /// assert_eq!(decode::<(String, u32)>(&MessagePackCodec, &body).unwrap(), ("ada".into(), 7));
    /// ```
    #[derive(Clone, Copy, Debug, Default)]
    pub struct MessagePackCodec;

    impl Codec for MessagePackCodec {
        fn content_type(&self) -> &str {
            MSGPACK
        }

        fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Bytes, CodecError> {
            let mut out = Vec::with_capacity(128);
            let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
            erased_serde::serialize(value, &mut ser)
                .map_err(|e| CodecError::Encode(e.to_string()))?;
            Ok(Bytes::from(out))
        }

        fn decode_with(
            &self,
            body: &[u8],
            visit: &mut dyn FnMut(
                &mut dyn erased_serde::Deserializer<'_>,
            ) -> Result<(), erased_serde::Error>,
        ) -> Result<(), CodecError> {
            // A reader over a shrinking slice, not `from_read_ref`: what is left of the slice
            // afterwards is how trailing bytes are found, and its copies are bounded by what
            // the body holds, whatever length a corrupt header claims.
            let mut rest = body;
            let mut de = rmp_serde::Deserializer::new(&mut rest);
            de.set_max_depth(MAX_DEPTH);
            visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de))
                .map_err(|e| CodecError::Decode(e.to_string()))?;
            match de.get_ref().len() {
                0 => Ok(()),
                left => Err(trailing(left)),
            }
        }
    }
}

#[cfg(feature = "cbor")]
mod cbor {
    use std::fmt;

    use ciborium::value::Value;
    use serde::de::value::{MapDeserializer, SeqDeserializer};
    use serde::de::{self, IntoDeserializer, Visitor};

    use super::*;

    /// The content type of [`CborCodec`].
    pub const CBOR: &str = "application/cbor";

    /// CBOR (RFC 8949) through `ciborium` (feature `cbor`), content type `application/cbor`.
    ///
    /// Structs are written as maps keyed by field name, enums externally tagged as in JSON (a
    /// unit variant is its name, any other variant a one-entry map from its name to its
    /// content), `None` as null. Integers beyond 64 bits are bignums (tags 2 and 3).
    ///
    /// Decoding reads the body into a `ciborium` value first and deserializes the message
    /// from that: `ciborium` does not expose its streaming deserializer, which the
    /// object-safe [`Codec`] needs to hand out.
    ///
    /// ```
    /// use bus_core::{decode, Bus, CborCodec, Codec};
    ///
    /// // Receivers with CBOR registered accept it beside JSON; outgoing messages stay JSON.
    /// let builder = Bus::builder().codec(CborCodec, false);
    /// # drop(builder);
    ///
    /// let body = CborCodec.encode(&Some(-3i64)).unwrap();
    /// assert_eq!(decode::<Option<i64>>(&CborCodec, &body).unwrap(), Some(-3));
    /// ```
    #[derive(Clone, Copy, Debug, Default)]
    pub struct CborCodec;

    impl Codec for CborCodec {
        fn content_type(&self) -> &str {
            CBOR
        }

        fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Bytes, CodecError> {
            let mut out = Vec::with_capacity(128);
            ciborium::ser::into_writer(value, &mut out)
                .map_err(|e| CodecError::Encode(ser_error(e)))?;
            Ok(Bytes::from(out))
        }

        fn decode_with(
            &self,
            body: &[u8],
            visit: &mut dyn FnMut(
                &mut dyn erased_serde::Deserializer<'_>,
            ) -> Result<(), erased_serde::Error>,
        ) -> Result<(), CodecError> {
            let mut rest = body;
            let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_DEPTH)
                .map_err(|e| CodecError::Decode(de_error(e)))?;
            if !rest.is_empty() {
                return Err(trailing(rest.len()));
            }
            visit(&mut <dyn erased_serde::Deserializer>::erase(
                ValueDeserializer(&value),
            ))
            .map_err(|e| CodecError::Decode(e.to_string()))
        }
    }

    fn ser_error(e: ciborium::ser::Error<std::io::Error>) -> String {
        match e {
            ciborium::ser::Error::Io(e) => e.to_string(),
            ciborium::ser::Error::Value(msg) => msg,
        }
    }

    // ciborium's errors display as their `Debug` form; these read as sentences instead.
    fn de_error(e: ciborium::de::Error<std::io::Error>) -> String {
        use ciborium::de::Error;
        match e {
            Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                "the body ends in the middle of a CBOR value".into()
            }
            Error::Io(e) => e.to_string(),
            Error::Syntax(at) => format!("invalid CBOR at byte {at}"),
            Error::Semantic(Some(at), msg) => format!("{msg} (at byte {at})"),
            Error::Semantic(None, msg) => msg,
            Error::RecursionLimitExceeded => {
                format!("the body nests deeper than {MAX_DEPTH} levels")
            }
        }
    }

    /// An error deserializing a message from a decoded CBOR value.
    #[derive(Debug)]
    struct ValueError(String);

    impl fmt::Display for ValueError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for ValueError {}

    impl de::Error for ValueError {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            ValueError(msg.to_string())
        }
    }

    /// How a value reads in an "invalid type" error.
    fn unexpected(value: &Value) -> de::Unexpected<'_> {
        match value {
            Value::Integer(i) => match i64::try_from(*i) {
                Ok(i) => de::Unexpected::Signed(i),
                Err(_) => de::Unexpected::Other("a large integer"),
            },
            Value::Bytes(b) => de::Unexpected::Bytes(b),
            Value::Float(f) => de::Unexpected::Float(*f),
            Value::Text(s) => de::Unexpected::Str(s),
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Null => de::Unexpected::Unit,
            Value::Tag(..) => de::Unexpected::Other("a tagged value"),
            Value::Array(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
            _ => de::Unexpected::Other("an unknown CBOR item"),
        }
    }

    /// The value under any semantic tags (a date's tag 0, a URI's tag 32, ...), which say how
    /// to read the value but are not part of the serde data model.
    fn untagged(mut value: &Value) -> &Value {
        while let Value::Tag(tag, inner) = value {
            if is_bignum(*tag, inner) {
                break;
            }
            value = inner;
        }
        value
    }

    const BIGPOS: u64 = 2;
    const BIGNEG: u64 = 3;

    fn is_bignum(tag: u64, inner: &Value) -> bool {
        (tag == BIGPOS || tag == BIGNEG) && matches!(inner, Value::Bytes(_))
    }

    /// The magnitude of a bignum's big-endian bytes, if it fits in 128 bits.
    fn bignum(bytes: &[u8]) -> Option<u128> {
        let significant = &bytes[bytes.iter().take_while(|&&b| b == 0).count()..];
        if significant.len() > 16 {
            return None;
        }
        Some(
            significant
                .iter()
                .fold(0u128, |acc, &b| (acc << 8) | u128::from(b)),
        )
    }

    /// Deserializes from a decoded CBOR value, reading it as `ciborium` reads a body.
    #[derive(Clone, Copy)]
    struct ValueDeserializer<'de>(&'de Value);

    impl<'de> IntoDeserializer<'de, ValueError> for ValueDeserializer<'de> {
        type Deserializer = Self;

        fn into_deserializer(self) -> Self {
            self
        }
    }

    impl<'de> ValueDeserializer<'de> {
        fn visit_seq<V: Visitor<'de>>(
            items: &'de [Value],
            visitor: V,
        ) -> Result<V::Value, ValueError> {
            let mut seq = SeqDeserializer::new(items.iter().map(ValueDeserializer));
            let out = visitor.visit_seq(&mut seq)?;
            seq.end()?;
            Ok(out)
        }

        fn visit_map<V: Visitor<'de>>(
            entries: &'de [(Value, Value)],
            visitor: V,
        ) -> Result<V::Value, ValueError> {
            let mut map = MapDeserializer::new(
                entries
                    .iter()
                    .map(|(k, v)| (ValueDeserializer(k), ValueDeserializer(v))),
            );
            let out = visitor.visit_map(&mut map)?;
            map.end()?;
            Ok(out)
        }
    }

    impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
        type Error = ValueError;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            match untagged(self.0) {
                Value::Integer(i) => {
                    let i = i128::from(*i);
                    if let Ok(u) = u64::try_from(i) {
                        visitor.visit_u64(u)
                    } else if let Ok(s) = i64::try_from(i) {
                        visitor.visit_i64(s)
                    } else {
                        visitor.visit_i128(i)
                    }
                }
                Value::Tag(tag, inner) => {
                    let Value::Bytes(bytes) = &**inner else {
                        unreachable!("`untagged` stops only at bignums")
                    };
                    let magnitude = bignum(bytes)
                        .ok_or_else(|| de::Error::custom("integer wider than 128 bits"))?;
                    if *tag == BIGPOS {
                        visitor.visit_u128(magnitude)
                    } else {
                        // A negative bignum n stands for -1 - n.
                        let n = i128::try_from(magnitude)
                            .map_err(|_| de::Error::custom("integer wider than 128 bits"))?;
                        visitor.visit_i128(-1 - n)
                    }
                }
                Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
                Value::Float(f) => visitor.visit_f64(*f),
                Value::Text(s) => visitor.visit_borrowed_str(s),
                Value::Bool(b) => visitor.visit_bool(*b),
                Value::Null => visitor.visit_unit(),
                Value::Array(items) => Self::visit_seq(items, visitor),
                Value::Map(entries) => Self::visit_map(entries, visitor),
                other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            match untagged(self.0) {
                Value::Null => visitor.visit_none(),
                _ => visitor.visit_some(self),
            }
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, ValueError> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, ValueError> {
            match untagged(self.0) {
                Value::Text(name) => visitor.visit_enum(name.as_str().into_deserializer()),
                Value::Map(entries) if entries.len() == 1 => visitor.visit_enum(Variant {
                    name: &entries[0].0,
                    content: &entries[0].1,
                }),
                other => Err(de::Error::invalid_type(
                    unexpected(other),
                    &"a variant name, or a map from a variant name to its content",
                )),
            }
        }

        fn is_human_readable(&self) -> bool {
            // What ciborium's serializer says, so types with two forms (UUIDs, addresses)
            // read back the form they were written in.
            false
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
            ignored_any
        }
    }

    /// A non-unit enum variant: the one entry of a map, from the variant's name to its content.
    struct Variant<'de> {
        name: &'de Value,
        content: &'de Value,
    }

    impl<'de> de::EnumAccess<'de> for Variant<'de> {
        type Error = ValueError;
        type Variant = ValueDeserializer<'de>;

        fn variant_seed<S: de::DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<(S::Value, Self::Variant), ValueError> {
            let name = seed.deserialize(ValueDeserializer(self.name))?;
            Ok((name, ValueDeserializer(self.content)))
        }
    }

    impl<'de> de::VariantAccess<'de> for ValueDeserializer<'de> {
        type Error = ValueError;

        fn unit_variant(self) -> Result<(), ValueError> {
            match untagged(self.0) {
                Value::Null => Ok(()),
                other => Err(de::Error::invalid_type(
                    unexpected(other),
                    &"a unit variant",
                )),
            }
        }

        fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<S::Value, ValueError> {
            seed.deserialize(self)
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            _len: usize,
            visitor: V,
        ) -> Result<V::Value, ValueError> {
            de::Deserializer::deserialize_seq(self, visitor)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            _fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, ValueError> {
            de::Deserializer::deserialize_map(self, visitor)
        }
    }
}

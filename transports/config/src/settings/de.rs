//! Deserializers that accept both TOML values and the verbatim strings of the environment.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use figment::value::Value;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration: `"10s"`, `"1m 30s"`, `"500ms"`, or a whole number of seconds.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"10s\" or \"500ms\", or a number of seconds")
        }
        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Self::Value, E> {
            Ok(Some(Duration::from_secs(secs)))
        }
        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Self::Value, E> {
            u64::try_from(secs)
                .map(|s| Some(Duration::from_secs(s)))
                .map_err(|_| E::custom("a duration cannot be negative"))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            let text = text.trim();
            if let Ok(secs) = text.parse::<u64>() {
                return Ok(Some(Duration::from_secs(secs)));
            }
            humantime::parse_duration(text).map(Some).map_err(|e| {
                E::custom(format!(
                    "invalid duration `{text}` ({e}); use e.g. \"10s\" or \"500ms\""
                ))
            })
        }
    }
    d.deserialize_any(V)
}

/// Yes or no: a TOML boolean, or `true` / `false` (also `1` / `0`, `yes` / `no`, `on` /
/// `off`) as text.
pub(super) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true or false")
        }
        fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
            Ok(Some(b))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                other => Err(E::custom(format!(
                    "invalid value `{other}`; expected true or false"
                ))),
            }
        }
    }
    d.deserialize_any(V)
}

/// A whole number, written as a number or as a string of digits.
pub(super) fn number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + TryFrom<u64>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<T: FromStr + TryFrom<u64>> Visitor<'_> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            T::try_from(n)
                .map(Some)
                .map_err(|_| E::custom(format!("{n} is too large")))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            match u64::try_from(n) {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::custom(format!(
                    "{n} is negative; expected a whole number"
                ))),
            }
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            text.trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| E::custom(format!("`{text}` is not a whole number")))
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// A secret: a string, and an error that never repeats the value when it is not one.
pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match <Value as Deserialize>::deserialize(d)? {
        Value::String(_, s) => Ok(Some(s)),
        _ => Err(de::Error::custom(
            "expected a string (in bus.toml, put the value in quotes)",
        )),
    }
}

/// A socket address to listen on: an IP address and a port, `127.0.0.1:9464` or
/// `[::1]:9464`. Host names are refused rather than resolved, so loading the configuration
/// never waits on a name server and the address served is the one written.
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<SocketAddr>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an IP address and port such as \"127.0.0.1:9464\"")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            let text = text.trim();
            text.parse::<SocketAddr>().map(Some).map_err(|_| {
                E::custom(format!(
                    "`{text}` is not a socket address; use an IP address and a port, e.g. \
                     \"127.0.0.1:9464\" (this machine only) or \"0.0.0.0:9464\" (every interface)"
                ))
            })
        }
    }
    d.deserialize_any(V)
}

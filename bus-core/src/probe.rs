//! Which protocol a server speaks, for connection errors that say what went wrong.
//!
//! A client pointed at the wrong port fails with its parser's words ("Parsing Error:
//! ParserErrors { .. }", "Incompatible type - Parse error at 1"). When a connection fails
//! that way, a transport asks [`identify`] what answered and reports that instead:
//! "127.0.0.1:4222 answered, but not as an AMQP broker; it speaks NATS (is this the NATS port?)".

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A protocol [`identify`] recognizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// AMQP 0-9-1 (RabbitMQ).
    Amqp,
    /// NATS.
    Nats,
    /// Redis (RESP).
    Redis,
    /// HTTP.
    Http,
    /// MQTT.
    Mqtt,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Amqp => "AMQP",
            Protocol::Nats => "NATS",
            Protocol::Redis => "Redis",
            Protocol::Http => "HTTP",
            Protocol::Mqtt => "MQTT",
            Protocol::Postgres => "PostgreSQL",
            Protocol::MySql => "MySQL",
        })
    }
}

/// What the server at `addr` (`host:port`) speaks, found within `within`; `None` when it
/// could not be reached or was not recognized.
///
/// It reads what the server says unasked first (NATS, MySQL), then sends a line that every
/// other recognized protocol answers in its own way and closes the connection.
pub async fn identify(addr: &str, within: Duration) -> Option<Protocol> {
    tokio::time::timeout(within, identify_now(addr))
        .await
        .ok()
        .flatten()
}

async fn identify_now(addr: &str) -> Option<Protocol> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut buf = [0u8; 64];
    // Servers that speak first do so at once.
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await
    {
        if n > 0 {
            return greeting(&buf[..n]);
        }
        return None;
    }
    // A Redis inline command, which is also a (bad) HTTP request line and a bad AMQP header.
    stream.write_all(b"PING\r\n\r\n").await.ok()?;
    let n = stream.read(&mut buf).await.ok()?;
    reply(&buf[..n])
}

/// What a server says before the client has said anything.
fn greeting(bytes: &[u8]) -> Option<Protocol> {
    if bytes.starts_with(b"INFO ") {
        Some(Protocol::Nats)
    } else if bytes.len() > 4 && bytes[4] == 10 {
        // MySQL's handshake packet: a 3-byte length, a sequence number, protocol version 10.
        Some(Protocol::MySql)
    } else {
        None
    }
}

/// What a server answers to `PING\r\n\r\n`.
fn reply(bytes: &[u8]) -> Option<Protocol> {
    if bytes.starts_with(b"AMQP") {
        // An AMQP broker answers a bad protocol header with the header it speaks.
        Some(Protocol::Amqp)
    } else if bytes.starts_with(b"+PONG")
        || bytes.starts_with(b"-NOAUTH")
        || bytes.starts_with(b"-ERR")
    {
        Some(Protocol::Redis)
    } else if bytes.starts_with(b"HTTP/") {
        Some(Protocol::Http)
    } else if bytes.first() == Some(&b'E') || bytes.first() == Some(&b'N') {
        // A PostgreSQL error response or SSL refusal.
        Some(Protocol::Postgres)
    } else if bytes.first().is_some_and(|b| b >> 4 == 2) {
        // An MQTT CONNACK.
        Some(Protocol::Mqtt)
    } else {
        None
    }
}

/// The message for a connection to `addr` that failed because the server there is not a
/// `expected` server: what answered, and the likely mix-up.
///
/// ```
/// use bus_core::probe::{wrong_protocol, Protocol};
///
/// assert_eq!(
///     wrong_protocol("127.0.0.1:4222", Protocol::Amqp, Some(Protocol::Nats)),
///     "127.0.0.1:4222 answered, but not as an AMQP broker: it speaks NATS (is this the NATS port?)"
/// );
/// ```
pub fn wrong_protocol(addr: &str, expected: Protocol, found: Option<Protocol>) -> String {
    let role = match expected {
        Protocol::Amqp | Protocol::Nats | Protocol::Mqtt => "broker",
        _ => "server",
    };
    let a = match expected {
        Protocol::Amqp | Protocol::Http | Protocol::Mqtt => "an",
        _ => "a",
    };
    match found {
        Some(found) if found != expected => format!(
            "{addr} answered, but not as {a} {expected} {role}: it speaks {found} (is this the {found} port?)"
        ),
        _ => format!(
            "{addr} answered, but not as {a} {expected} {role} would; check the host and port"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that writes `greeting` on accept, then answers anything with `answer`.
    async fn fake(greeting: &'static [u8], answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            if !greeting.is_empty() {
                s.write_all(greeting).await.unwrap();
            }
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_nats_greeting_is_recognized() {
        let addr = fake(b"INFO {\"server_id\":\"x\"}\r\n", b"").await;
        assert_eq!(
            identify(&addr, Duration::from_secs(2)).await,
            Some(Protocol::Nats)
        );
    }

    #[tokio::test]
    async fn an_amqp_header_reply_is_recognized() {
        let addr = fake(b"", b"AMQP\x00\x00\x09\x01").await;
        assert_eq!(
            identify(&addr, Duration::from_secs(2)).await,
            Some(Protocol::Amqp)
        );
    }

    #[tokio::test]
    async fn a_redis_pong_is_recognized() {
        let addr = fake(b"", b"+PONG\r\n").await;
        assert_eq!(
            identify(&addr, Duration::from_secs(2)).await,
            Some(Protocol::Redis)
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_none() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert_eq!(identify(&addr, Duration::from_secs(2)).await, None);
    }

    #[test]
    fn the_message_names_the_mix_up() {
        let text = wrong_protocol("h:6379", Protocol::Nats, Some(Protocol::Redis));
        assert!(text.contains("not as a NATS broker"), "{text}");
        assert!(text.contains("is this the Redis port?"), "{text}");
        let unknown = wrong_protocol("h:1", Protocol::Redis, None);
        assert!(unknown.contains("check the host and port"), "{unknown}");
    }
}

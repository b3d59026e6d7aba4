//! The connection to the broker: opening it, the publisher channel, and a fresh connection
//! when the client library's own recovery gives up.

use std::sync::Arc;
use std::time::Duration;

use bus_core::probe::{self, Protocol};
use bus_core::TransportError;
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::time::{timeout, Instant};

use crate::config::AmqpConfig;
use crate::error::{broker_error, is_login_refused, AmqpError};
use crate::transport::AmqpTransport;

impl AmqpTransport {
    /// The current connection.
    pub(crate) fn connection(&self) -> Arc<Connection> {
        self.inner
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The client library recovers a dropped connection by itself, but after a broker restart
    /// it can give up and stay down. When the connection has been down for a few seconds, open
    /// a fresh one (and a new publisher channel); subscriptions then re-open on it.
    pub(crate) async fn reconnect_if_dead(&self) {
        // Long enough for the library's own recovery (its backoff tops out at 2 s) to win when
        // it can.
        const GRACE: Duration = Duration::from_secs(8);
        if self.connection().status().connected() {
            *self
                .inner
                .down_since
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            return;
        }
        {
            let mut down = self
                .inner
                .down_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let since = *down.get_or_insert_with(Instant::now);
            if since.elapsed() < GRACE {
                return;
            }
        }
        let _one = self.inner.reconnecting.lock().await;
        let old = self.connection();
        if old.status().connected() {
            return;
        }
        let config = &self.inner.config;
        let fresh = match open(config, &self.inner.url, true).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "broker still unreachable");
                return;
            }
        };
        let publisher = match publisher_channel(&fresh, config).await {
            Ok(ch) => ch,
            Err(e) => {
                tracing::debug!(error = %e, "no publisher channel on the fresh connection");
                return;
            }
        };
        *self
            .inner
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        *self
            .inner
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = publisher;
        *self
            .inner
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(url = %config.redacted_url(), "the connection did not recover by itself; opened a fresh one");
        // Stop the old connection for good. Its own recovery may still bring it back (with the
        // consumers it remembers, whose deliveries nobody would read), so keep closing it until
        // it is closed: closing returns whatever it holds to the queues.
        tokio::spawn(async move {
            for _ in 0..120 {
                let status = old.status();
                if status.closed() || status.errored() {
                    break;
                }
                let _ = timeout(Duration::from_secs(5), old.close(200, "replaced".into())).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// The channel publishes go through (confirms on).
    pub(crate) fn current_publisher(&self) -> Channel {
        self.inner
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a channel error that recovery cannot fix, open a new publisher channel.
    pub(crate) async fn replace_publisher(&self) -> Result<(), TransportError> {
        let ch = publisher_channel(&self.connection(), &self.inner.config).await?;
        *self
            .inner
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ch;
        Ok(())
    }

    /// A channel of its own, for declarations and consumers.
    pub(crate) async fn topology_channel(&self) -> Result<Channel, TransportError> {
        self.connection()
            .create_channel()
            .await
            .map_err(|e| broker_error("opening a channel", e))
    }
}

/// Open a connection to `url` (credentials applied); with `recover`, the client library
/// recovers it by itself after a drop.
pub(crate) async fn open(
    config: &AmqpConfig,
    url: &str,
    recover: bool,
) -> Result<Connection, AmqpError> {
    let mut props = ConnectionProperties::default()
        .with_connection_name(config.connection_name.as_str().into());
    if recover {
        props = props
            .configure_backoff(|b| {
                b.with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(usize::MAX)
            })
            .enable_auto_recover();
    }
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: config.tls_ca_pem.clone(),
    };
    let runtime =
        lapin::runtime::default_runtime().map_err(|e| AmqpError::Config(e.to_string()))?;
    let connecting = timeout(
        config.connect_timeout,
        Connection::connect_with_config(url, props, tls, runtime),
    );
    // A server that waits for more than the AMQP header (Redis does) holds the connection
    // until the timeout. After a moment, ask what is listening, and stop waiting at once if
    // it is another kind of server; a broker that is only slow is left to answer in time.
    let asked = async {
        tokio::time::sleep(PROBE_AFTER.min(config.connect_timeout / 2)).await;
        match wrong_server(config, url, None).await {
            Some(wrong) => wrong,
            None => std::future::pending().await,
        }
    };
    let connected = tokio::select! {
        connected = connecting => connected,
        wrong = asked => return Err(wrong),
    };
    match connected {
        Err(_) => Err(AmqpError::Timeout {
            operation: "connecting to the AMQP broker",
            after: config.connect_timeout,
        }),
        Ok(Err(e)) => {
            if is_login_refused(&e) {
                let reason = config.scrub(&e.to_string());
                let url = config.redacted_url();
                return Err(AmqpError::Authentication { url, reason });
            }
            if let Some(wrong) = wrong_server(config, url, Some(&e)).await {
                return Err(wrong);
            }
            let reason = config.scrub(&e.to_string());
            Err(AmqpError::Connection {
                url: config.redacted_url(),
                reason,
            })
        }
        Ok(Ok(c)) => Ok(c),
    }
}

/// How long [`wrong_server`] waits for the server to say what it is.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection may take before the server is asked what it is (at most half the
/// connect timeout).
const PROBE_AFTER: Duration = Duration::from_secs(1);

/// When connecting failed with `error` (or, when `None`, takes long) because another kind of
/// server answered at the broker's address, the error that says so; `None` when the failure
/// is something else, reported as it is.
async fn wrong_server(
    config: &AmqpConfig,
    url: &str,
    error: Option<&lapin::Error>,
) -> Option<AmqpError> {
    if error.is_some_and(is_unreachable) {
        // Nobody answered: there is nothing to ask.
        return None;
    }
    let addr = address(url)?;
    let found = probe::identify(&addr, PROBE_TIMEOUT).await;
    // The client could not even read the server's first frame: something that is no AMQP
    // broker answered, even if the probe cannot tell what.
    let unreadable = error.is_some_and(|e| {
        matches!(
            e.kind(),
            lapin::ErrorKind::ParsingError(_) | lapin::ErrorKind::InvalidProtocolVersion(_)
        )
    });
    match found {
        Some(Protocol::Amqp) => return None,
        Some(_) => {}
        None if unreadable => {}
        None => return None,
    }
    Some(AmqpError::WrongProtocol {
        url: config.redacted_url(),
        context: probe::wrong_protocol(&addr, Protocol::Amqp, found),
        found,
        source: error.cloned().map(Arc::new),
    })
}

/// Whether connecting failed because nothing answered at all: refused, unreachable, or a
/// name that does not resolve.
fn is_unreachable(e: &lapin::Error) -> bool {
    use std::io::ErrorKind::*;
    match e.kind() {
        lapin::ErrorKind::IOError(io) => matches!(
            io.kind(),
            ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable | TimedOut
        ),
        _ => false,
    }
}

/// `host:port` of an AMQP URL, the default port filled in; never the credentials.
fn address(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let host = url.host_str()?;
    let port = url
        .port()
        .unwrap_or(if url.scheme() == "amqps" { 5671 } else { 5672 });
    Some(format!("{host}:{port}"))
}

/// A channel with publisher confirms on.
pub(crate) async fn publisher_channel(
    connection: &Connection,
    config: &AmqpConfig,
) -> Result<Channel, AmqpError> {
    let setup = async {
        let ch = connection.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok::<_, lapin::Error>(ch)
    };
    match timeout(config.connect_timeout, setup).await {
        Err(_) => Err(AmqpError::Timeout {
            operation: "opening the publisher channel",
            after: config.connect_timeout,
        }),
        Ok(Err(e)) => Err(AmqpError::Connection {
            url: config.redacted_url(),
            reason: config.scrub(&e.to_string()),
        }),
        Ok(Ok(ch)) => Ok(ch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probed_address_has_the_default_port_and_no_credentials() {
        assert_eq!(
            address("amqp://app:s3cret@rabbit.internal/%2f").as_deref(),
            Some("rabbit.internal:5672")
        );
        assert_eq!(
            address("amqps://app:s3cret@rabbit.internal/%2f").as_deref(),
            Some("rabbit.internal:5671")
        );
        assert_eq!(
            address("amqp://127.0.0.1:4222").as_deref(),
            Some("127.0.0.1:4222")
        );
        assert_eq!(
            address("amqp://[::1]:5673/v").as_deref(),
            Some("[::1]:5673")
        );
    }

    #[test]
    fn a_refused_socket_is_not_probed() {
        let refused: lapin::Error =
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert!(is_unreachable(&refused));
        let reset: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(!is_unreachable(&reset), "a server that hung up did answer");
    }
}

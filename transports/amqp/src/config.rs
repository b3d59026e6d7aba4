//! Settings of the AMQP transport, and the naming convention of its topology.

use std::fmt;
use std::time::Duration;

use crate::error::AmqpError;

/// The queue type of endpoint queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// Classic durable queues (the default).
    Classic,
    /// Quorum queues (replicated). `delivery_limit` bounds redeliveries of one message; past it
    /// the broker moves the message to the endpoint's error queue (a crash-loop guard).
    Quorum {
        /// Deliveries allowed before the broker dead-letters a message.
        delivery_limit: u32,
    },
}

/// How queues and exchanges are named. The defaults:
///
/// | what | name |
/// |---|---|
/// | input queue of endpoint `E` | `E` |
/// | error queue of `E` | `E.error` |
/// | delay queue of `E` for `N` ms | `E.delay.N` |
/// | events exchange (topic; routing key = wire name) | `bus.events` |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naming {
    /// Prefix for every queue name (e.g. an environment name); empty by default.
    pub queue_prefix: String,
    /// The topic exchange events are published to.
    pub events_exchange: String,
    /// Suffix of error queues.
    pub error_suffix: String,
    /// Infix of delay queues.
    pub delay_infix: String,
}

impl Default for Naming {
    fn default() -> Self {
        Naming {
            queue_prefix: String::new(),
            events_exchange: "bus.events".into(),
            error_suffix: ".error".into(),
            delay_infix: ".delay.".into(),
        }
    }
}

impl Naming {
    /// The input queue of an endpoint.
    pub fn queue(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.queue_prefix)
    }

    /// The error queue of an endpoint.
    pub fn error_queue(&self, endpoint: &str) -> String {
        format!("{}{endpoint}{}", self.queue_prefix, self.error_suffix)
    }

    /// The delay queue of an endpoint for one delay.
    pub fn delay_queue(&self, endpoint: &str, delay: Duration) -> String {
        format!(
            "{}{endpoint}{}{}",
            self.queue_prefix,
            self.delay_infix,
            delay.as_millis()
        )
    }
}

/// Configuration of [`crate::AmqpTransport`].
///
/// The URL carries credentials (`amqp://user:password@host:5672/vhost`, or `amqps://` for TLS);
/// [`AmqpConfig::credentials`] overrides them. The password never appears in `Debug` output,
/// logs or errors.
///
/// ```
/// use bus_transport_amqp::AmqpConfig;
///
/// let config = AmqpConfig::new("amqp://app:s3cret@rabbit.internal:5672/%2f").connection_name("billing");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert_eq!(config.redacted_url(), "amqp://app:***@rabbit.internal:5672/%2f");
/// ```
#[derive(Clone)]
pub struct AmqpConfig {
    url: String,
    user: Option<String>,
    password: Option<String>,
    /// Shown in the broker's management UI; helps tell services apart.
    pub connection_name: String,
    /// Longest wait for a publish to be confirmed (also while reconnecting).
    pub publish_timeout: Duration,
    /// Longest wait to connect, declare or subscribe.
    pub connect_timeout: Duration,
    /// Queue type of endpoint queues.
    pub queue_type: QueueType,
    /// Queue and exchange names.
    pub naming: Naming,
    /// A CA certificate (PEM) to trust for `amqps://`, in addition to the public roots.
    pub tls_ca_pem: Option<String>,
}

impl AmqpConfig {
    /// Settings for a broker URL, with defaults for the rest.
    pub fn new(url: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            user: None,
            password: None,
            connection_name: "bus".into(),
            publish_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            queue_type: QueueType::Classic,
            naming: Naming::default(),
            tls_ca_pem: None,
        }
    }

    /// From the environment: the URL from `BUS_AMQP_URL`, else `BUS_TRANSPORT` when it is an
    /// `amqp://` or `amqps://` URL; credentials from `BUS_AMQP_USER` / `BUS_AMQP_PASSWORD` when set.
    pub fn from_env() -> Result<Self, AmqpError> {
        let url = std::env::var("BUS_AMQP_URL")
            .ok()
            .or_else(|| {
                std::env::var("BUS_TRANSPORT")
                    .ok()
                    .filter(|t| t.starts_with("amqp"))
            })
            .ok_or(AmqpError::Config(
                "set BUS_AMQP_URL (or BUS_TRANSPORT) to an amqp:// or amqps:// URL".into(),
            ))?;
        let mut config = AmqpConfig::new(url);
        if let (Ok(user), Ok(password)) = (
            std::env::var("BUS_AMQP_USER"),
            std::env::var("BUS_AMQP_PASSWORD"),
        ) {
            config = config.credentials(user, password);
        }
        Ok(config)
    }

    /// Use these credentials instead of the URL's.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Set the connection name.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Set the publish timeout.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Set the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Use quorum queues with a delivery limit.
    pub fn quorum_queues(mut self, delivery_limit: u32) -> Self {
        self.queue_type = QueueType::Quorum { delivery_limit };
        self
    }

    /// Set the naming convention.
    pub fn naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }

    /// Trust this CA (PEM) for `amqps://`.
    pub fn tls_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// The URL to connect to, credentials applied.
    pub(crate) fn effective_url(&self) -> Result<String, AmqpError> {
        let mut url = url::Url::parse(&self.url)
            .map_err(|e| AmqpError::Config(format!("invalid AMQP URL: {e}")))?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(AmqpError::Config(format!(
                "unsupported scheme `{}`: use amqp:// or amqps://",
                url.scheme()
            )));
        }
        if let Some(user) = &self.user {
            url.set_username(user)
                .map_err(|_| AmqpError::Config("cannot set the user on this URL".into()))?;
            url.set_password(self.password.as_deref())
                .map_err(|_| AmqpError::Config("cannot set the password on this URL".into()))?;
        }
        Ok(url.to_string())
    }

    /// The password in use, if any (to scrub it from error texts).
    pub(crate) fn secret(&self) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let url = url::Url::parse(&self.url).ok()?;
        let p = url.password()?;
        Some(
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned(),
        )
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        bus_core::redact_url(&self.url)
    }

    /// Remove the password from a text (error messages of the client library).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let text = bus_core::scrub_urls(text);
        match self.secret().filter(|s| !s.is_empty()) {
            Some(secret) => text.replace(&secret, "***"),
            None => text,
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.redacted_url())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connection_name", &self.connection_name)
            .field("publish_timeout", &self.publish_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("queue_type", &self.queue_type)
            .field("naming", &self.naming)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

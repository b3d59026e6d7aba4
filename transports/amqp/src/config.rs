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
/// | what | name | with namespace `N` |
/// |---|---|---|
/// | input queue of endpoint `E` | `E` | `N.E` |
/// | error queue of `E` | `E.error` | `N.E.error` |
/// | delay queue of `E` for `D` ms | `E.delay.D` | `N.E.delay.D` |
/// | events exchange (topic; routing key = wire name) | `bus.events` | `N.bus.events` |
/// | reply queue of bus instance `I` | `bus.reply.I` | `N.bus.reply.I` |
/// | scheduled messages waiting 2^n ms | `bus.schedule.Ln` | `N.bus.schedule.Ln` |
/// | scheduled messages that may be due | `bus.schedule.due` | `N.bus.schedule.due` |
///
/// A [`queue_prefix`](Naming::queue_prefix) goes before the endpoint's name, after the
/// namespace: `N.{prefix}E`. Without a namespace the names are exactly those of earlier
/// versions, so buses on both sides of an upgrade still meet.
///
/// ```
/// use std::time::Duration;
/// use bus_transport_amqp::Naming;
///
/// let naming = Naming::default().with_namespace("staging");
/// assert_eq!(naming.queue("billing"), "staging.billing");
/// assert_eq!(naming.error_queue("billing"), "staging.billing.error");
/// assert_eq!(
///     naming.delay_queue("billing", Duration::from_secs(2)),
///     "staging.billing.delay.2000"
/// );
/// assert_eq!(naming.events_exchange_name(), "staging.bus.events");
/// assert_eq!(naming.reply_queue("0193"), "staging.bus.reply.0193");
/// assert_eq!(naming.schedule_level_queue(7), "staging.bus.schedule.L7");
/// assert_eq!(naming.schedule_due_queue(), "staging.bus.schedule.due");
/// assert_eq!(Naming::default().events_exchange_name(), "bus.events");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naming {
    /// The namespace every name is put under (see [`AmqpConfig::namespace`]); empty for none.
    pub namespace: String,
    /// Prefix for every queue name (e.g. an environment name); empty by default.
    pub queue_prefix: String,
    /// The topic exchange events are published to, before the namespace is applied (see
    /// [`Naming::events_exchange_name`]).
    pub events_exchange: String,
    /// Suffix of error queues.
    pub error_suffix: String,
    /// Infix of delay queues.
    pub delay_infix: String,
}

impl Default for Naming {
    fn default() -> Self {
        Naming {
            namespace: String::new(),
            queue_prefix: String::new(),
            events_exchange: "bus.events".into(),
            error_suffix: ".error".into(),
            delay_infix: ".delay.".into(),
        }
    }
}

impl Naming {
    /// The same naming under `namespace` (empty: none).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// A name put under the namespace, if there is one.
    fn scoped(&self, name: String) -> String {
        if self.namespace.is_empty() {
            name
        } else {
            format!("{}.{name}", self.namespace)
        }
    }

    /// The input queue of an endpoint.
    pub fn queue(&self, endpoint: &str) -> String {
        self.scoped(format!("{}{endpoint}", self.queue_prefix))
    }

    /// The error queue of an endpoint.
    pub fn error_queue(&self, endpoint: &str) -> String {
        self.scoped(format!(
            "{}{endpoint}{}",
            self.queue_prefix, self.error_suffix
        ))
    }

    /// The delay queue of an endpoint for one delay.
    pub fn delay_queue(&self, endpoint: &str, delay: Duration) -> String {
        self.scoped(format!(
            "{}{endpoint}{}{}",
            self.queue_prefix,
            self.delay_infix,
            delay.as_millis()
        ))
    }

    /// The reply queue of one bus instance (see
    /// [`Transport::open_replies`](bus_core::Transport::open_replies)); its name is the
    /// instance's reply address.
    pub fn reply_queue(&self, instance: &str) -> String {
        self.scoped(format!("{}bus.reply.{instance}", self.queue_prefix))
    }

    /// The queue where scheduled messages wait 2^`level` milliseconds (one of a cascade of
    /// delay levels, shared by every endpoint under this naming).
    pub fn schedule_level_queue(&self, level: u32) -> String {
        self.scoped(format!("{}bus.schedule.L{level}", self.queue_prefix))
    }

    /// The queue the delay levels of scheduled messages expire into, from which running buses
    /// take the messages that are due.
    pub fn schedule_due_queue(&self) -> String {
        self.scoped(format!("{}bus.schedule.due", self.queue_prefix))
    }

    /// Whether `queue` is a delay queue of `endpoint` (for any delay).
    pub(crate) fn is_delay_queue_of(&self, queue: &str, endpoint: &str) -> bool {
        // The delay queue for 0 ms, less its number, is what every delay queue starts with.
        let zero = self.delay_queue(endpoint, Duration::ZERO);
        let stem = &zero[..zero.len() - 1];
        queue
            .strip_prefix(stem)
            .is_some_and(|millis| !millis.is_empty() && millis.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The topic exchange events are published to: [`Naming::events_exchange`] under the
    /// namespace.
    pub fn events_exchange_name(&self) -> String {
        self.scoped(self.events_exchange.clone())
    }

    /// Why the namespace cannot be used, if it cannot.
    pub(crate) fn check(&self) -> Result<(), AmqpError> {
        // RabbitMQ refuses to declare names that start with `amq.`.
        if self.namespace == "amq" || self.namespace.starts_with("amq.") {
            return Err(AmqpError::Config(format!(
                "namespace `{}`: names starting with `amq.` are reserved by the broker",
                self.namespace
            )));
        }
        // AMQP names are short strings: at most 255 bytes, and the endpoint still has to fit.
        if self.namespace.len() > 128 {
            return Err(AmqpError::Config(format!(
                "namespace `{:.40}...` is {} bytes long; at most 128 leave room for the endpoint names",
                self.namespace,
                self.namespace.len()
            )));
        }
        Ok(())
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
    /// Where the management HTTP API is, for listing endpoints.
    management: Management,
}

/// Where the RabbitMQ management HTTP API is (see [`AmqpConfig::management_url`]).
#[derive(Clone, PartialEq, Eq)]
enum Management {
    /// On the broker's host, port 15672, with the AMQP credentials (`amqp://` URLs only).
    FromAmqpUrl,
    /// At this URL.
    At(String),
    /// Not used: listing endpoints is unsupported.
    Off,
}

/// The management API as resolved from the settings: where to ask, as whom, for which
/// virtual host.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ManagementApi {
    /// `http://host[:port]` and any path prefix, without credentials or a trailing `/`: how
    /// errors name the API.
    pub(crate) base: String,
    /// The path the API's paths go under (empty, or `/prefix`).
    pub(crate) prefix: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: String,
    /// The virtual host of the AMQP URL, decoded (`/` by default).
    pub(crate) vhost: String,
}

/// Why there is no management API to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NoManagement {
    /// Turned off with [`AmqpConfig::without_management`].
    Off,
    /// An `amqps://` broker and no management URL given: the default would send the
    /// password over plain HTTP.
    TlsWithoutUrl,
    /// The URL cannot be used; why.
    Invalid(String),
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
            management: Management::FromAmqpUrl,
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

    /// Set the naming convention. A namespace set with [`AmqpConfig::namespace`] is kept
    /// unless `naming` has one of its own.
    pub fn naming(mut self, naming: Naming) -> Self {
        let namespace = std::mem::take(&mut self.naming.namespace);
        self.naming = naming;
        if self.naming.namespace.is_empty() {
            self.naming.namespace = namespace;
        }
        self
    }

    /// Put every name this transport declares and uses under `namespace`: input, error and
    /// delay queues become `{namespace}.{queue}`, the events exchange
    /// `{namespace}.bus.events` (see [`Naming`]). Buses with different namespaces share a
    /// broker (and a virtual host) without seeing each other's commands or events; buses with
    /// the same namespace, or both without one, talk to each other. An empty namespace is
    /// none: the names are then those of a transport that never set one.
    ///
    /// ```
    /// use bus_transport_amqp::AmqpConfig;
    ///
    /// let config = AmqpConfig::new("amqp://127.0.0.1:5672/%2f").namespace("tenant-a");
    /// assert_eq!(config.naming.queue("billing"), "tenant-a.billing");
    /// assert_eq!(config.naming.events_exchange_name(), "tenant-a.bus.events");
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.naming.namespace = namespace.into();
        self
    }

    /// Where the RabbitMQ management HTTP API is, for
    /// [`Transport::endpoints`](bus_core::Transport::endpoints): AMQP 0-9-1 cannot list queues,
    /// the management API can (the `rabbitmq_management` plugin). Credentials in the URL
    /// (`http://user:password@host:15672`) are used for it; without them, those of the AMQP
    /// connection. A path after the host is kept as a prefix of the API's paths (a proxy that
    /// serves it under `/rabbitmq`). Only `http://` is supported.
    ///
    /// By default, for an `amqp://` URL, the API is looked for on the broker's host at port
    /// 15672 with the AMQP credentials; for `amqps://` there is no default (it would send the
    /// password over plain HTTP). The password never shows in `Debug` output or errors.
    ///
    /// ```
    /// use bus_transport_amqp::AmqpConfig;
    ///
    /// let config = AmqpConfig::new("amqp://app:s3cret@rabbit.internal:5672/%2f")
    ///     .management_url("http://monitor:pw@rabbit-admin.internal:15672");
    /// assert!(!format!("{config:?}").contains("pw@"));
    /// ```
    pub fn management_url(mut self, url: impl Into<String>) -> Self {
        self.management = Management::At(url.into());
        self
    }

    /// Do not use the management API: [`Transport::endpoints`](bus_core::Transport::endpoints)
    /// is then [`TransportError::Unsupported`](bus_core::TransportError::Unsupported).
    pub fn without_management(mut self) -> Self {
        self.management = Management::Off;
        self
    }

    /// The management API to ask, resolved from the settings (see
    /// [`AmqpConfig::management_url`]).
    pub(crate) fn management_api(&self) -> Result<ManagementApi, NoManagement> {
        let amqp = url::Url::parse(&self.url)
            .map_err(|e| NoManagement::Invalid(format!("invalid AMQP URL: {e}")))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        // The AMQP credentials: given ones, else the URL's, else the broker's default login,
        // as the AMQP connection itself uses.
        let (amqp_user, amqp_password) = match (&self.user, &self.password) {
            (Some(user), password) => (user.clone(), password.clone().unwrap_or_default()),
            (None, _) if !amqp.username().is_empty() => (
                decode(amqp.username()),
                amqp.password().map(decode).unwrap_or_default(),
            ),
            (None, _) => ("guest".to_string(), "guest".to_string()),
        };
        let vhost = match amqp.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_string(),
            path => decode(path),
        };
        let url = match &self.management {
            Management::Off => return Err(NoManagement::Off),
            Management::FromAmqpUrl if amqp.scheme() == "amqps" => {
                return Err(NoManagement::TlsWithoutUrl)
            }
            Management::FromAmqpUrl => {
                let host = amqp
                    .host_str()
                    .ok_or_else(|| NoManagement::Invalid("the AMQP URL has no host".into()))?;
                url::Url::parse(&format!("http://{host}:15672"))
                    .map_err(|e| NoManagement::Invalid(format!("management URL: {e}")))?
            }
            Management::At(given) => url::Url::parse(given).map_err(|e| {
                NoManagement::Invalid(format!(
                    "invalid management URL `{}`: {e}",
                    bus_core::redact_url(given)
                ))
            })?,
        };
        if url.scheme() != "http" {
            return Err(NoManagement::Invalid(format!(
                "management URL `{}`: only http:// is supported",
                bus_core::redact_url(url.as_str())
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| NoManagement::Invalid("the management URL has no host".into()))?
            .to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let (user, password) = if url.username().is_empty() {
            (amqp_user, amqp_password)
        } else {
            (
                decode(url.username()),
                url.password().map(decode).unwrap_or_default(),
            )
        };
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let prefix = url.path().trim_end_matches('/').to_string();
        Ok(ManagementApi {
            base: format!("http://{authority}{prefix}"),
            prefix,
            host,
            port,
            user,
            password,
            vhost,
        })
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

    /// The password of the management API when it differs from the AMQP one.
    fn management_secret(&self) -> Option<String> {
        match &self.management {
            Management::At(url) => url::Url::parse(url).ok()?.password().map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            }),
            _ => None,
        }
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        bus_core::redact_url(&self.url)
    }

    /// Remove the password from a text (error messages of the client library).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = bus_core::scrub_urls(text);
        for secret in [self.secret(), self.management_secret()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
        {
            text = text.replace(&secret, "***");
        }
        text
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
            .field(
                "management",
                &match &self.management {
                    Management::FromAmqpUrl => "from the AMQP URL".to_string(),
                    Management::At(url) => bus_core::redact_url(url),
                    Management::Off => "off".to_string(),
                },
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_namespace_the_names_are_unchanged() {
        let naming = Naming::default();
        assert_eq!(naming.queue("billing"), "billing");
        assert_eq!(naming.error_queue("billing"), "billing.error");
        assert_eq!(
            naming.delay_queue("billing", Duration::from_millis(1500)),
            "billing.delay.1500"
        );
        assert_eq!(naming.events_exchange_name(), "bus.events");
        // An empty namespace is no namespace.
        assert_eq!(naming.clone().with_namespace(""), naming);
    }

    #[test]
    fn a_namespace_goes_before_every_name_and_the_prefix() {
        let naming = Naming {
            queue_prefix: "eu-".into(),
            ..Naming::default()
        }
        .with_namespace("tenant-a");
        assert_eq!(naming.queue("billing"), "tenant-a.eu-billing");
        assert_eq!(naming.error_queue("billing"), "tenant-a.eu-billing.error");
        assert_eq!(
            naming.delay_queue("billing", Duration::from_secs(2)),
            "tenant-a.eu-billing.delay.2000"
        );
        assert_eq!(naming.events_exchange_name(), "tenant-a.bus.events");
    }

    #[test]
    fn the_namespace_survives_a_later_naming_unless_it_brings_its_own() {
        let kept = AmqpConfig::new("amqp://h/%2f")
            .namespace("a")
            .naming(Naming::default());
        assert_eq!(kept.naming.queue("e"), "a.e");
        let replaced = AmqpConfig::new("amqp://h/%2f")
            .namespace("a")
            .naming(Naming::default().with_namespace("b"));
        assert_eq!(replaced.naming.queue("e"), "b.e");
        let later = AmqpConfig::new("amqp://h/%2f")
            .naming(Naming::default())
            .namespace("c");
        assert_eq!(later.naming.error_queue("e"), "c.e.error");
    }

    #[test]
    fn delay_queues_are_told_apart_by_endpoint() {
        let naming = Naming::default().with_namespace("ns");
        let of_a = naming.delay_queue("a", Duration::from_secs(1));
        assert!(naming.is_delay_queue_of(&of_a, "a"));
        assert!(!naming.is_delay_queue_of(&of_a, "b"));
        // The delay queue of an endpoint whose name extends another's is not the other's.
        let of_longer = naming.delay_queue("a.delay.5", Duration::from_secs(1));
        assert!(naming.is_delay_queue_of(&of_longer, "a.delay.5"));
        assert!(!naming.is_delay_queue_of(&of_longer, "a"));
        assert!(!naming.is_delay_queue_of(&naming.queue("a"), "a"));
        assert!(
            !naming.is_delay_queue_of("a.delay.1000", "a"),
            "not in the namespace"
        );
    }

    #[test]
    fn the_management_api_is_found_from_the_amqp_url_or_given() {
        let api = AmqpConfig::new("amqp://app:p%40ss@rabbit.internal:5672/%2f")
            .management_api()
            .unwrap();
        assert_eq!(api.base, "http://rabbit.internal:15672");
        assert_eq!((api.host.as_str(), api.port), ("rabbit.internal", 15672));
        assert_eq!((api.user.as_str(), api.password.as_str()), ("app", "p@ss"));
        assert_eq!(api.vhost, "/");
        let api = AmqpConfig::new("amqp://h/tenant-a")
            .credentials("u", "pw")
            .management_api()
            .unwrap();
        assert_eq!((api.user.as_str(), api.password.as_str()), ("u", "pw"));
        assert_eq!(api.vhost, "tenant-a");
        let api = AmqpConfig::new("amqp://h").management_api().unwrap();
        assert_eq!((api.user.as_str(), api.vhost.as_str()), ("guest", "/"));

        let given = AmqpConfig::new("amqp://app:pw@h:5672/%2f")
            .management_url("http://monitor:m0n@admin.internal/rabbitmq/");
        let api = given.management_api().unwrap();
        assert_eq!(api.base, "http://admin.internal/rabbitmq");
        assert_eq!((api.prefix.as_str(), api.port), ("/rabbitmq", 80));
        assert_eq!(
            (api.user.as_str(), api.password.as_str()),
            ("monitor", "m0n")
        );
        assert!(!format!("{given:?}").contains("m0n"));
        assert_eq!(given.scrub("said m0n and pw"), "said *** and ***");
    }

    #[test]
    fn the_management_api_is_not_guessed_for_tls_and_can_be_turned_off() {
        let tls = AmqpConfig::new("amqps://app:pw@h:5671/%2f");
        assert_eq!(
            tls.management_api().err(),
            Some(NoManagement::TlsWithoutUrl)
        );
        assert!(tls
            .management_url("http://h:15672")
            .management_api()
            .is_ok());
        let off = AmqpConfig::new("amqp://h").without_management();
        assert_eq!(off.management_api().err(), Some(NoManagement::Off));
        let https = AmqpConfig::new("amqp://h").management_url("https://u:secret@h:15671");
        match https.management_api() {
            Err(NoManagement::Invalid(why)) => {
                assert!(why.contains("only http://"), "{why}");
                assert!(!why.contains("secret"), "{why}");
            }
            other => panic!("https: {:?}", other.map(|a| a.base)),
        }
    }

    #[test]
    fn reserved_or_oversized_namespaces_are_refused() {
        assert!(Naming::default().with_namespace("amq").check().is_err());
        assert!(Naming::default().with_namespace("amq.x").check().is_err());
        assert!(Naming::default()
            .with_namespace("x".repeat(129))
            .check()
            .is_err());
        assert!(Naming::default()
            .with_namespace("amqp-tests")
            .check()
            .is_ok());
        assert!(Naming::default().check().is_ok());
    }
}

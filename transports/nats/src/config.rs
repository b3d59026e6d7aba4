//! Settings of the NATS transport, and the naming convention of its subjects, streams and
//! consumers.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bus_core::TransportError;

use crate::error::NatsError;

/// How subjects, streams and consumers are named. The defaults:
///
/// | what | name |
/// |---|---|
/// | commands (and due delayed retries) to endpoint `E` | subject `bus.cmd.E`, in stream `BUS_EP_E` |
/// | event with wire name `W` | subject `bus.evt.W`, in stream `BUS_EVT_W`, sourced into the stream of every subscribing endpoint |
/// | delayed retries of `E`, waiting | subject `bus.delay.E`, in stream `BUS_DELAY_E` |
/// | error queue of `E` | subject `bus.error.E`, in stream `BUS_ERR_E` |
/// | the durable pull consumer every instance of `E` shares | `bus` on `BUS_EP_E` (and on `BUS_DELAY_E`) |
/// | scheduled messages, waiting (one per message id, token `T`) | subject `bus.scheduled.T`, in stream `BUS_SCHEDULED`, read by its consumer `bus` |
/// | reply address of bus instance `I` | subject `bus.reply.I` (core NATS, no stream) |
///
/// Stream names cannot hold `.`, so other characters than letters, digits, `-` and `_` become
/// `_` and a short hash of the original name is appended (`orders.v2` gives `BUS_EP_orders_v2_3f1c09aa`).
///
/// # Namespaces
///
/// With a [`namespace`](Naming::namespace) `N` (see [`NatsConfig::namespace`]), every subject
/// starts with `N.` and every stream with the namespace's stream form and `_`: namespace
/// `staging` gives subject `staging.bus.cmd.E` and stream `STAGING_BUS_EP_E`. The stream form
/// is the namespace in capitals when it is made of lowercase letters, digits and `-` only;
/// otherwise other characters become `_`, letters become capitals, and a hash of the namespace
/// as given is appended (`eu.west` gives `EU_WEST_<hash>_BUS_EP_E`), so that two different
/// namespaces never share a stream. Buses with different namespaces on one server see
/// nothing of each other: not a command, not an event, not a stream. Consumers live inside
/// their stream and keep their name. Without a namespace the names are the defaults above.
///
/// ```
/// use bus_transport_nats::Naming;
///
/// let naming = Naming::default().with_namespace("staging");
/// assert_eq!(naming.command_subject("billing"), "staging.bus.cmd.billing");
/// assert_eq!(naming.endpoint_stream("billing"), "STAGING_BUS_EP_billing");
/// assert_eq!(Naming::default().endpoint_stream("billing"), "BUS_EP_billing");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naming {
    /// First token(s) of every subject, e.g. an environment name; `bus` by default.
    pub subject_prefix: String,
    /// Start of every stream name; `BUS` by default.
    pub stream_prefix: String,
    /// Name of the durable consumers; `bus` by default.
    pub consumer: String,
    /// A namespace in front of every subject and stream name (see [Namespaces](Naming#namespaces));
    /// none by default.
    pub namespace: Option<String>,
}

impl Default for Naming {
    fn default() -> Self {
        Naming {
            subject_prefix: "bus".into(),
            stream_prefix: "BUS".into(),
            consumer: "bus".into(),
            namespace: None,
        }
    }
}

impl Naming {
    /// The same naming under a namespace (see [Namespaces](Naming#namespaces)).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Subject of the commands of an endpoint.
    pub fn command_subject(&self, endpoint: &str) -> String {
        self.subject("cmd", endpoint)
    }

    /// Subject of an event, by wire name.
    pub fn event_subject(&self, wire_name: &str) -> String {
        self.subject("evt", wire_name)
    }

    /// Subject of the delayed retries of an endpoint while they wait.
    pub fn delay_subject(&self, endpoint: &str) -> String {
        self.subject("delay", endpoint)
    }

    /// Subject of the error queue of an endpoint.
    pub fn error_subject(&self, endpoint: &str) -> String {
        self.subject("error", endpoint)
    }

    /// Subject of the reply address of one bus instance (see
    /// [`bus_core::Transport::open_replies`]): a plain NATS subject, in no stream.
    pub fn reply_subject(&self, instance: &str) -> String {
        self.subject("reply", instance)
    }

    /// Subject of one scheduled message while it waits, by its subject token (see the
    /// transport's docs on scheduled messages).
    pub fn scheduled_subject(&self, token: &str) -> String {
        self.subject("scheduled", token)
    }

    /// The subjects of the scheduled stream: every scheduled message of this naming.
    pub fn scheduled_subjects(&self) -> String {
        self.subject("scheduled", ">")
    }

    /// `[<namespace>.]<prefix>.<kind>.<name>`, written straight into its `String` (every send
    /// makes one).
    fn subject(&self, kind: &str, name: &str) -> String {
        let prefix = &self.subject_prefix;
        let namespace = self.namespace.as_deref().unwrap_or("");
        let mut subject =
            String::with_capacity(namespace.len() + prefix.len() + kind.len() + name.len() + 3);
        if !namespace.is_empty() {
            subject.push_str(namespace);
            subject.push('.');
        }
        subject.push_str(prefix);
        subject.push('.');
        subject.push_str(kind);
        subject.push('.');
        subject.push_str(name);
        subject
    }

    /// `[<NAMESPACE>_]<prefix>_<kind>_<name as a stream token>`.
    fn stream(&self, kind: &str, name: &str) -> String {
        let token = stream_token(name);
        match self.namespace.as_deref() {
            Some(ns) => format!(
                "{}_{}_{kind}_{token}",
                namespace_token(ns),
                self.stream_prefix
            ),
            None => format!("{}_{kind}_{token}", self.stream_prefix),
        }
    }

    /// How every stream name of this naming starts, namespace included (`BUS_`, or
    /// `STAGING_BUS_` in namespace `staging`): to list or clean up what a bus made.
    pub fn stream_name_prefix(&self) -> String {
        match self.namespace.as_deref() {
            Some(ns) => format!("{}_{}_", namespace_token(ns), self.stream_prefix),
            None => format!("{}_", self.stream_prefix),
        }
    }

    /// Check the namespace can start a subject.
    pub(crate) fn check(&self) -> Result<(), NatsError> {
        if let Some(ns) = &self.namespace {
            check_subject_part("namespace", ns).map_err(|e| NatsError::Config(e.to_string()))?;
        }
        Ok(())
    }

    /// The stream an endpoint consumes: its commands plus the events it subscribes to.
    pub fn endpoint_stream(&self, endpoint: &str) -> String {
        self.stream("EP", endpoint)
    }

    /// The stream that stores one event type.
    pub fn event_stream(&self, wire_name: &str) -> String {
        self.stream("EVT", wire_name)
    }

    /// The stream that holds an endpoint's delayed retries until they are due.
    pub fn delay_stream(&self, endpoint: &str) -> String {
        self.stream("DELAY", endpoint)
    }

    /// The stream of an endpoint's error queue.
    pub fn error_stream(&self, endpoint: &str) -> String {
        self.stream("ERR", endpoint)
    }

    /// The stream that holds every scheduled message of this naming until it is due, whatever
    /// its destination: one for the whole bus, a work queue.
    pub fn scheduled_stream(&self) -> String {
        format!("{}SCHEDULED", self.stream_name_prefix())
    }
}

/// A name as a stream-name fragment: unchanged when it is made of letters, digits, `-` and `_`;
/// otherwise those other characters become `_` and a hash of the original keeps it unique.
fn stream_token(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == name {
        return clean;
    }
    format!("{clean}_{:08x}", fnv1a(name))
}

/// A namespace as the start of a stream name: in capitals, as it is when it is made of
/// lowercase letters, digits and `-`; otherwise with other characters as `_` and a hash of the
/// namespace as given appended, so that `prod`, `PROD` and `p.rod` name three sets of streams,
/// as they name three sets of subjects. `_` counts as another character: it separates the
/// namespace from the rest of the stream name, and a namespace holding it could otherwise give
/// the name that another namespace gives one of its endpoints.
fn namespace_token(namespace: &str) -> String {
    let upper: String = namespace
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let plain = namespace
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if plain {
        upper
    } else {
        format!("{upper}_{:08X}", fnv1a(namespace))
    }
}

/// FNV-1a: stable across releases and platforms, unlike std's hasher.
fn fnv1a(text: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Check that an endpoint or wire name can be part of a subject: dot-separated tokens, none
/// empty, without whitespace or the wildcards `*` and `>`.
pub(crate) fn check_subject_part(what: &str, name: &str) -> Result<(), TransportError> {
    let bad = name.is_empty()
        || name.split('.').any(str::is_empty)
        || if name.is_ascii() {
            // Every send checks its destination: bytes, where a name is plain ASCII.
            name.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'*' || b == b'>')
        } else {
            name.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
        };
    if bad {
        return Err(TransportError::Other {
            context: format!(
                "{what} `{name}` cannot be used in a NATS subject: use dot-separated tokens without spaces, `*` or `>`"
            ),
            source: None,
        });
    }
    Ok(())
}

/// How the client proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
}

/// Configuration of [`crate::NatsTransport`].
///
/// The URL may carry credentials: `nats://user:password@host:4222`, or a token as
/// `nats://token@host:4222`; `tls://` asks for TLS. Several servers can be given separated by
/// commas. [`NatsConfig::credentials`] and [`NatsConfig::token`] override the URL's. Passwords
/// and tokens never appear in `Debug` output, logs or errors.
///
/// ```
/// use bus_transport_nats::NatsConfig;
///
/// let config = NatsConfig::new("nats://app:s3cret@nats.internal:4222").connection_name("billing");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert_eq!(config.redacted_url(), "nats://app:***@nats.internal:4222");
/// ```
#[derive(Clone)]
pub struct NatsConfig {
    url: String,
    auth_override: Option<Auth>,
    /// Shown in the server's connection list (`connz`); helps tell services apart.
    pub connection_name: String,
    /// Longest wait to connect, and for each declaration step.
    pub connect_timeout: Duration,
    /// Longest wait for one JetStream request (stream and consumer calls, acks, one publish ack).
    pub request_timeout: Duration,
    /// Longest wait for a send to be acknowledged by JetStream, retries included.
    pub publish_timeout: Duration,
    /// How long JetStream waits for an ack before redelivering. Handlers that run longer keep
    /// their delivery with progress signals when [`NatsConfig::progress`] is on.
    pub ack_wait: Duration,
    /// Deliveries of one message before JetStream stops redelivering it; the transport then moves
    /// it to the endpoint's error queue. A crash-loop guard: the runtime settles every delivery
    /// it finishes, so only crashes, shutdowns and nacks count up; JetStream counts every
    /// delivery, nacks included. 100 by default; `-1` for no limit.
    pub max_deliver: i64,
    /// Unsettled deliveries allowed across all instances of an endpoint.
    pub max_ack_pending: i64,
    /// How long one pull request waits on the server for messages.
    pub fetch_wait: Duration,
    /// How long event streams keep an event (subscribers copy them at once; this bounds the
    /// storage of events nobody subscribes to).
    pub event_max_age: Duration,
    /// The window in which JetStream drops a message whose `Nats-Msg-Id` it has already stored.
    pub duplicate_window: Duration,
    /// Send progress signals for deliveries in flight, so long handlers keep them.
    pub progress: bool,
    /// Have the server confirm acks (on by default), so that an ack lost with a connection is
    /// known: it is sent again on the next connection, and one never confirmed is logged. One
    /// answer confirms every ack sent before it on the same connection, so about one ack per
    /// round trip asks for it; a delivery counts against the prefetch until its ack is
    /// confirmed. Off, acks are sent and nothing more, as most JetStream clients do: a lost
    /// ack then means a redelivery after the ack wait. Either way a message is never lost.
    pub confirm_acks: bool,
    /// Subject, stream and consumer names.
    pub naming: Naming,
    /// A CA certificate file (PEM) to trust for TLS.
    pub tls_ca_file: Option<PathBuf>,
}

impl NatsConfig {
    /// Settings for a server URL, with defaults for the rest.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            auth_override: None,
            connection_name: "bus".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(10),
            ack_wait: Duration::from_secs(30),
            max_deliver: 100,
            max_ack_pending: 10_000,
            fetch_wait: Duration::from_secs(5),
            event_max_age: Duration::from_secs(24 * 60 * 60),
            duplicate_window: Duration::from_secs(120),
            progress: true,
            confirm_acks: true,
            naming: Naming::default(),
            tls_ca_file: None,
        }
    }

    /// From the environment: the URL from `BUS_NATS_URL`, else `BUS_TRANSPORT` when it is a
    /// `nats://` or `tls://` URL; credentials from `BUS_NATS_USER` / `BUS_NATS_PASSWORD`, or a
    /// token from `BUS_NATS_TOKEN`, when set.
    pub fn from_env() -> Result<Self, NatsError> {
        let url = std::env::var("BUS_NATS_URL")
            .ok()
            .or_else(|| {
                std::env::var("BUS_TRANSPORT")
                    .ok()
                    .filter(|t| t.starts_with("nats://") || t.starts_with("tls://"))
            })
            .ok_or(NatsError::Config(
                "set BUS_NATS_URL (or BUS_TRANSPORT) to a nats:// or tls:// URL".into(),
            ))?;
        let mut config = NatsConfig::new(url);
        if let (Ok(user), Ok(password)) = (
            std::env::var("BUS_NATS_USER"),
            std::env::var("BUS_NATS_PASSWORD"),
        ) {
            config = config.credentials(user, password);
        } else if let Ok(token) = std::env::var("BUS_NATS_TOKEN") {
            config = config.token(token);
        }
        Ok(config)
    }

    /// Use these credentials instead of the URL's.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth_override = Some(Auth::UserPassword(user.into(), password.into()));
        self
    }

    /// Authenticate with a token instead of the URL's credentials.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth_override = Some(Auth::Token(token.into()));
        self
    }

    /// Set the connection name.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Set the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Set the timeout of one JetStream request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Set the publish timeout.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Set the ack wait of the consumers.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Set the delivery limit (`-1`: none).
    pub fn max_deliver(mut self, deliveries: i64) -> Self {
        self.max_deliver = deliveries;
        self
    }

    /// Set the naming convention. A namespace set before (with [`NatsConfig::namespace`]) is
    /// kept unless `naming` has one of its own: replacing the prefixes never drops the
    /// isolation a namespace gives.
    pub fn naming(mut self, naming: Naming) -> Self {
        let namespace = naming.namespace.clone().or(self.naming.namespace.take());
        self.naming = Naming {
            namespace,
            ..naming
        };
        self
    }

    /// Put every subject and stream of this transport under a namespace, so that buses with
    /// different namespaces share a server without seeing each other's commands, events or
    /// streams: namespace `staging` gives subjects `staging.bus.cmd.E`, `staging.bus.evt.W`,
    /// ... and streams `STAGING_BUS_EP_E`, `STAGING_BUS_EVT_W`, ... (see
    /// [Namespaces](Naming#namespaces) for names with other characters). Without one, the
    /// names are the defaults of [`Naming`]. The namespace must be usable in a subject
    /// (dot-separated tokens without spaces, `*` or `>`); [`crate::NatsTransport::connect`]
    /// checks it.
    ///
    /// ```
    /// use bus_transport_nats::NatsConfig;
    ///
    /// let config = NatsConfig::new("nats://127.0.0.1:4222").namespace("staging");
    /// assert_eq!(config.naming.event_subject("shop.OrderPlaced"), "staging.bus.evt.shop.OrderPlaced");
    /// assert_eq!(config.naming.error_stream("billing"), "STAGING_BUS_ERR_billing");
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.naming.namespace = Some(namespace.into());
        self
    }

    /// Whether each ack waits for the server's confirmation (see [`NatsConfig::confirm_acks`]).
    pub fn confirm_acks(mut self, yes: bool) -> Self {
        self.confirm_acks = yes;
        self
    }

    /// Trust this CA file (PEM) for TLS.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// The server URLs with credentials removed, and the credentials to use.
    pub(crate) fn servers_and_auth(&self) -> Result<(Vec<String>, Auth), NatsError> {
        let mut servers = Vec::new();
        let mut auth = Auth::None;
        for raw in self.url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut url = url::Url::parse(raw).map_err(|e| {
                NatsError::Config(format!(
                    "invalid NATS URL `{}`: {e}",
                    bus_core::redact_url(raw)
                ))
            })?;
            if !matches!(url.scheme(), "nats" | "tls") {
                return Err(NatsError::Config(format!(
                    "unsupported scheme `{}`: use nats:// or tls://",
                    url.scheme()
                )));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(NatsError::Config("the NATS URL has no host".into()));
            }
            let user = decode(url.username());
            let password = url.password().map(decode);
            if auth == Auth::None && !user.is_empty() {
                auth = match password {
                    Some(p) => Auth::UserPassword(user, p),
                    None => Auth::Token(user),
                };
            }
            let _ = url.set_username("");
            let _ = url.set_password(None);
            let mut text = url.to_string();
            // `Url` writes a trailing slash the server address parser does not need.
            if url.path() == "/" && !raw.ends_with('/') {
                text.pop();
            }
            servers.push(text);
        }
        if servers.is_empty() {
            return Err(NatsError::Config("the NATS URL is empty".into()));
        }
        if let Some(a) = &self.auth_override {
            auth = a.clone();
        }
        Ok((servers, auth))
    }

    /// Secrets in use (passwords, tokens), to scrub them from error texts.
    fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        match &self.auth_override {
            Some(Auth::UserPassword(_, p)) => secrets.push(p.clone()),
            Some(Auth::Token(t)) => secrets.push(t.clone()),
            _ => {}
        }
        for raw in self.url.split(',') {
            if let Ok(url) = url::Url::parse(raw.trim()) {
                match url.password() {
                    Some(p) => {
                        secrets.push(decode(p));
                        secrets.push(p.to_string());
                    }
                    None if !url.username().is_empty() => {
                        secrets.push(decode(url.username()));
                        secrets.push(url.username().to_string());
                    }
                    None => {}
                }
            }
        }
        secrets.retain(|s| !s.is_empty());
        secrets
    }

    /// The URL with its password (or token) replaced by `***`.
    pub fn redacted_url(&self) -> String {
        bus_core::redact_url(&self.url)
    }

    /// Remove passwords and tokens from a text (error messages of the client library).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = bus_core::scrub_urls(text);
        for secret in self.secrets() {
            out = out.replace(&secret, "***");
        }
        out
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth_override {
            None => "from the URL".to_string(),
            Some(Auth::None) => "none".to_string(),
            Some(Auth::UserPassword(user, _)) => format!("user `{user}`, password ***"),
            Some(Auth::Token(_)) => "token ***".to_string(),
        };
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_url())
            .field("auth", &auth)
            .field("connection_name", &self.connection_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("fetch_wait", &self.fetch_wait)
            .field("event_max_age", &self.event_max_age)
            .field("duplicate_window", &self.duplicate_window)
            .field("progress", &self.progress)
            .field("confirm_acks", &self.confirm_acks)
            .field("naming", &self.naming)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

#[cfg(test)]
mod tests;

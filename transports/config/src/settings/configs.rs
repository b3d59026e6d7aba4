//! Each transport's own configuration ([`AmqpConfig`], [`NatsConfig`], [`RedisConfig`], the
//! in-memory transport) built from [`TransportSettings`], to adjust further before connecting.

use std::path::Path;

use bus_transport_amqp::AmqpConfig;
use bus_transport_memory::MemoryTransport;
use bus_transport_nats::NatsConfig;
use bus_transport_redis::RedisConfig;

use super::{QueueKind, TransportKind, TransportSettings, DEFAULT_DELIVERY_LIMIT};
use crate::error::ConfigError;

impl TransportSettings {
    /// A new in-memory transport with these settings (capacity, send timeout).
    ///
    /// ```
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings { memory_capacity: Some(100), ..Default::default() };
    /// let transport = settings.memory_transport();
    /// # drop(transport);
    /// ```
    pub fn memory_transport(&self) -> MemoryTransport {
        let mut transport = MemoryTransport::new();
        if let Some(capacity) = self.memory_capacity {
            transport = transport.capacity(capacity);
        }
        if let Some(timeout) = self.publish_timeout {
            transport = transport.send_timeout(timeout);
        }
        if let Some(serialize) = self.memory_serialize {
            transport = transport.serialize(serialize);
        }
        transport
    }

    /// The AMQP transport configuration these settings describe, to adjust further (naming,
    /// TLS) before [`AmqpTransport::connect`]. `connection_name` is used unless the settings
    /// name one.
    ///
    /// [`AmqpTransport::connect`]: bus_transport_amqp::AmqpTransport::connect
    ///
    /// ```
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings { url: "amqp://app:pw@rabbit/%2f".into(), ..Default::default() };
    /// let config = settings.amqp_config("billing")?;
    /// assert_eq!(config.connection_name, "billing");
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// ```
    pub fn amqp_config(&self, connection_name: &str) -> Result<AmqpConfig, ConfigError> {
        match self.kind()? {
            TransportKind::Amqp | TransportKind::Amqps => {}
            _ => {
                return Err(ConfigError::InvalidUrl {
                    url: self.redacted_url(),
                    reason: "an AMQP configuration needs an amqp:// or amqps:// URL".into(),
                })
            }
        }
        self.validate()?;
        let mut config = AmqpConfig::new(self.url.trim()).connection_name(
            self.connection_name
                .clone()
                .unwrap_or_else(|| connection_name.to_string()),
        );
        if let Some(timeout) = self.publish_timeout {
            config = config.publish_timeout(timeout);
        }
        if let Some(timeout) = self.connect_timeout {
            config = config.connect_timeout(timeout);
        }
        if self.queue_type == QueueKind::Quorum {
            config = config.quorum_queues(self.delivery_limit.unwrap_or(DEFAULT_DELIVERY_LIMIT));
        }
        if let (Some(user), Some(password)) = (&self.amqp_user, &self.amqp_password) {
            config = config.credentials(user, password);
        }
        if let Some(prefix) = &self.prefix {
            config = config.namespace(prefix);
        }
        if let Some(path) = self.readable_ca_file()? {
            let pem = std::fs::read_to_string(path).map_err(|e| unreadable_ca_file(path, &e))?;
            config = config.tls_ca_pem(pem);
        }
        Ok(config)
    }

    /// The NATS transport configuration these settings describe, to adjust further (naming,
    /// limits, a CA file) before [`NatsTransport::connect`]: `connection_name` (used unless
    /// the settings name one), `publish_timeout`, `connect_timeout` and `confirm_acks`. Credentials come from
    /// the URL (`nats://user:password@host` or `nats://token@host`).
    ///
    /// [`NatsTransport::connect`]: bus_transport_nats::NatsTransport::connect
    ///
    /// ```
    /// use std::time::Duration;
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings {
    ///     url: "nats://app:pw@nats.internal:4222".into(),
    ///     publish_timeout: Some(Duration::from_secs(3)),
    ///     ..Default::default()
    /// };
    /// let config = settings.nats_config("billing")?;
    /// assert_eq!(config.connection_name, "billing");
    /// assert_eq!(config.publish_timeout, Duration::from_secs(3));
    /// assert_eq!(config.redacted_url(), "nats://app:***@nats.internal:4222");
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// ```
    pub fn nats_config(&self, connection_name: &str) -> Result<NatsConfig, ConfigError> {
        match self.kind()? {
            TransportKind::Nats | TransportKind::NatsTls => {}
            _ => {
                return Err(ConfigError::InvalidUrl {
                    url: self.redacted_url(),
                    reason: "a NATS configuration needs a nats:// or tls:// URL".into(),
                })
            }
        }
        self.validate()?;
        let mut config = NatsConfig::new(self.url.trim()).connection_name(
            self.connection_name
                .clone()
                .unwrap_or_else(|| connection_name.to_string()),
        );
        if let Some(timeout) = self.publish_timeout {
            config = config.publish_timeout(timeout);
        }
        if let Some(timeout) = self.connect_timeout {
            config = config.connect_timeout(timeout);
        }
        if let Some(confirm) = self.confirm_acks {
            config = config.confirm_acks(confirm);
        }
        if let Some(prefix) = &self.prefix {
            config = config.namespace(prefix);
        }
        if let Some(path) = self.readable_ca_file()? {
            config = config.tls_ca_file(path);
        }
        Ok(config)
    }

    /// The Redis transport configuration these settings describe, to adjust further (key
    /// prefix, reclaim settings) before [`RedisTransport::connect`]: `connection_name` (used
    /// unless the settings name one) is the first part of the consumer names,
    /// `publish_timeout` the operation timeout (it bounds every call: send, ack, declare),
    /// `connect_timeout` the connect timeout.
    ///
    /// [`RedisTransport::connect`]: bus_transport_redis::RedisTransport::connect
    ///
    /// ```
    /// use std::time::Duration;
    /// use bus_transport_config::TransportSettings;
    ///
    /// let settings = TransportSettings {
    ///     url: "redis://:pw@redis.internal:6379/0".into(),
    ///     publish_timeout: Some(Duration::from_secs(3)),
    ///     ..Default::default()
    /// };
    /// let config = settings.redis_config("billing")?;
    /// assert_eq!(config.consumer_name, "billing");
    /// assert_eq!(config.operation_timeout, Duration::from_secs(3));
    /// assert_eq!(config.redacted_url(), "redis://:***@redis.internal:6379/0");
    /// # Ok::<(), bus_transport_config::ConfigError>(())
    /// ```
    pub fn redis_config(&self, connection_name: &str) -> Result<RedisConfig, ConfigError> {
        match self.kind()? {
            TransportKind::Redis | TransportKind::RedisTls => {}
            _ => {
                return Err(ConfigError::InvalidUrl {
                    url: self.redacted_url(),
                    reason: "a Redis configuration needs a redis:// or rediss:// URL".into(),
                })
            }
        }
        self.validate()?;
        let mut config = RedisConfig::new(self.url.trim()).consumer_name(
            self.connection_name
                .clone()
                .unwrap_or_else(|| connection_name.to_string()),
        );
        if let Some(timeout) = self.publish_timeout {
            config = config.operation_timeout(timeout);
        }
        if let Some(prefix) = &self.prefix {
            config = config.namespace(prefix);
        }
        if let Some(timeout) = self.connect_timeout {
            config = config.connect_timeout(timeout);
        }
        if let Some(path) = self.readable_ca_file()? {
            config = config.tls_ca_file(path);
        }
        Ok(config)
    }

    /// The `tls_ca_file` setting when the URL asks for TLS, checked readable now, so a wrong
    /// path is a configuration error naming the setting rather than a TLS failure at connect
    /// time.
    fn readable_ca_file(&self) -> Result<Option<&Path>, ConfigError> {
        let tls = matches!(
            self.kind()?,
            TransportKind::Amqps | TransportKind::NatsTls | TransportKind::RedisTls
        );
        let Some(path) = self.tls_ca_file.as_deref().filter(|_| tls) else {
            return Ok(None);
        };
        std::fs::File::open(path).map_err(|e| unreadable_ca_file(path, &e))?;
        Ok(Some(path))
    }
}

/// The error for a `tls_ca_file` that cannot be read, naming the setting and the path.
fn unreadable_ca_file(path: &Path, error: &std::io::Error) -> ConfigError {
    ConfigError::InvalidSetting {
        setting: "tls_ca_file",
        reason: format!("cannot read `{}`: {error}", path.display()),
    }
}

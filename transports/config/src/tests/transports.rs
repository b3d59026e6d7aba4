//! Each transport's configuration as the settings build it (NATS, Redis, the ack settings, a
//! CA file for TLS), and opening the in-memory transport.

use std::time::Duration;

use figment::Jail;

use super::err;
use crate::{ConfigError, TransportKind, TransportSettings};

#[test]
fn nats_and_redis_come_from_the_environment() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "bus.toml",
            "[transport]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nconnect_timeout = \"2s\"",
        )?;
        jail.set_env("BUS_TRANSPORT", "nats://127.0.0.1:4222");
        jail.set_env("BUS_PUBLISH_TIMEOUT", "750ms");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.kind().map_err(err)?, TransportKind::Nats);
        let nats = s.nats_config("order-service").map_err(err)?;
        assert_eq!(nats.connection_name, "order-service");
        assert_eq!(nats.publish_timeout, Duration::from_millis(750));
        assert_eq!(nats.connect_timeout, Duration::from_secs(2)); // from the file
        assert!(s.amqp_config("x").is_err());
        assert!(s.redis_config("x").is_err());

        jail.set_env("BUS_TRANSPORT", "tls://app:pw@nats.internal:4222");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.kind().map_err(err)?, TransportKind::NatsTls);

        jail.set_env("BUS_TRANSPORT", "redis://127.0.0.1:6379/0");
        jail.set_env("BUS_CONNECTION_NAME", "billing-eu");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.kind().map_err(err)?, TransportKind::Redis);
        let redis = s.redis_config("ignored").map_err(err)?;
        assert_eq!(redis.consumer_name, "billing-eu");
        assert_eq!(redis.operation_timeout, Duration::from_millis(750));
        assert_eq!(redis.connect_timeout, Duration::from_secs(2));
        assert_eq!(redis.redacted_url(), "redis://127.0.0.1:6379/0");
        assert!(s.nats_config("x").is_err());
        assert!(!s.is_memory());

        jail.set_env("BUS_TRANSPORT", "rediss://:pw@127.0.0.1:6380");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.kind().map_err(err)?, TransportKind::RedisTls);
        let redis = s.redis_config("x").map_err(err)?;
        assert!(redis.is_tls());
        assert_eq!(redis.redacted_url(), "rediss://:***@127.0.0.1:6380");
        Ok(())
    });
}

#[test]
fn nats_and_redis_come_from_the_file() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "bus.toml",
            r#"
            [transport]
            url = "nats://n1:4222,nats://n2:4222"
            connection_name = "billing"
            connect_timeout = 4
            "#,
        )?;
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.kind().map_err(err)?, TransportKind::Nats);
        let nats = s.nats_config("ignored").map_err(err)?;
        assert_eq!(nats.connection_name, "billing");
        assert_eq!(nats.connect_timeout, Duration::from_secs(4));
        assert_eq!(nats.publish_timeout, Duration::from_secs(10)); // the transport's default

        jail.create_file(
            "bus.toml",
            "[transport]\nurl = \"redis://redis.internal:6379/2\"",
        )?;
        let s = TransportSettings::load().map_err(err)?;
        let redis = s.redis_config("shipping-service").map_err(err)?;
        assert_eq!(redis.consumer_name, "shipping-service");
        assert_eq!(redis.operation_timeout, Duration::from_secs(5)); // the transport's default
        Ok(())
    });
}

#[test]
fn ack_settings_reach_the_transport_configuration_and_bad_flags_are_errors() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("BUS_TRANSPORT", "nats://127.0.0.1:4222");
        let s = TransportSettings::load().map_err(err)?;
        assert!(
            s.nats_config("x").map_err(err)?.confirm_acks,
            "on by default"
        );
        jail.set_env("BUS_CONFIRM_ACKS", "off");
        let s = TransportSettings::load().map_err(err)?;
        assert!(!s.nats_config("x").map_err(err)?.confirm_acks);
        jail.set_env("BUS_CONFIRM_ACKS", "maybe");
        let e = TransportSettings::load().expect_err("not a flag");
        let text = e.to_string();
        assert!(
            text.contains("BUS_CONFIRM_ACKS") && text.contains("maybe"),
            "{text}"
        );
        Ok(())
    });
}

#[test]
fn a_ca_file_reaches_every_tls_transport_and_a_missing_one_is_an_error() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        jail.create_file("company-ca.pem", pem)?;
        let ca = jail.directory().join("company-ca.pem");
        jail.create_file(
            "bus.toml",
            "[transport]\nurl = \"amqps://app:pw@rabbit.internal/%2f\"\ntls_ca_file = \"company-ca.pem\"",
        )?;
        let s = TransportSettings::load().map_err(err)?;
        let amqp = s.amqp_config("x").map_err(err)?;
        assert_eq!(
            amqp.tls_ca_pem.as_deref(),
            Some(pem),
            "AMQP trusts the file's PEM"
        );

        jail.set_env("BUS_TRANSPORT", "tls://nats.internal:4222");
        jail.set_env("BUS_TLS_CA_FILE", ca.display());
        let s = TransportSettings::load().map_err(err)?;
        let nats = s.nats_config("x").map_err(err)?;
        assert_eq!(nats.tls_ca_file.as_deref(), Some(ca.as_path()));

        jail.set_env("BUS_TRANSPORT", "rediss://:pw@redis.internal:6380");
        let s = TransportSettings::load().map_err(err)?;
        let redis = s.redis_config("x").map_err(err)?;
        assert_eq!(redis.tls_ca_file.as_deref(), Some(ca.as_path()));

        // A path that cannot be read fails when the configuration is built, naming the setting,
        // for every transport that would use it.
        jail.set_env("BUS_TLS_CA_FILE", "no-such-ca.pem");
        let s = TransportSettings::load().map_err(err)?;
        let e = s.redis_config("x").expect_err("missing CA file");
        assert!(
            matches!(
                e,
                ConfigError::InvalidSetting {
                    setting: "tls_ca_file",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("no-such-ca.pem"), "{e}");
        jail.set_env("BUS_TRANSPORT", "tls://nats.internal:4222");
        let s = TransportSettings::load().map_err(err)?;
        assert!(s.nats_config("x").is_err());
        jail.set_env("BUS_TRANSPORT", "amqps://app:pw@rabbit.internal/%2f");
        let s = TransportSettings::load().map_err(err)?;
        assert!(s.amqp_config("x").is_err());

        // Plain URLs have no use for it: one BUS_TLS_CA_FILE shared by several services does
        // not break those that connect without TLS.
        jail.set_env("BUS_TLS_CA_FILE", ca.display());
        for plain in ["redis://127.0.0.1:6379", "nats://127.0.0.1:4222"] {
            jail.set_env("BUS_TRANSPORT", plain);
            let s = TransportSettings::load().map_err(err)?;
            let redis_ca = s.redis_config("x").ok().and_then(|c| c.tls_ca_file);
            let nats_ca = s.nats_config("x").ok().and_then(|c| c.tls_ca_file);
            assert_eq!((redis_ca, nats_ca), (None, None), "{plain}");
        }
        jail.set_env("BUS_TRANSPORT", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.amqp_config("x").map_err(err)?.tls_ca_pem, None);
        Ok(())
    });
}

#[test]
fn memory_settings_open_a_memory_transport() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = TransportSettings {
        memory_capacity: Some(2),
        ..TransportSettings::default()
    };
    let transport = rt.block_on(s.open("test")).unwrap();
    assert_eq!(transport.name(), "memory");
    assert!(transport.as_memory().is_some());
    assert!(transport.as_amqp().is_none());
    assert!(transport.as_nats().is_none());
    assert!(transport.as_redis().is_none());
    assert_eq!(transport.shared().name(), "memory");
    rt.block_on(transport.close()).unwrap();
}

//! Loading: the file, `BUS_CONFIG`, the `BUS_*` variables and which one wins, and errors
//! that say where the bad value was and what is wrong with it.

use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::{Figment, Jail};

use super::err;
use crate::{ConfigError, QueueKind, TransportKind, TransportSettings};

#[test]
fn nothing_configured_means_memory() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let settings = TransportSettings::load().map_err(err)?;
        assert_eq!(settings, TransportSettings::default());
        assert_eq!(settings.kind().map_err(err)?, TransportKind::Memory);
        Ok(())
    });
}

#[test]
fn the_file_is_read() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "bus.toml",
            r#"
            [transport]
            url = "amqp://guest:guest@127.0.0.1:5672/%2f"
            connection_name = "billing-eu"
            publish_timeout = "500ms"
            connect_timeout = 3
            queue_type = "quorum"
            delivery_limit = 7
            memory_capacity = 64
            batched_acks = true
            confirm_acks = false

            [endpoints.sales]  # other tables are not ours to judge
            concurrency = 4
            "#,
        )?;
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.kind().map_err(err)?, TransportKind::Amqp);
        assert_eq!(s.connection_name.as_deref(), Some("billing-eu"));
        assert_eq!(s.publish_timeout, Some(Duration::from_millis(500)));
        assert_eq!(s.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(s.queue_type, QueueKind::Quorum);
        assert_eq!(s.delivery_limit, Some(7));
        assert_eq!(s.memory_capacity, Some(64));
        assert_eq!((s.batched_acks, s.confirm_acks), (Some(true), Some(false)));
        let amqp = s.amqp_config("ignored").map_err(err)?;
        assert_eq!(amqp.connection_name, "billing-eu");
        assert_eq!(
            amqp.queue_type,
            bus_transport_amqp::QueueType::Quorum { delivery_limit: 7 }
        );
        Ok(())
    });
}

#[test]
fn the_environment_overrides_the_file() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "bus.toml",
            r#"
            [transport]
            url = "memory"
            connection_name = "from-file"
            publish_timeout = "1s"
            queue_type = "quorum"
            "#,
        )?;
        jail.set_env("BUS_TRANSPORT", "amqps://app:pw@rabbit.internal:5671/prod");
        jail.set_env("BUS_PUBLISH_TIMEOUT", "2m 5s");
        jail.set_env("BUS_DELIVERY_LIMIT", "3");
        jail.set_env("BUS_CONNECTION_NAME", ""); // empty counts as unset
        jail.set_env("BUS_BATCHED_ACKS", "yes");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.batched_acks, Some(true));
        assert_eq!(s.kind().map_err(err)?, TransportKind::Amqps);
        assert_eq!(s.url, "amqps://app:pw@rabbit.internal:5671/prod");
        assert_eq!(s.publish_timeout, Some(Duration::from_secs(125)));
        assert_eq!(s.connection_name.as_deref(), Some("from-file"));
        assert_eq!(s.queue_type, QueueKind::Quorum); // from the file
        assert_eq!(s.delivery_limit, Some(3)); // from the environment
        Ok(())
    });
}

#[test]
fn bus_config_names_the_file() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "bus.toml",
            "[transport]\nconnection_name = \"default-file\"",
        )?;
        jail.create_dir("conf")?;
        jail.create_file("conf/prod.toml", "[transport]\nconnection_name = \"prod\"")?;
        jail.set_env("BUS_CONFIG", "conf/prod.toml");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.connection_name.as_deref(), Some("prod"));

        jail.set_env("BUS_CONFIG", "conf/missing.toml");
        match TransportSettings::load() {
            Err(ConfigError::MissingFile(path)) => {
                assert!(path.ends_with("missing.toml"));
            }
            other => panic!("expected MissingFile, got {other:?}"),
        }
        Ok(())
    });
}

#[test]
fn environment_values_are_verbatim() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("BUS_TRANSPORT", "amqp://127.0.0.1:5672/%2f");
        jail.set_env("BUS_AMQP_USER", "true");
        jail.set_env("BUS_AMQP_PASSWORD", "0042");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.amqp_user.as_deref(), Some("true"));
        assert_eq!(s.amqp_password.as_deref(), Some("0042"));
        Ok(())
    });
}

#[test]
fn a_bad_environment_value_names_its_variable() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("BUS_DELIVERY_LIMIT", "lots");
        let text = TransportSettings::load().unwrap_err().to_string();
        assert!(text.contains("BUS_DELIVERY_LIMIT"), "{text}");
        assert!(text.contains("`lots` is not a whole number"), "{text}");

        jail.set_env("BUS_DELIVERY_LIMIT", "5");
        jail.set_env("BUS_CONNECT_TIMEOUT", "soon");
        let text = TransportSettings::load().unwrap_err().to_string();
        assert!(text.contains("BUS_CONNECT_TIMEOUT"), "{text}");
        assert!(text.contains("invalid duration `soon`"), "{text}");

        jail.set_env("BUS_CONNECT_TIMEOUT", "5s");
        jail.set_env("BUS_QUEUE_TYPE", "stream");
        let text = TransportSettings::load().unwrap_err().to_string();
        assert!(text.contains("BUS_QUEUE_TYPE"), "{text}");
        assert!(text.contains("classic"), "{text}");
        Ok(())
    });
}

#[test]
fn unknown_keys_in_the_file_are_errors() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("bus.toml", "[transport]\nurll = \"memory\"")?;
        let text = TransportSettings::load().unwrap_err().to_string();
        assert!(text.contains("urll"), "{text}");
        assert!(text.contains("bus.toml"), "{text}");
        Ok(())
    });
}

#[test]
fn errors_say_where_and_what() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("bus.toml", "[transport]\nqueue_type = \"stream\"")?;
        assert_eq!(
            TransportSettings::load().unwrap_err().to_string(),
            "invalid bus configuration: bus.toml, `transport.queue_type`: unknown value `stream`; expected classic or quorum"
        );
        jail.create_file("bus.toml", "[transport]\nurl = \"amqp://u:pw@h\nx = 1")?;
        assert_eq!(
            TransportSettings::load().unwrap_err().to_string(),
            "invalid bus configuration: bus.toml: TOML parse error at line 2, column 21: invalid basic string"
        );
        jail.create_file("bus.toml", "")?;
        jail.set_env("BUS_DELIVERY_LIMIT", "lots");
        assert_eq!(
            TransportSettings::load().unwrap_err().to_string(),
            "invalid bus configuration: BUS_DELIVERY_LIMIT: `lots` is not a whole number"
        );
        Ok(())
    });
}

#[test]
fn invalid_combinations() {
    let s = TransportSettings {
        url: "amqp://localhost".into(),
        amqp_user: Some("app".into()),
        ..TransportSettings::default()
    };
    let figment = Figment::from(Toml::string(
        "[transport]\nurl = \"amqp://localhost\"\namqp_user = \"app\"",
    ));
    let e = TransportSettings::load_from(&figment).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::InvalidSetting {
                setting: "amqp_password",
                ..
            }
        ),
        "{e}"
    );
    assert!(s.amqp_config("x").is_err());

    let figment = Figment::from(Toml::string("[transport]\nmemory_capacity = 0"));
    let e = TransportSettings::load_from(&figment).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::InvalidSetting {
                setting: "memory_capacity",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn metrics_addr_is_unset_by_default_and_read_from_the_file_or_the_environment() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        assert_eq!(TransportSettings::load().map_err(err)?.metrics_addr, None);

        jail.create_file("bus.toml", "[transport]\nmetrics_addr = \"[::1]:9464\"")?;
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.metrics_addr, Some("[::1]:9464".parse().unwrap()));

        jail.set_env("BUS_METRICS_ADDR", " 0.0.0.0:9100 ");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.metrics_addr, Some("0.0.0.0:9100".parse().unwrap()));
        Ok(())
    });
}

#[test]
fn an_unparsable_metrics_addr_names_the_setting() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        for bad in ["9464", "localhost:9464", "127.0.0.1", "127.0.0.1:http"] {
            jail.set_env("BUS_METRICS_ADDR", bad);
            let e = TransportSettings::load().unwrap_err();
            assert!(matches!(e, ConfigError::Invalid(_)), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("BUS_METRICS_ADDR"), "{text}");
            assert!(
                text.contains(&format!("`{bad}` is not a socket address")),
                "{text}"
            );
        }
        jail.set_env("BUS_METRICS_ADDR", "");

        jail.create_file("bus.toml", "[transport]\nmetrics_addr = 9464")?;
        let text = TransportSettings::load().unwrap_err().to_string();
        assert!(text.contains("`transport.metrics_addr`"), "{text}");
        assert!(text.contains("127.0.0.1:9464"), "{text}");
        Ok(())
    });
}

#[test]
fn the_prefix_and_memory_serialize_come_from_the_file_or_the_environment() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "bus.toml",
            r#"
            [transport]
            url = "nats://127.0.0.1:4222"
            prefix = "staging"
            "#,
        )?;
        jail.set_env("BUS_MEMORY_SERIALIZE", "true");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.prefix.as_deref(), Some("staging"));
        assert_eq!(s.memory_serialize, Some(true));
        let config = s.nats_config("billing").map_err(err)?;
        assert!(
            config
                .naming
                .command_subject("billing")
                .starts_with("staging."),
            "the namespace reaches the NATS names"
        );
        jail.set_env("BUS_PREFIX", "test-42");
        let s = TransportSettings::load().map_err(err)?;
        assert_eq!(s.prefix.as_deref(), Some("test-42"), "the environment wins");
        Ok(())
    });
}

#[test]
fn a_prefix_brokers_cannot_use_names_the_setting() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("BUS_TRANSPORT", "redis://127.0.0.1:6379");
        jail.set_env("BUS_PREFIX", "has space");
        let e = TransportSettings::load().expect_err("an unusable prefix");
        assert!(
            matches!(
                e,
                ConfigError::InvalidSetting {
                    setting: "prefix",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("has space"), "{e}");
        Ok(())
    });
}

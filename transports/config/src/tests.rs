//! Loading from files and the environment (inside `figment::Jail`, which gives each test its
//! own working directory and environment), scheme errors, and redaction.

// `Jail` closures must return `figment::Error`, which is large; that is figment's API.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::{Figment, Jail};

use crate::{ConfigError, QueueKind, TransportKind, TransportSettings};

const SECRET: &str = "pa55-Secret";

fn err(e: ConfigError) -> figment::Error {
    figment::Error::from(e.to_string())
}

fn with_url(url: &str) -> TransportSettings {
    TransportSettings {
        url: url.into(),
        ..TransportSettings::default()
    }
}

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
fn unknown_schemes_list_the_supported_ones() {
    let e = with_url("kafka://broker:9092").kind().unwrap_err();
    assert!(
        matches!(e, ConfigError::UnknownScheme { ref scheme, .. } if scheme == "kafka"),
        "{e}"
    );
    let e = with_url("mqtt://u:secret@broker").kind().unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ConfigError::UnknownScheme { .. }), "{text}");
    assert!(
        text.contains("supported: memory, amqp, amqps, nats, tls, redis"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");

    for url in ["rediss://r:6380", "REDISS://:secret@r:6380/0"] {
        assert_eq!(
            with_url(url).kind().map_err(|e| e.to_string()),
            Ok(TransportKind::RedisTls)
        );
    }

    let e = with_url("rabbitmq").kind().unwrap_err();
    assert!(e
        .to_string()
        .contains("unknown transport scheme `rabbitmq`"));
}

#[test]
fn memory_and_amqp_spellings() {
    for url in ["memory", " MEMORY ", "memory://"] {
        assert_eq!(
            with_url(url).kind().unwrap(),
            TransportKind::Memory,
            "{url}"
        );
    }
    assert!(with_url("memory://somewhere").kind().is_err());
    assert!(with_url("").kind().is_err());
    assert_eq!(
        with_url("AMQP://guest:guest@localhost").kind().unwrap(),
        TransportKind::Amqp
    );
    let e = with_url("amqp://").kind().unwrap_err();
    assert!(matches!(e, ConfigError::InvalidUrl { .. }), "{e}");
    let e = with_url("guest:hunter2@localhost:5672").kind().unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn nats_and_redis_spellings() {
    for (url, kind) in [
        ("nats://127.0.0.1:4222", TransportKind::Nats),
        (" NATS://app:pw@nats.internal ", TransportKind::Nats),
        ("nats://t0ken@nats.internal:4222", TransportKind::Nats),
        ("nats://n1:4222,nats://n2:4222", TransportKind::Nats),
        ("nats://n1:4222, nats://n2:4222,", TransportKind::Nats),
        ("tls://nats.internal:4222", TransportKind::NatsTls),
        ("nats://n1:4222,tls://n2:4222", TransportKind::NatsTls),
        ("redis://127.0.0.1:6379", TransportKind::Redis),
        ("redis://127.0.0.1:6379/", TransportKind::Redis),
        ("redis://:pw@127.0.0.1:6379/3", TransportKind::Redis),
        ("Redis://user:pw@redis.internal", TransportKind::Redis),
    ] {
        assert_eq!(with_url(url).kind().unwrap(), kind, "{url}");
    }
    for url in [
        "nats",
        "nats://",
        "tls://:4222",
        "nats://n1:4222,redis://n2:6379",
        "nats://n1:port",
        "redis",
        "redis://",
        "redis://127.0.0.1:6379/zero",
        "redis://127.0.0.1:6379/0/1",
    ] {
        let e = with_url(url).kind().unwrap_err();
        assert!(matches!(e, ConfigError::InvalidUrl { .. }), "{url}: {e}");
    }
    let e = with_url(&format!("redis://:{SECRET}@127.0.0.1:6379/zero"))
        .kind()
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains(SECRET), "{e}");
    assert!(e.to_string().contains("database number"), "{e}");
}

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
fn nats_and_redis_secrets_never_show() {
    let urls = [
        format!("nats://shop:{SECRET}@nats.internal:4222"),
        format!("tls://shop:{SECRET}@nats.internal:4222"),
        format!("nats://{SECRET}@nats.internal:4222"),
        format!("nats://n0:4222,nats://shop:{SECRET}@n1:4222"),
        format!("redis://:{SECRET}@redis.internal:6379/0"),
        format!("redis://shop:{SECRET}@redis.internal:6379"),
    ];
    for url in &urls {
        let s = with_url(url);
        let shown = format!("{s:?} {s:#?} {}", s.redacted_url());
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("***@"), "{shown}");
        if let Ok(config) = s.nats_config("x") {
            assert!(!format!("{config:?}").contains(SECRET));
        }
        if let Ok(config) = s.redis_config("x") {
            assert!(!format!("{config:?}").contains(SECRET));
        }
    }
    assert_eq!(
        with_url(&urls[2]).redacted_url(),
        "nats://***@nats.internal:4222"
    );
    assert_eq!(
        with_url(&urls[4]).redacted_url(),
        "redis://:***@redis.internal:6379/0"
    );
    assert_eq!(
        with_url(&urls[5]).redacted_url(),
        "redis://shop:***@redis.internal:6379"
    );

    Jail::expect_with(|jail| {
        jail.clear_env();
        let check = |what: &str, result: Result<TransportSettings, ConfigError>| {
            let e = result.expect_err(what);
            let text = format!("{e} {e:?}");
            assert!(!text.contains(SECRET), "{what}: {text}");
        };
        for url in &urls {
            // A flat `transport = "..."` instead of the table: serde quotes the value it found.
            jail.create_file("bus.toml", &format!("transport = \"{url}\""))?;
            check("flat key", TransportSettings::load());
            // The URL next to a bad value.
            jail.create_file(
                "bus.toml",
                &format!("[transport]\nurl = \"{url}\"\nconnect_timeout = \"soon\""),
            )?;
            check("bad value next to the URL", TransportSettings::load());
        }
        jail.create_file("bus.toml", "")?;
        for url in [
            format!("nats://shop:{SECRET}@[bad-host"),
            format!("nats://{SECRET}@n1:port"),
            format!("redis://:{SECRET}@[bad-host"),
            format!("rediss://:{SECRET}@[bad-host"),
        ] {
            jail.set_env("BUS_TRANSPORT", &url);
            check(&url, TransportSettings::load());
        }
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
fn the_password_never_shows_in_debug() {
    let s = TransportSettings {
        url: format!("amqp://shop:{SECRET}@rabbit:5672/%2f"),
        amqp_user: Some("shop".into()),
        amqp_password: Some(SECRET.into()),
        ..TransportSettings::default()
    };
    let shown = format!("{s:?} {s:#?} {}", s.redacted_url());
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("amqp://shop:***@rabbit:5672/%2f"), "{shown}");
    let config = s.amqp_config("x").unwrap();
    assert!(!format!("{config:?}").contains(SECRET));
}

#[test]
fn the_password_never_shows_in_configuration_errors() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let url = format!("amqp://shop:{SECRET}@rabbit:5672/%2f");
        let check = |what: &str, result: Result<TransportSettings, ConfigError>| {
            let e = result.expect_err(what);
            let text = format!("{e} {e:?}");
            assert!(!text.contains(SECRET), "{what}: {text}");
        };

        // A flat `transport = "..."` instead of the table: serde quotes the value it found.
        jail.create_file("bus.toml", &format!("transport = \"{url}\""))?;
        check("flat key", TransportSettings::load());

        // A TOML syntax error on the line holding the URL: the parser quotes the line.
        jail.create_file(
            "bus.toml",
            &format!("[transport]\nurl = \"{url}\nqueue_type = 1"),
        )?;
        check("syntax error", TransportSettings::load());

        // A password that is not a string.
        jail.create_file(
            "bus.toml",
            "[transport]\namqp_user = \"u\"\namqp_password = 1234567",
        )?;
        let e = TransportSettings::load().unwrap_err().to_string();
        assert!(!e.contains("1234567"), "{e}");
        assert!(e.contains("amqp_password"), "{e}");

        // The password in the URL and a bad value elsewhere.
        jail.create_file(
            "bus.toml",
            &format!("[transport]\nurl = \"{url}\"\nmemory_capacity = \"x\""),
        )?;
        check("bad value next to the URL", TransportSettings::load());

        // An environment URL with an unknown scheme.
        jail.create_file("bus.toml", "")?;
        jail.set_env("BUS_TRANSPORT", format!("amqq://shop:{SECRET}@rabbit"));
        check("unknown scheme", TransportSettings::load());
        jail.set_env("BUS_TRANSPORT", format!("amqp://shop:{SECRET}@[bad-host"));
        check("malformed URL", TransportSettings::load());
        Ok(())
    });
}

#[test]
fn the_password_never_shows_in_connection_errors() {
    // Nothing listens on port 1 of the loopback: the connection is refused at once.
    let s = TransportSettings {
        url: format!("amqp://shop:{SECRET}@127.0.0.1:1/%2f"),
        connect_timeout: Some(Duration::from_secs(5)),
        ..TransportSettings::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = match rt.block_on(s.connect("test")) {
        Ok(_) => panic!("nothing should listen on 127.0.0.1:1"),
        Err(e) => e,
    };
    let text = format!("{e} {e:?}");
    assert!(matches!(e, ConfigError::Connect { .. }), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("amqp://shop:***@127.0.0.1:1/%2f"), "{text}");
}

#[test]
fn the_password_never_shows_in_nats_and_redis_connection_errors() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (url, shown) in [
        (
            format!("nats://shop:{SECRET}@127.0.0.1:1"),
            "nats://shop:***@127.0.0.1:1",
        ),
        (
            format!("nats://{SECRET}@127.0.0.1:1"),
            "nats://***@127.0.0.1:1",
        ),
        (
            format!("redis://:{SECRET}@127.0.0.1:1/0"),
            "redis://:***@127.0.0.1:1/0",
        ),
        (
            format!("redis://shop:{SECRET}@127.0.0.1:1"),
            "redis://shop:***@127.0.0.1:1",
        ),
    ] {
        let s = TransportSettings {
            url,
            connect_timeout: Some(Duration::from_secs(5)),
            ..TransportSettings::default()
        };
        let e = match rt.block_on(s.open("test")) {
            Ok(_) => panic!("nothing should listen on 127.0.0.1:1"),
            Err(e) => e,
        };
        let text = format!("{e} {e:?}");
        assert!(matches!(e, ConfigError::Connect { .. }), "{text}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(
            text.starts_with(&format!("could not connect to {shown}: ")),
            "{text}"
        );
    }
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

//! Credentials never shown: not in `Debug` output, not in configuration errors (whatever the
//! source quotes), not in connection errors, for every transport.

use std::time::Duration;

use figment::Jail;

use super::{with_url, SECRET};
use crate::{ConfigError, TransportSettings};

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

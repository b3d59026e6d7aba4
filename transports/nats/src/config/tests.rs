//! Tests of the configuration and the naming.
use super::*;

#[test]
fn credentials_come_from_the_url_and_are_redacted() {
    let c = NatsConfig::new("nats://app:p%40ss@127.0.0.1:4222");
    let (servers, auth) = c.servers_and_auth().unwrap();
    assert_eq!(servers, vec!["nats://127.0.0.1:4222".to_string()]);
    assert!(auth == Auth::UserPassword("app".into(), "p@ss".into()));
    assert_eq!(c.redacted_url(), "nats://app:***@127.0.0.1:4222");
    assert_eq!(c.scrub("login p@ss refused"), "login *** refused");
    assert!(!format!("{c:?}").contains("p%40ss"));
}

#[test]
fn a_user_without_password_is_a_token() {
    let c = NatsConfig::new("nats://s3cr3t-token@localhost:4222,nats://localhost:4223");
    let (servers, auth) = c.servers_and_auth().unwrap();
    assert_eq!(servers.len(), 2);
    assert!(auth == Auth::Token("s3cr3t-token".into()));
    assert!(!c.redacted_url().contains("s3cr3t"));
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

#[test]
fn overrides_win_and_stay_secret() {
    let c = NatsConfig::new("nats://localhost:4222").credentials("u", "canary-91");
    let (_, auth) = c.servers_and_auth().unwrap();
    assert!(auth == Auth::UserPassword("u".into(), "canary-91".into()));
    assert!(!format!("{c:?}").contains("canary-91"));
    assert_eq!(c.scrub("x canary-91 y"), "x *** y");
}

#[test]
fn bad_urls_are_config_errors() {
    assert!(NatsConfig::new("amqp://x").servers_and_auth().is_err());
    assert!(NatsConfig::new("not a url").servers_and_auth().is_err());
    assert!(NatsConfig::new("").servers_and_auth().is_err());
}

#[test]
fn stream_names_are_safe_and_distinct() {
    let n = Naming::default();
    assert_eq!(n.endpoint_stream("billing"), "BUS_EP_billing");
    let a = n.event_stream("shop.sales.OrderPlaced");
    let b = n.event_stream("shop_sales_OrderPlaced");
    assert!(a.starts_with("BUS_EVT_shop_sales_OrderPlaced_"));
    assert_ne!(a, b);
    assert!(!a.contains('.'));
    assert_eq!(n.command_subject("billing"), "bus.cmd.billing");
    assert_eq!(
        n.event_subject("shop.sales.OrderPlaced"),
        "bus.evt.shop.sales.OrderPlaced"
    );
}

#[test]
fn without_a_namespace_the_names_are_the_defaults() {
    let n = Naming::default();
    assert_eq!(n.namespace, None);
    assert_eq!(n.command_subject("e"), "bus.cmd.e");
    assert_eq!(n.event_subject("w"), "bus.evt.w");
    assert_eq!(n.delay_subject("e"), "bus.delay.e");
    assert_eq!(n.error_subject("e"), "bus.error.e");
    assert_eq!(n.endpoint_stream("e"), "BUS_EP_e");
    assert_eq!(n.event_stream("w"), "BUS_EVT_w");
    assert_eq!(n.delay_stream("e"), "BUS_DELAY_e");
    assert_eq!(n.error_stream("e"), "BUS_ERR_e");
    assert_eq!(n.reply_subject("i"), "bus.reply.i");
    assert_eq!(n.scheduled_subject("t"), "bus.scheduled.t");
    assert_eq!(n.scheduled_subjects(), "bus.scheduled.>");
    assert_eq!(n.scheduled_stream(), "BUS_SCHEDULED");
    assert_eq!(n.stream_name_prefix(), "BUS_");
}

#[test]
fn a_namespace_starts_every_subject_and_stream() {
    let n = Naming::default().with_namespace("staging");
    assert_eq!(n.command_subject("e"), "staging.bus.cmd.e");
    assert_eq!(n.event_subject("a.W"), "staging.bus.evt.a.W");
    assert_eq!(n.delay_subject("e"), "staging.bus.delay.e");
    assert_eq!(n.error_subject("e"), "staging.bus.error.e");
    assert_eq!(n.endpoint_stream("e"), "STAGING_BUS_EP_e");
    assert_eq!(n.delay_stream("e"), "STAGING_BUS_DELAY_e");
    assert_eq!(n.error_stream("e"), "STAGING_BUS_ERR_e");
    assert!(n.event_stream("a.W").starts_with("STAGING_BUS_EVT_a_W_"));
    assert_eq!(n.reply_subject("i"), "staging.bus.reply.i");
    assert_eq!(n.scheduled_subject("t"), "staging.bus.scheduled.t");
    assert_eq!(n.scheduled_stream(), "STAGING_BUS_SCHEDULED");
    assert_eq!(n.stream_name_prefix(), "STAGING_BUS_");
    for name in [
        n.scheduled_stream(),
        n.endpoint_stream("e"),
        n.event_stream("a.W"),
        n.delay_stream("e"),
        n.error_stream("e"),
    ] {
        assert!(name.starts_with(&n.stream_name_prefix()), "{name}");
    }
    let custom = Naming {
        subject_prefix: "shop".into(),
        stream_prefix: "SHOP".into(),
        ..Naming::default()
    }
    .with_namespace("t-1");
    assert_eq!(custom.command_subject("e"), "t-1.shop.cmd.e");
    assert_eq!(custom.endpoint_stream("e"), "T-1_SHOP_EP_e");
}

#[test]
fn different_namespaces_never_share_a_stream() {
    let names = [
        "prod", "PROD", "Prod", "p.rod", "p_rod", "p rod", "prod2", "eu.west", "eu_west", "grüße",
    ];
    let streams: Vec<String> = names
        .iter()
        .map(|ns| Naming::default().with_namespace(*ns).endpoint_stream("e"))
        .collect();
    for (i, a) in streams.iter().enumerate() {
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{a} is a valid stream name"
        );
        for b in &streams[i + 1..] {
            assert_ne!(a, b);
        }
    }
    let dotted = Naming::default()
        .with_namespace("eu.west")
        .endpoint_stream("e");
    assert!(dotted.starts_with("EU_WEST_"), "{dotted}");
    assert!(dotted.ends_with("_BUS_EP_e"), "{dotted}");
    assert_ne!(
        Naming::default().endpoint_stream("e"),
        Naming::default().with_namespace("bus").endpoint_stream("e")
    );
}

#[test]
fn the_namespace_survives_a_later_naming_and_is_checked() {
    let c = NatsConfig::new("nats://h:4222")
        .namespace("blue")
        .naming(Naming {
            subject_prefix: "x".into(),
            ..Naming::default()
        });
    assert_eq!(c.naming.command_subject("e"), "blue.x.cmd.e");
    let c = c.naming(Naming::default().with_namespace("green"));
    assert_eq!(c.naming.namespace.as_deref(), Some("green"));
    assert!(Naming::default().with_namespace("a.b-c").check().is_ok());
    for bad in ["", "a b", "a.*", "a..b", ">"] {
        let err = Naming::default().with_namespace(bad).check().unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");
    }
}

#[test]
fn subject_parts_are_checked() {
    assert!(check_subject_part("endpoint", "billing.v2").is_ok());
    assert!(check_subject_part("endpoint", "a b").is_err());
    assert!(check_subject_part("endpoint", "a.*").is_err());
    assert!(check_subject_part("endpoint", "a..b").is_err());
    assert!(check_subject_part("endpoint", "").is_err());
    for bad in [
        "a\tb",
        "a\u{b}b",
        "a\u{7f}",
        "a\u{85}b",
        "a\u{a0}b",
        "ü\u{3000}",
    ] {
        assert!(check_subject_part("endpoint", bad).is_err(), "{bad:?}");
    }
    assert!(check_subject_part("endpoint", "grüße.v2").is_ok());
}

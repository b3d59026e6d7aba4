//! Test 1 of the suite: what is sent arrives unchanged, headers and body, whether routed to an
//! endpoint's queue or through an event subscription.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus_core::{header, Body, Destination, Envelope, Headers, Outgoing};

use super::bus_kit::Probe;
use super::factory::TransportFactory;
use super::kit::{
    ack, bytes_of, declare, expect_empty, expect_quiet, id_of, next_within, raw_headers, subscribe,
    within,
};
use super::tally::{assert_clean, report, Tally};

// ---- 1. round trip ----------------------------------------------------------------------------

/// Test 1: Publish/subscribe round trip: body bytes and headers arrive equal, to an endpoint queue
/// and through an event subscription: unicode values (and a unicode header name), empty values, 4
/// KiB values, a binary non-UTF-8 body, correlation ids, bus headers, many custom headers,
/// `sent_at` (to whole seconds where the transport says so), and typed bodies where supported.
pub async fn round_trip(f: &dyn TransportFactory) {
    within("round_trip", f, Duration::from_secs(30), round_trip_body(f)).await
}

struct Case {
    name: &'static str,
    headers: Headers,
    body: Vec<u8>,
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn round_trip_cases() -> Vec<Case> {
    let now = SystemTime::now();
    let whole = whole_seconds(now);
    let base = |name: &str| Headers {
        message_id: Default::default(),
        message_type: format!("conformance.rt.{name}").into(),
        content_type: "application/json".into(),
        correlation_id: None,
        sent_at: None,
        custom: BTreeMap::new(),
    };
    let kv = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let mut cases = Vec::new();

    let mut h = base("unicode");
    h.content_type = "application/json; charset=utf-8".into();
    h.correlation_id = Some("corr-ünï-☃-日本".into());
    h.sent_at = Some(whole);
    h.custom = kv(&[
        ("greeting", "héllo wörld ✓ 日本語 🚀".into()),
        ("rtl", "مرحبا بالعالم".into()),
        ("emoji", "👍🏽👨‍👩‍👧 and \u{200d} joiners".into()),
        ("ключ", "значение".into()),
        ("control", "tab\there, newline\nthere, nul-free".into()),
    ]);
    cases.push(Case {
        name: "unicode",
        headers: h,
        body: "{\"text\":\"grüße 🚀 日本 \\u0000\"}".as_bytes().to_vec(),
    });

    let mut h = base("empty");
    h.content_type = "".into();
    h.correlation_id = Some(String::new());
    h.custom = kv(&[("empty", String::new()), ("also-empty", String::new())]);
    cases.push(Case {
        name: "empty",
        headers: h,
        body: Vec::new(),
    });

    let mut h = base("big");
    h.sent_at = Some(whole);
    h.custom = kv(&[
        ("big-ascii", "x".repeat(4096)),
        ("big-two-byte", "é".repeat(2048)),
        ("big-mixed", "aé日🚀".repeat(1024)),
    ]);
    cases.push(Case {
        name: "big",
        headers: h,
        body: (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect(),
    });

    let mut h = base("binary");
    h.content_type = "application/octet-stream".into();
    let mut body: Vec<u8> = (0..=255u8).collect();
    body.extend_from_slice(&[0xC3, 0x28, 0xFF, 0xFE, 0x00, 0x80, 0xED, 0xA0, 0x80]);
    body.extend((0..512u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    cases.push(Case {
        name: "binary",
        headers: h,
        body,
    });

    let mut h = base("ids");
    h.correlation_id = Some(uuid::Uuid::now_v7().to_string());
    h.sent_at = Some(whole);
    let mut custom = kv(&[
        (header::CONVERSATION_ID, uuid::Uuid::now_v7().to_string()),
        (header::CAUSATION_ID, uuid::Uuid::now_v7().to_string()),
        (header::REPLY_TO, "conf-replies".into()),
        (header::DELAYED_RETRIES, "2".into()),
        ("tenant", "acme".into()),
    ]);
    for i in 0..40 {
        custom.insert(format!("h-{i:02}"), format!("value {i}"));
    }
    h.custom = custom;
    cases.push(Case {
        name: "ids",
        headers: h,
        body: b"{\"ok\":true}".to_vec(),
    });

    let mut h = base("time");
    h.sent_at = Some(now);
    cases.push(Case {
        name: "time",
        headers: h,
        body: b"{}".to_vec(),
    });
    cases
}

async fn round_trip_body(f: &dyn TransportFactory) {
    const TEST: &str = "round_trip";
    let started = Instant::now();
    let features = f.features();
    let publisher = f.transport("rt-pub").await;
    let subscriber = f.transport("rt-sub").await;
    assert_eq!(
        publisher.carries_typed_messages(),
        features.typed_bodies,
        "[{}] the `typed_bodies` feature must match `Transport::carries_typed_messages`",
        f.name()
    );
    let endpoint = "conf-rt";
    let event = "conformance.rt.Happened";
    declare(&*subscriber, &[(endpoint, &[event])]).await;
    let mut sub = subscribe(&*subscriber, endpoint, 8).await;
    let tally = Tally::default();

    let mut expected: HashMap<String, (Headers, Vec<u8>)> = HashMap::new();
    for case in round_trip_cases() {
        for (route, destination) in [
            ("endpoint", Destination::Endpoint(endpoint.into())),
            ("event", Destination::Event(event.into())),
        ] {
            let id = format!("rt-{}-{route}", case.name);
            let mut headers = case.headers.clone();
            headers.message_id = id.clone().into();
            let mut want = headers.clone();
            if features.sent_at_whole_seconds {
                want.sent_at = want.sent_at.map(whole_seconds);
            }
            expected.insert(id.clone(), (want, case.body.clone()));
            tally.sent(&id);
            publisher
                .send(Outgoing {
                    destination,
                    envelope: Envelope::from_bytes(headers, case.body.clone()),
                    delay: None,
                    deliver_at: None,
                })
                .await
                .unwrap_or_else(|e| panic!("[{}] sending case {id} failed: {e}", f.name()));
            tally.confirmed(&id);
        }
    }
    let mut typed = 0;
    if features.typed_bodies {
        let probe = Probe {
            n: 42,
            text: "typed ü".into(),
        };
        let id = "rt-typed".to_string();
        tally.sent(&id);
        publisher
            .send(Outgoing {
                destination: Destination::Endpoint(endpoint.into()),
                envelope: Envelope {
                    headers: Arc::new(raw_headers(&id, "conformance.Probe")),
                    body: Body::Message(Arc::new(probe.clone())),
                },
                delay: None,
                deliver_at: None,
            })
            .await
            .expect("sending a typed body");
        tally.confirmed(&id);
        typed = 1;
    }

    for _ in 0..expected.len() + typed {
        let d = next_within(&mut sub, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "[{}] only {} of {} round-trip messages arrived",
                    f.name(),
                    tally.distinct(),
                    expected.len() + typed
                )
            });
        let id = id_of(&d);
        assert!(
            !d.redelivered() && d.delivery_count() == 1,
            "[{}] {id}: a first delivery must be neither redelivered nor counted twice ({}, {})",
            f.name(),
            d.redelivered(),
            d.delivery_count()
        );
        if id == "rt-typed" {
            match &d.envelope().body {
                Body::Message(m) => assert_eq!(
                    m.downcast_ref::<Probe>(),
                    Some(&Probe {
                        n: 42,
                        text: "typed ü".into()
                    }),
                    "[{}] the typed body arrives as it was sent",
                    f.name()
                ),
                other => panic!("[{}] a typed body arrived as {other:?}", f.name()),
            }
        } else {
            let (want_headers, want_body) = expected
                .get(&id)
                .unwrap_or_else(|| panic!("[{}] unexpected message {id}", f.name()));
            assert_eq!(
                &*d.envelope().headers,
                want_headers,
                "[{}] {id}: headers changed on the way",
                f.name()
            );
            assert!(
                bytes_of(d.envelope()) == want_body.as_slice(),
                "[{}] {id}: body changed on the way ({} bytes sent, {} received)",
                f.name(),
                want_body.len(),
                bytes_of(d.envelope()).len()
            );
        }
        ack(d).await;
        tally.handled(&id, "rt-sub");
    }
    expect_quiet(f, &mut sub, "after the round trip").await;
    drop(sub);
    expect_empty(f, endpoint).await;
    let extra = if typed == 1 {
        String::new()
    } else {
        "typed bodies not supported: typed case skipped".into()
    };
    let fig = report(TEST, f, &tally, started, &extra);
    assert_clean(TEST, f, &fig, 0);
}

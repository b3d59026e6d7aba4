//! The `bus ui` pages over HTTP: the ui router served on 127.0.0.1 against the in-memory
//! transport, whose error queue a real failing handler filled, fetched with a real HTTP
//! client. Endpoints and failed messages are shown (escaped), filtered and paged; retry and
//! delete ask first, then act and say what they did; a token, when set, is required on every
//! request; the `bus ui` command refuses a network address without one, and (on Redis, skipped
//! with a printed reason when unreachable) serves a broker and stops on Ctrl-C.

mod ui_support;

use std::time::Duration;

use bus_cli::ui::Access;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION, ORIGIN};
use reqwest::{Client, StatusCode};
use ui_support::{until, Setup, ENDPOINT};

const TOKEN: &str = "4f0c2d9e7b1a6c3f8e5d2b7a";

fn client() -> Client {
    Client::builder()
        // Redirects are looked at, then followed by hand.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

async fn get(url: &str) -> (StatusCode, String) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        form.append_pair(k, v);
    }
    form.finish()
}

/// Posts a form; the status, the Location (for a redirect) and the page.
async fn post(url: &str, fields: &[(&str, &str)]) -> (StatusCode, Option<String>, String) {
    let response = client()
        .post(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(fields))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .map(|l| l.to_str().unwrap().to_string());
    (status, location, response.text().await.unwrap())
}

#[tokio::test]
async fn ui_lists_endpoints_and_failed_messages_on_memory() {
    let setup = Setup::start().await;
    let ids = setup.poison(2, "gift wrap").await;
    let url = setup.serve(Access::loopback()).await;

    let (status, home) = get(&format!("{url}/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        home.contains(r#"<a href="/endpoints/ui-sales/errors">ui-sales</a>"#),
        "{home}"
    );
    assert!(
        home.contains(r#"data-failed-of="ui-sales"><a href="/endpoints/ui-sales/errors">2</a>"#),
        "the failed count links to the failed messages: {home}"
    );

    let (status, list) = get(&format!("{url}/endpoints/{ENDPOINT}/errors")).await;
    assert_eq!(status, StatusCode::OK);
    for id in &ids {
        assert!(
            list.contains(&format!(
                r#"<a href="/endpoints/ui-sales/errors/{id}">{id}</a>"#
            )),
            "{id} links to its detail: {list}"
        );
    }
    let first = list.find(&ids[0]).unwrap();
    let second = list.find(&ids[1]).unwrap();
    assert!(first < second, "oldest first");
    assert!(list.contains("handler-error"));
    assert!(list.contains("stock service down for 1 (gift wrap)"));
    assert!(list.contains("Retry all shown (2)") && list.contains("Delete all shown (2)"));

    let (status, detail) = get(&format!("{url}/endpoints/{ENDPOINT}/errors/{}", ids[1])).await;
    assert_eq!(status, StatusCode::OK);
    for header in ["bus-failure-reason", "bus-failure-error", "message type"] {
        assert!(detail.contains(header), "{header} shown: {detail}");
    }
    assert!(detail.contains("ui.PlaceOrder"));
    assert!(
        detail.contains("&quot;order&quot;: 1"),
        "the body as pretty JSON: {detail}"
    );
    assert!(detail.contains(">Retry</button>") && detail.contains(">Delete</button>"));

    let (status, _) = get(&format!("{url}/endpoints/{ENDPOINT}/errors/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&format!("{url}/nowhere")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    setup.bus.shutdown().await;
}

#[tokio::test]
async fn ui_escapes_what_the_broker_holds() {
    let setup = Setup::start().await;
    let ids = setup.poison(1, "<script>alert(1)</script>").await;
    let url = setup.serve(Access::loopback()).await;
    for page in [
        format!("{url}/endpoints/{ENDPOINT}/errors"),
        format!("{url}/endpoints/{ENDPOINT}/errors/{}", ids[0]),
    ] {
        let (status, html) = get(&page).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!html.contains("<script>"), "{page}: {html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
    }
    let response = client().get(format!("{url}/")).send().await.unwrap();
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'"), "no scripts run: {csp}");
    setup.bus.shutdown().await;
}

#[tokio::test]
async fn ui_retry_asks_for_confirmation_then_sends_back_and_the_error_queue_shrinks() {
    let setup = Setup::start().await;
    let ids = setup.poison(2, "").await;
    setup.shop.fix();
    let url = setup.serve(Access::loopback()).await;
    let retry = format!("{url}/endpoints/{ENDPOINT}/retry");

    // The first step only asks.
    let (status, _, page) = post(&retry, &[("id", &ids[0])]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Send 1 message back to ui-sales?"), "{page}");
    assert!(page.contains(r#"name="confirm" value="yes""#));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(setup.failed().await, 2, "nothing done before confirming");
    assert_eq!(setup.shop.times(&ids[0]), 0);

    // Confirmed: done, and back to the list with a notice.
    let (status, location, _) = post(&retry, &[("id", &ids[0]), ("confirm", "yes")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = location.expect("a redirect");
    assert_eq!(location, "/endpoints/ui-sales/errors?retried=1");
    let (_, list) = get(&format!("{url}{location}")).await;
    assert!(list.contains("1 message sent back to ui-sales"), "{list}");
    until(Duration::from_secs(30), "the retried order handled", || {
        setup.shop.times(&ids[0]) == 1
    })
    .await;
    assert_eq!(setup.failed().await, 1, "the error queue shrank");
    assert!(!list.contains(&ids[0]) && list.contains(&ids[1]));

    // A second confirmation of the same (a resubmitted form) finds nothing to do.
    let (_, location, _) = post(&retry, &[("id", &ids[0]), ("confirm", "yes")]).await;
    let (_, list) = get(&format!("{url}{}", location.unwrap())).await;
    assert!(
        list.contains("0 messages sent back to ui-sales; 1 message no longer in the error queue"),
        "{list}"
    );
    assert_eq!(setup.shop.times(&ids[0]), 1, "handled once");
    setup.bus.shutdown().await;
}

#[tokio::test]
async fn ui_pages_and_deletes_exactly_the_messages_shown() {
    let setup = Setup::start().await;
    let ids = setup.poison(3, "").await;
    let url = setup.serve(Access::loopback()).await;

    let (_, page1) = get(&format!("{url}/endpoints/{ENDPOINT}/errors?limit=2")).await;
    assert!(page1.contains(&ids[0]) && page1.contains(&ids[1]) && !page1.contains(&ids[2]));
    let next = format!("/endpoints/ui-sales/errors?limit=2&amp;after={}", ids[1]);
    assert!(page1.contains(&next), "a next-page link: {page1}");
    let (_, page2) = get(&format!(
        "{url}/endpoints/{ENDPOINT}/errors?limit=2&after={}",
        ids[1]
    ))
    .await;
    assert!(page2.contains(&ids[2]) && !page2.contains(&format!(">{}<", ids[0])));
    assert!(page2.contains("First page"));

    // "Delete all shown" on the first page: its two ids, confirmed.
    let delete = format!("{url}/endpoints/{ENDPOINT}/delete");
    let (_, _, confirm) = post(&delete, &[("id", &ids[0]), ("id", &ids[1])]).await;
    assert!(
        confirm.contains("Delete 2 messages from ui-sales?"),
        "{confirm}"
    );
    let (status, location, _) = post(
        &delete,
        &[("id", &ids[0]), ("id", &ids[1]), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, list) = get(&format!("{url}{}", location.unwrap())).await;
    assert!(list.contains("2 messages deleted from ui-sales"), "{list}");
    assert_eq!(setup.failed().await, 1, "only the page shown was deleted");
    assert!(list.contains(&ids[2]));

    // Nothing chosen is refused.
    let (status, _, _) = post(&delete, &[("confirm", "yes")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    setup.bus.shutdown().await;
}

#[tokio::test]
async fn ui_filters_failed_messages_by_reason_and_type() {
    let setup = Setup::start().await;
    let ids = setup.poison(1, "").await;
    // A message of a type nobody handles fails at once, for a reason of its own.
    let before = setup.bus.stats().dead_lettered;
    let unknown = setup
        .ops
        .send(ENDPOINT, "ui.Unknown", r#"{"x":1}"#)
        .await
        .unwrap()
        .to_string();
    setup.dead_lettered(before + 1).await;
    let url = setup.serve(Access::loopback()).await;
    let list = format!("{url}/endpoints/{ENDPOINT}/errors");

    let (_, all) = get(&list).await;
    assert!(all.contains(&ids[0]) && all.contains(&unknown));
    assert!(all.contains(r#"<option value="handler-error">handler-error (1)</option>"#));
    assert!(all.contains(r#"<option value="ui.Unknown">ui.Unknown (1)</option>"#));

    let (_, by_reason) = get(&format!("{list}?reason=handler-error")).await;
    assert!(by_reason.contains(&ids[0]) && !by_reason.contains(&unknown));
    assert!(by_reason.contains("1 matching the filters"));
    let (_, by_type) = get(&format!("{list}?type=ui.Unknown&reason=")).await;
    assert!(by_type.contains(&unknown) && !by_type.contains(&ids[0]));
    let (_, neither) = get(&format!("{list}?type=ui.Unknown&reason=handler-error")).await;
    assert!(neither.contains("No failed messages match the filters"));

    // An action from a filtered list comes back to it.
    let (_, location, _) = post(
        &format!("{url}/endpoints/{ENDPOINT}/delete"),
        &[("id", &unknown), ("type", "ui.Unknown"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(
        location.as_deref(),
        Some("/endpoints/ui-sales/errors?type=ui.Unknown&deleted=1")
    );
    setup.bus.shutdown().await;
}

#[tokio::test]
async fn ui_with_a_token_refuses_requests_without_it_and_accepts_it_in_query_header_or_form() {
    let setup = Setup::start().await;
    let ids = setup.poison(1, "").await;
    let url = setup.serve(Access::token(TOKEN).unwrap()).await;

    let (status, page) = get(&format!("{url}/")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!page.contains("ui-sales"), "nothing shown: {page}");
    let (status, _) = get(&format!("{url}/?token=wrong-{TOKEN}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(&format!("{url}/endpoints/{ENDPOINT}/errors")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, home) = get(&format!("{url}/?token={TOKEN}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        home.contains(&format!("/endpoints/ui-sales/errors?token={TOKEN}")),
        "links carry the token: {home}"
    );
    let response = client()
        .get(format!("{url}/endpoints/{ENDPOINT}/errors"))
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let list = response.text().await.unwrap();
    assert!(list.contains(&format!(r#"name="token" value="{TOKEN}""#)));

    // Forms carry it as a hidden field.
    let retry = format!("{url}/endpoints/{ENDPOINT}/retry");
    let (status, _, _) = post(&retry, &[("id", &ids[0]), ("confirm", "yes")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(setup.failed().await, 1, "a refused post does nothing");
    setup.shop.fix();
    let (status, location, _) = post(
        &retry,
        &[("id", &ids[0]), ("token", TOKEN), ("confirm", "yes")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location.as_deref(),
        Some(format!("/endpoints/ui-sales/errors?retried=1&token={TOKEN}").as_str())
    );
    until(Duration::from_secs(30), "the retried order handled", || {
        setup.shop.times(&ids[0]) == 1
    })
    .await;
    setup.bus.shutdown().await;
}

#[tokio::test]
async fn ui_on_loopback_refuses_other_host_names_and_cross_site_forms() {
    let setup = Setup::start().await;
    let ids = setup.poison(1, "").await;
    let url = setup.serve(Access::loopback()).await;
    let host = url.trim_start_matches("http://").to_string();

    let response = client()
        .get(format!("{url}/"))
        .header(HOST, "shop.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let retry = format!("{url}/endpoints/{ENDPOINT}/retry");
    let body = form(&[("id", &ids[0]), ("confirm", "yes")]);
    let response = client()
        .post(&retry)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ORIGIN, "http://shop.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(setup.failed().await, 1, "a cross-site post does nothing");

    let response = client()
        .post(&retry)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ORIGIN, format!("http://{host}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "the page's own form"
    );
    setup.bus.shutdown().await;
}

#[test]
fn bus_ui_help_documents_the_token_and_a_network_address_needs_one() {
    let bus = env!("CARGO_BIN_EXE_bus");
    let help = std::process::Command::new(bus)
        .args(["ui", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for part in ["--listen", "--token", "127.0.0.1:8080", "401", "Bearer"] {
        assert!(
            help.contains(part),
            "`bus ui --help` mentions {part}: {help}"
        );
    }

    let refused = std::process::Command::new(bus)
        .args(["ui", "--listen", "0.0.0.0:0"])
        .env_remove("BUS_UI_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--token"), "{stderr}");
}

#[tokio::test]
async fn bus_ui_serves_a_broker_and_stops_on_ctrl_c_on_redis() {
    use tokio::io::AsyncBufReadExt;

    let Some(url) = bus_tests::redis_broker::redis_or_skip("bus_ui_serves_a_broker").await else {
        return;
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bus"))
        .args(["--transport", &url, "--prefix", "ui-test"])
        .args(["ui", "--listen", "127.0.0.1:0"])
        .env_remove("BUS_UI_TOKEN")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
        .await
        .expect("bus ui says where it serves")
        .unwrap()
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("an address in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    let (status, home) = get(&format!("{base}/")).await;
    assert_eq!(status, StatusCode::OK, "{home}");
    assert!(home.contains("<h1>Endpoints</h1>"));

    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("bus ui stops on Ctrl-C")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped (Ctrl-C)"));
}

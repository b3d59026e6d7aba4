//! The AsyncAPI document of what this binary links: its shape, and its validity against the
//! official AsyncAPI 3.0.0 JSON Schema (checked in Python with `jsonschema`, the schema from the
//! npm package `@asyncapi/specs`), with the bodies the bus writes checked against each message's
//! payload schema. The Python check is skipped, with the reason printed, when python3,
//! jsonschema, npm or the package is missing, unless `BUS_REQUIRE_BROKERS=1`.

use std::path::Path;
use std::process::Command as Process;

use bus_core::asyncapi::AsyncApi;
use bus_core::{Command, Event, HandlerError, JsonCodec, Message, MessageInfo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "contract.PlaceOrder", endpoint = "contract-sales")]
struct PlaceOrder {
    id: u32,
    #[serde(rename = "customerName")]
    customer: String,
    lines: Vec<Line>,
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Line {
    sku: String,
    quantity: u16,
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "contract.Refund")]
struct Refund {
    id: u32,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug)]
#[event(name = "contract.OrderPlaced")]
enum OrderPlaced {
    Paid { id: u32 },
    Free,
}

#[bus_core::handler]
async fn place(_: PlaceOrder) -> Result<(), HandlerError> {
    Ok(())
}

#[bus_core::handler(endpoint = "contract-billing")]
async fn bill(_: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

#[bus_core::handler(endpoint = "contract-mail")]
async fn mail(_: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

/// The body the bus writes for `message`, with its built-in JSON codec.
fn body<M: Message>(message: &M) -> Value {
    serde_json::from_slice(&bus_core::encode(&JsonCodec, message).unwrap()).unwrap()
}

#[test]
fn channels_operations_and_messages() {
    let doc = AsyncApi::new("contracts", "1.2.3")
        .description("test")
        .message(MessageInfo::of::<PlaceOrder>())
        .message(MessageInfo::of::<Refund>())
        .message(MessageInfo::of::<OrderPlaced>())
        .handler(&bus_core::HandlerDescriptor::new::<OrderPlaced, _, _>(
            "explicit",
            Some("contract-audit".into()),
            MessageInfo::of::<OrderPlaced>(),
            Vec::new(),
            |_, _| async { Ok(()) },
        ))
        .document();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(
        doc["info"],
        json!({"title": "contracts", "version": "1.2.3", "description": "test"})
    );
    assert_eq!(doc["defaultContentType"], "application/json");

    let sales = &doc["channels"]["endpoint.contract-sales"];
    assert_eq!(sales["address"], "contract-sales");
    assert!(sales["messages"]["contract.PlaceOrder"].is_object());
    // A command routed only by configuration: its address is known at runtime.
    assert_eq!(
        doc["channels"]["command.contract.Refund"]["address"],
        Value::Null
    );
    assert_eq!(
        doc["channels"]["event.contract.OrderPlaced"]["address"],
        "contract.OrderPlaced"
    );

    let send = &doc["operations"]["send.contract.PlaceOrder"];
    assert_eq!(send["action"], "send");
    assert_eq!(
        send["channel"]["$ref"],
        "#/channels/endpoint.contract-sales"
    );
    assert_eq!(
        send["messages"][0]["$ref"],
        "#/channels/endpoint.contract-sales/messages/contract.PlaceOrder"
    );
    let receive = &doc["operations"]["receive.explicit.contract.OrderPlaced"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(
        receive["channel"]["$ref"],
        "#/channels/event.contract.OrderPlaced"
    );

    let message = &doc["components"]["messages"]["contract.PlaceOrder"];
    assert_eq!(message["name"], "contract.PlaceOrder");
    assert_eq!(message["contentType"], "application/json");
    let headers = &message["headers"]["properties"];
    for name in [
        bus_core::header::MESSAGE_ID,
        bus_core::header::MESSAGE_TYPE,
        bus_core::header::CONTENT_TYPE,
        bus_core::header::CORRELATION_ID,
        bus_core::header::SENT_TIME,
        bus_core::header::CONVERSATION_ID,
        bus_core::header::CAUSATION_ID,
    ] {
        assert!(headers[name].is_object(), "header {name}");
    }
    assert_eq!(headers["bus-message-type"]["const"], "contract.PlaceOrder");
    assert_eq!(
        message["correlationId"]["location"],
        "$message.header#/bus-correlation-id"
    );
}

#[test]
fn linked_handlers_are_receive_operations() {
    let doc = bus_core::asyncapi::document("linked", "0.1.0");
    let operations = doc["operations"].as_object().unwrap();
    let receive = |endpoint: &str| {
        operations.values().any(|op| {
            op["action"] == "receive"
                && op["channel"]["$ref"] == "#/channels/event.contract.OrderPlaced"
                && op["summary"]
                    .as_str()
                    .is_some_and(|s| s.contains(&format!("endpoint `{endpoint}`")))
        })
    };
    assert!(receive("contract-billing") && receive("contract-mail"));
    // `place` has no endpoint of its own: it lives where its command is routed.
    assert!(operations.values().any(|op| op["action"] == "receive"
        && op["channel"]["$ref"] == "#/channels/endpoint.contract-sales"));
}

/// Every `$ref` in the document points at something in it.
#[test]
fn refs_resolve() {
    fn walk(doc: &Value, at: &Value) {
        match at {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let pointer = r.strip_prefix('#').expect("local ref");
                    assert!(doc.pointer(pointer).is_some(), "dangling {r}");
                }
                map.values().for_each(|v| walk(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
            _ => {}
        }
    }
    let doc = bus_core::asyncapi::document("linked", "0.1.0");
    walk(&doc, &doc);
}

#[test]
fn valid_against_the_asyncapi_schema() {
    let doc = bus_core::asyncapi::document("linked", "0.1.0");
    let examples = json!({
        "contract.PlaceOrder": [
            body(&PlaceOrder {
                id: 7,
                customer: "Ada".into(),
                lines: vec![Line { sku: "a-1".into(), quantity: 2 }],
                note: None,
            }),
            body(&PlaceOrder {
                id: 8,
                customer: String::new(),
                lines: vec![],
                note: Some("x".into()),
            }),
        ],
        "contract.Refund": [body(&Refund { id: 1 })],
        "contract.OrderPlaced": [body(&OrderPlaced::Paid { id: 1 }), body(&OrderPlaced::Free)],
    });
    validate("valid_against_the_asyncapi_schema", &doc, &examples);
}

/// Runs tests/python/asyncapi_validate.py on the document and examples.
fn validate(test: &str, doc: &Value, examples: &Value) {
    let require = std::env::var("BUS_REQUIRE_BROKERS").is_ok_and(|v| v == "1");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join(format!("asyncapi-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let doc_path = dir.join("asyncapi.json");
    let examples_path = dir.join("examples.json");
    std::fs::write(&doc_path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    std::fs::write(&examples_path, serde_json::to_vec(examples).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/asyncapi_validate.py");
    let out = Process::new("python3")
        .arg(&script)
        .arg(&doc_path)
        .arg(&examples_path)
        // The schema package is fetched once per target directory.
        .args(["--cache".as_ref(), tmp.as_os_str()])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let skip = |why: String| {
        assert!(!require, "{test}: {why} and BUS_REQUIRE_BROKERS=1");
        eprintln!("skipping {test}: {why}; set BUS_REQUIRE_BROKERS=1 to fail instead");
    };
    match out {
        Err(e) => skip(format!("cannot run python3 ({e})")),
        Ok(out) if out.status.code() == Some(77) => {
            skip(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
        Ok(out) => assert!(
            out.status.success(),
            "{test}: the document is not valid:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

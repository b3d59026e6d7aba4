//! An AsyncAPI 3.0 document of the message types and handlers a binary links: a contract other
//! teams can read, generate clients from, or check their messages against.
//!
//! ```
//! use bus_core::Event;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, Clone, Debug)]
//! #[event(name = "docs.Shipped")]
//! struct Shipped { order: u32 }
//!
//! let doc = bus_core::asyncapi::document("shop", "1.0.0");
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! assert_eq!(doc["components"]["messages"]["docs.Shipped"]["name"], "docs.Shipped");
//! ```
//!
//! Channels: one per endpoint, addressed by the endpoint's name, carrying the commands sent to
//! it; one per event, addressed by the event's wire name. A command whose endpoint is only
//! known from routing configuration gets a channel of its own with a `null` (runtime) address.
//! Operations: a `send` per message type and a `receive` per handler.
//!
//! Payloads: with the feature `asyncapi`, a message type that also derives
//! `schemars::JsonSchema` (schemars 1.x, re-exported as `asyncapi::schemars`; another major
//! version is not recognized) gets the JSON Schema (draft-07, as AsyncAPI schemas are) of what
//! it deserializes from; every other type gets `{}`, which accepts any payload. Shared
//! subschemas go to `components.schemas`, where a name two types share keeps the first.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::envelope::header;
use crate::handler::{HandlerDescriptor, HandlerRegistration, MessageInfo, MessageRegistration};
use crate::message::MessageKind;

#[cfg(feature = "asyncapi")]
pub use schemars;

/// Builds a message type's payload schema, if it has one: a JSON Schema whose `$ref`s point
/// into `#/components/schemas/`, with those definitions under `components.schemas`.
pub type SchemaFn = fn() -> Option<Value>;

/// What the derives submit to `inventory` for every message type: its schema function, when
/// the type has one.
pub struct SchemaRegistration {
    /// The message type.
    pub info: MessageInfo,
    /// Its payload schema: `Some` when it implements `schemars::JsonSchema` and the feature
    /// `asyncapi` is on.
    pub schema: SchemaFn,
}

inventory::collect!(SchemaRegistration);

/// The payload schema of `T`, as [`SchemaRegistration::schema`] returns it.
#[cfg(feature = "asyncapi")]
pub fn payload_schema<T: schemars::JsonSchema>() -> Value {
    let mut settings = schemars::generate::SchemaSettings::draft07();
    // Definitions land where the AsyncAPI document keeps them, so the `$ref`s stay valid once
    // the payload is embedded in it.
    settings.definitions_path = "/components/schemas".into();
    // A payload is an AsyncAPI schema (draft-07 based) inside the document: no meta-schema.
    settings.meta_schema = None;
    settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// The derives' way to find out, at the concrete message type, whether it implements
/// `schemars::JsonSchema`: the `&SchemaProbe<T>` impl wins method resolution when it applies
/// (messages are never generic, so this is decided where the derive expands, without
/// specialization).
#[doc(hidden)]
pub struct SchemaProbe<T>(std::marker::PhantomData<T>);

impl<T> SchemaProbe<T> {
    #[doc(hidden)]
    pub const fn new() -> Self {
        SchemaProbe(std::marker::PhantomData)
    }
}

impl<T> Default for SchemaProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The fallback: no schema.
#[doc(hidden)]
pub trait NoSchema {
    #[doc(hidden)]
    fn schema(&self) -> Option<Value> {
        None
    }
}

impl<T> NoSchema for SchemaProbe<T> {}

/// The schema of a `schemars::JsonSchema` type.
#[doc(hidden)]
pub trait HasSchema {
    #[doc(hidden)]
    fn schema(&self) -> Option<Value>;
}

#[cfg(feature = "asyncapi")]
impl<T: schemars::JsonSchema> HasSchema for &SchemaProbe<T> {
    fn schema(&self) -> Option<Value> {
        Some(payload_schema::<T>())
    }
}

/// A handler as the document shows it.
#[derive(Clone, Debug)]
struct HandlerEntry {
    name: String,
    endpoint: Option<String>,
    message: MessageInfo,
}

/// An AsyncAPI 3.0 document being put together: which message types and handlers it shows.
#[derive(Clone, Debug)]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    content_type: String,
    messages: BTreeMap<&'static str, MessageInfo>,
    handlers: Vec<HandlerEntry>,
}

impl AsyncApi {
    /// An empty document: add messages and handlers with [`AsyncApi::message`] and
    /// [`AsyncApi::handler`].
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        AsyncApi {
            title: title.into(),
            version: version.into(),
            description: None,
            content_type: crate::codec::JSON.to_string(),
            messages: BTreeMap::new(),
            handlers: Vec::new(),
        }
    }

    /// Every message type derived and every `#[handler]` linked into the binary.
    pub fn linked(title: impl Into<String>, version: impl Into<String>) -> Self {
        let mut doc = AsyncApi::new(title, version);
        for reg in inventory::iter::<MessageRegistration>() {
            doc = doc.message(reg.info);
        }
        for reg in inventory::iter::<HandlerRegistration>() {
            doc = doc.handler(&(reg.factory)());
        }
        doc
    }

    /// The document's `info.description`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The content type of the bodies (default `application/json`), for services configured
    /// with another codec.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Show a message type.
    pub fn message(mut self, info: MessageInfo) -> Self {
        self.messages.insert(info.name, info);
        self
    }

    /// Show a handler, and the message type it handles; one registered explicitly
    /// ([`crate::BusBuilder::handler`]) is given with [`HandlerDescriptor::in_endpoint`] set.
    pub fn handler(mut self, handler: &HandlerDescriptor) -> Self {
        let message = *handler.message();
        self.messages.insert(message.name, message);
        self.handlers.push(HandlerEntry {
            name: handler.name().to_string(),
            endpoint: handler.endpoint().map(str::to_string),
            message,
        });
        self
    }

    /// The document, as JSON.
    pub fn document(&self) -> Value {
        let schemas: BTreeMap<&str, SchemaFn> = inventory::iter::<SchemaRegistration>()
            .map(|r| (r.info.name, r.schema))
            .collect();
        let mut keys = Keys::default();
        let mut components_messages = Map::new();
        let mut components_schemas = Map::new();
        let mut message_ids = BTreeMap::new();
        for info in self.messages.values() {
            let id = keys.unique(info.name);
            let payload = match schemas.get(info.name).and_then(|schema| schema()) {
                Some(schema) => split_definitions(schema, &mut components_schemas),
                None => json!({}),
            };
            components_messages.insert(id.clone(), self.message_object(info, payload));
            message_ids.insert(info.name, id);
        }

        // Channel id -> (address, description, message wire names).
        let mut channels: BTreeMap<String, (Value, String, BTreeSet<&'static str>)> =
            BTreeMap::new();
        let mut channel_for = |info: &MessageInfo, endpoint: Option<&str>| -> String {
            let endpoint = match info.kind {
                MessageKind::Event => None,
                MessageKind::Command => endpoint.or(info.endpoint).map(str::to_string),
            };
            let (id, address, description) = match (&info.kind, &endpoint) {
                (MessageKind::Event, _) => (
                    format!("event.{}", info.name),
                    json!(info.name),
                    format!(
                        "Event `{}`: every subscribed endpoint gets a copy.",
                        info.name
                    ),
                ),
                (MessageKind::Command, Some(endpoint)) => (
                    format!("endpoint.{endpoint}"),
                    json!(endpoint),
                    format!("Endpoint `{endpoint}`: the commands sent to it."),
                ),
                (MessageKind::Command, None) => (
                    format!("command.{}", info.name),
                    Value::Null,
                    format!(
                        "Command `{}`: its endpoint is set by routing configuration.",
                        info.name
                    ),
                ),
            };
            let id = sanitize(&id);
            channels
                .entry(id.clone())
                .or_insert_with(|| (address, description, BTreeSet::new()))
                .2
                .insert(info.name);
            id
        };

        let mut operations = Map::new();
        let mut operation = |id: String, action: &str, channel: &str, message: &str, summary| {
            let id = keys.unique(&id);
            operations.insert(
                id,
                json!({
                    "action": action,
                    "channel": { "$ref": format!("#/channels/{channel}") },
                    "messages": [
                        { "$ref": format!("#/channels/{channel}/messages/{message}") }
                    ],
                    "summary": summary,
                }),
            );
        };
        for info in self.messages.values() {
            let channel = channel_for(info, None);
            let summary = match info.kind {
                MessageKind::Command => format!("Send the command `{}`.", info.name),
                MessageKind::Event => format!("Publish the event `{}`.", info.name),
            };
            operation(
                format!("send.{}", info.name),
                "send",
                &channel,
                &message_ids[info.name],
                summary,
            );
        }
        for handler in &self.handlers {
            let info = &handler.message;
            let channel = channel_for(info, handler.endpoint.as_deref());
            let summary = match &handler.endpoint {
                Some(endpoint) => format!(
                    "`{}` handles `{}` on endpoint `{endpoint}`.",
                    handler.name, info.name
                ),
                None => format!("`{}` handles `{}`.", handler.name, info.name),
            };
            operation(
                format!("receive.{}.{}", handler.name, info.name),
                "receive",
                &channel,
                &message_ids[info.name],
                summary,
            );
        }

        let channels: Map<String, Value> = channels
            .into_iter()
            .map(|(id, (address, description, messages))| {
                let messages: Map<String, Value> = messages
                    .into_iter()
                    .map(|name| {
                        let id = &message_ids[name];
                        (
                            id.clone(),
                            json!({ "$ref": format!("#/components/messages/{id}") }),
                        )
                    })
                    .collect();
                (
                    id,
                    json!({
                        "address": address,
                        "description": description,
                        "messages": messages,
                    }),
                )
            })
            .collect();

        let mut info = json!({ "title": self.title, "version": self.version });
        if let Some(description) = &self.description {
            info["description"] = json!(description);
        }
        let mut components = json!({ "messages": components_messages });
        if !components_schemas.is_empty() {
            components["schemas"] = Value::Object(components_schemas);
        }
        json!({
            "asyncapi": "3.0.0",
            "info": info,
            "defaultContentType": self.content_type,
            "channels": channels,
            "operations": operations,
            "components": components,
        })
    }

    fn message_object(&self, info: &MessageInfo, payload: Value) -> Value {
        let kind = match info.kind {
            MessageKind::Command => "command",
            MessageKind::Event => "event",
        };
        let mut message = json!({
            "name": info.name,
            "title": info.name,
            "summary": format!("The {kind} `{}` (Rust type `{}`).", info.name, (info.rust_type)()),
            "contentType": self.content_type,
            "headers": headers(info.name, &self.content_type),
            "correlationId": {
                "description": "Shared by a request and its reply, and by what one message causes.",
                "location": format!("$message.header#/{}", header::CORRELATION_ID),
            },
            "payload": payload,
            "tags": [{ "name": kind }],
        });
        if let Some(endpoint) = info.endpoint {
            message["x-bus-endpoint"] = json!(endpoint);
        }
        message
    }
}

/// The document of every message type derived and every `#[handler]` linked into the binary:
/// [`AsyncApi::linked`] then [`AsyncApi::document`].
pub fn document(title: &str, version: &str) -> Value {
    AsyncApi::linked(title, version).document()
}

/// The bus's headers, as a schema of the message's header map.
fn headers(message_type: &str, content_type: &str) -> Value {
    let string = |description: &str| json!({ "type": "string", "description": description });
    json!({
        "type": "object",
        "required": [header::MESSAGE_ID, header::MESSAGE_TYPE],
        "properties": {
            header::MESSAGE_ID: string("Unique id of the message (a UUID)."),
            header::MESSAGE_TYPE: {
                "type": "string",
                "const": message_type,
                "description": "The message's wire name.",
            },
            header::CONTENT_TYPE: {
                "type": "string",
                "description": "The body's content type.",
                "examples": [content_type],
            },
            header::CORRELATION_ID: string("Correlation id."),
            header::SENT_TIME: {
                "type": "string",
                "format": "date-time",
                "description": "When it was sent: RFC 3339, UTC.",
            },
            header::CONVERSATION_ID: string(
                "Shared by every message caused, directly or not, by one root message."
            ),
            header::CAUSATION_ID: string("The id of the message whose handler sent this one."),
            header::REPLY_TO: string("On a request: where the reply goes."),
            header::IN_REPLY_TO: string("On a reply: the id of the request it answers."),
            header::TRACEPARENT: string("W3C trace context."),
            header::TRACESTATE: string("W3C trace context."),
        },
    })
}

/// Moves a generated schema's definitions into `components.schemas`, returning the rest. A name
/// two types share keeps the first definition.
fn split_definitions(mut schema: Value, into: &mut Map<String, Value>) -> Value {
    if let Some(object) = schema.as_object_mut() {
        if let Some(Value::Object(mut components)) = object.remove("components") {
            if let Some(Value::Object(defs)) = components.remove("schemas") {
                for (name, def) in defs {
                    into.entry(name).or_insert(def);
                }
            }
        }
    }
    schema
}

/// Component and operation ids: AsyncAPI allows `[A-Za-z0-9._-]` only.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Ids made unique after sanitizing, which can map two names to one id.
#[derive(Default)]
struct Keys(BTreeSet<String>);

impl Keys {
    fn unique(&mut self, name: &str) -> String {
        let base = sanitize(name);
        let mut id = base.clone();
        let mut n = 2;
        while !self.0.insert(id.clone()) {
            id = format!("{base}_{n}");
            n += 1;
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(crate::Command, Serialize, Deserialize, Clone, Debug)]
    #[command(name = "asyncapi.Place/Order", endpoint = "asyncapi-sales")]
    #[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
    struct PlaceOrder {
        id: u32,
        lines: Vec<Line>,
    }

    #[derive(Serialize, Deserialize, Clone, Debug)]
    #[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
    struct Line {
        sku: String,
        quantity: u16,
    }

    #[derive(crate::Event, Serialize, Deserialize, Clone, Debug)]
    #[event(name = "asyncapi.OrderPlaced")]
    struct OrderPlaced {
        id: u32,
    }

    #[derive(crate::Event, Serialize, Deserialize, Clone, Debug)]
    #[event(name = "asyncapi.Shipped")]
    #[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
    #[serde(tag = "kind", rename_all = "camelCase")]
    enum Shipped {
        ByPost {
            #[serde(rename = "trackingCode")]
            tracking: Option<String>,
            lines: Vec<Line>,
        },
        Collected,
    }

    fn doc() -> Value {
        AsyncApi::new("t", "1")
            .message(MessageInfo::of::<PlaceOrder>())
            .message(MessageInfo::of::<OrderPlaced>())
            .document()
    }

    #[test]
    fn ids_are_sanitized_and_refs_resolve() {
        let doc = doc();
        let message = &doc["components"]["messages"]["asyncapi.Place_Order"];
        assert_eq!(message["name"], "asyncapi.Place/Order");
        let channel = &doc["channels"]["endpoint.asyncapi-sales"];
        assert_eq!(channel["address"], "asyncapi-sales");
        assert_eq!(
            channel["messages"]["asyncapi.Place_Order"]["$ref"],
            "#/components/messages/asyncapi.Place_Order"
        );
        assert_eq!(
            doc["operations"]["send.asyncapi.Place_Order"]["action"],
            "send"
        );
        assert_eq!(
            doc["channels"]["event.asyncapi.OrderPlaced"]["address"],
            "asyncapi.OrderPlaced"
        );
        assert_eq!(
            doc["components"]["messages"]["asyncapi.OrderPlaced"]["payload"],
            json!({})
        );
    }

    #[test]
    fn keys_stay_unique() {
        let mut keys = Keys::default();
        assert_eq!(keys.unique("a/b"), "a_b");
        assert_eq!(keys.unique("a:b"), "a_b_2");
    }

    /// The official AsyncAPI 3.0.0 schema accepts the document, and each payload schema the
    /// bodies the JSON codec writes; skipped (with the reason) where the Python check cannot
    /// run, unless `BUS_REQUIRE_BROKERS=1`.
    #[cfg(feature = "asyncapi")]
    #[test]
    fn payload_schemas_accept_what_the_bus_writes() {
        let body = |m: &dyn crate::AnyMessage| -> Value {
            serde_json::from_slice(&crate::Codec::encode(&crate::JsonCodec, m).unwrap()).unwrap()
        };
        let line = || Line {
            sku: "a".into(),
            quantity: 3,
        };
        let doc = AsyncApi::new("t", "1")
            .message(MessageInfo::of::<PlaceOrder>())
            .message(MessageInfo::of::<Shipped>())
            .document();
        let examples = json!({
            "asyncapi.Place_Order": [body(&PlaceOrder { id: 1, lines: vec![line()] })],
            "asyncapi.Shipped": [
                body(&Shipped::ByPost { tracking: None, lines: vec![line()] }),
                body(&Shipped::ByPost { tracking: Some("t".into()), lines: vec![] }),
                body(&Shipped::Collected),
            ],
        });
        let bad = json!({ "asyncapi.Place_Order": [{ "id": "one", "lines": [] }] });
        let dir = std::env::temp_dir().join(format!("bus-asyncapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, value: &Value| {
            let path = dir.join(name);
            std::fs::write(&path, value.to_string()).unwrap();
            path
        };
        let (doc_path, good, bad) = (
            write("doc.json", &doc),
            write("good.json", &examples),
            write("bad.json", &bad),
        );
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/python/asyncapi_validate.py"
        );
        let cache = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tmp");
        let run = |examples: &std::path::Path| {
            std::process::Command::new("python3")
                .args([script.as_ref(), doc_path.as_os_str(), examples.as_os_str()])
                .args(["--cache", cache])
                .output()
        };
        let require = std::env::var("BUS_REQUIRE_BROKERS").is_ok_and(|v| v == "1");
        match run(&good) {
            Ok(out) if out.status.code() != Some(77) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "{stderr}");
                // The check has teeth: a body of the wrong shape is refused.
                assert_eq!(run(&bad).unwrap().status.code(), Some(1));
            }
            out => {
                let why = match out {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    Err(e) => format!("cannot run python3 ({e})"),
                };
                assert!(!require, "{why} and BUS_REQUIRE_BROKERS=1");
                eprintln!("skipping: {why}; set BUS_REQUIRE_BROKERS=1 to fail instead");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(feature = "asyncapi")]
    #[test]
    fn schema_of_a_json_schema_type_with_definitions_in_components() {
        let doc = doc();
        let payload = &doc["components"]["messages"]["asyncapi.Place_Order"]["payload"];
        assert_eq!(payload["type"], "object");
        assert!(payload.get("$schema").is_none());
        assert!(payload.get("components").is_none());
        assert_eq!(
            payload["properties"]["lines"]["items"]["$ref"],
            "#/components/schemas/Line"
        );
        assert_eq!(
            doc["components"]["schemas"]["Line"]["properties"]["quantity"]["type"],
            "integer"
        );
    }
}

//! Listing the endpoints under this transport's naming, with their figures.
//!
//! AMQP 0-9-1 cannot list queues: a client can only ask about a queue it names. RabbitMQ's
//! management plugin can, over HTTP (`GET /api/queues/<vhost>`), so the names come from there
//! (see [`crate::AmqpConfig::management_url`]). An endpoint is an input queue under the naming's
//! namespace and prefix that has an error queue beside it: `E` with `E.error`.
//!
//! Only the names come from the management API: its figures are statistics, refreshed every
//! few seconds (the broker's `collect_statistics_interval`, 5 s by default), so a message sent
//! just before would not show yet, and one handled just before would still show. The figures
//! are asked of each queue over AMQP instead, with a passive declare, which answers with those
//! of that moment: the messages ready and the consumers. Messages delivered to a consumer and
//! not settled yet are not in that answer, so the depth leaves them out.
//!
//! The HTTP client is hyper's HTTP/1 connection on a tokio socket: one connection per listing,
//! nothing pooled, as a listing is an operator's occasional call.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use bus_core::{EndpointInfo, TransportError};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::config::{ManagementApi, Naming, NoManagement};
use crate::teardown::Checker;
use crate::transport::AmqpTransport;

/// What to do when the management API cannot be reached.
const ENABLE_IT: &str = "is the `rabbitmq_management` plugin enabled (`rabbitmq-plugins enable rabbitmq_management`)? Point `AmqpConfig::management_url` at the API, or turn it off with `AmqpConfig::without_management`";

/// An endpoint found in the queue list: its name and its queues' names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) endpoint: String,
    pub(crate) input: String,
    pub(crate) errors: String,
}

impl AmqpTransport {
    /// See the module docs.
    pub(crate) async fn list_endpoints(&self) -> Result<Vec<EndpointInfo>, TransportError> {
        let config = &self.inner.config;
        let api = config.management_api().map_err(|why| match why {
            NoManagement::Off => TransportError::Unsupported {
                operation: "listing endpoints (AMQP 0-9-1 cannot list queues, and the management API is turned off)",
                transport: "amqp".into(),
            },
            NoManagement::TlsWithoutUrl => TransportError::Unsupported {
                operation: "listing endpoints of an amqps:// broker without a management URL (set `AmqpConfig::management_url`)",
                transport: "amqp".into(),
            },
            NoManagement::Invalid(why) => TransportError::Other {
                context: config.scrub(&why),
                source: None,
            },
        })?;
        let limit = config.connect_timeout;
        let listed = TransportError::within(
            "reading the queue list from the RabbitMQ management API",
            limit,
            list_queues(&api, limit),
        )
        .await?
        .map_err(|e| scrubbed(config, e))?;
        let found = endpoint_queues(&config.naming, listed);

        let mut checker = Checker::new(self);
        let figures = async {
            let mut out = Vec::with_capacity(found.len());
            for f in found {
                // A queue deleted since the list was made is left out.
                let Some(input) = checker.queue_figures(&f.input).await? else {
                    continue;
                };
                let errors = checker.queue_figures(&f.errors).await?;
                let mut info = EndpointInfo::named(f.endpoint);
                info.depth = Some(u64::from(input.ready));
                info.consumers = Some(u64::from(input.consumers));
                info.error_depth = errors.map(|e| u64::from(e.ready));
                out.push(info);
            }
            Ok::<_, TransportError>(out)
        };
        let result = TransportError::within("reading the endpoints' queues", limit, figures).await;
        let _ = TransportError::within("closing a channel", limit, checker.close()).await;
        let mut out = result??;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// The endpoints among the listed queues: input queues under `naming`'s namespace and prefix
/// with an error queue beside them, sorted by endpoint name.
pub(crate) fn endpoint_queues(naming: &Naming, listed: Vec<String>) -> Vec<Found> {
    let stem = naming.queue("");
    let names: BTreeSet<String> = listed.into_iter().collect();
    names
        .iter()
        .filter_map(|name| {
            let endpoint = name.strip_prefix(stem.as_str())?;
            if endpoint.is_empty() || naming.queue(endpoint) != *name {
                return None;
            }
            let errors = naming.error_queue(endpoint);
            names.contains(&errors).then(|| Found {
                endpoint: endpoint.to_string(),
                input: name.clone(),
                errors,
            })
        })
        .collect()
}

/// The queues of the virtual host, from the management API.
async fn list_queues(api: &ManagementApi, limit: Duration) -> Result<Vec<String>, TransportError> {
    let path = format!(
        "{}/api/queues/{}?columns=name",
        api.prefix,
        utf8_percent_encode(&api.vhost, NON_ALPHANUMERIC)
    );
    let (status, body) = get(api, &path, limit).await?;
    match status {
        StatusCode::OK => parse_queues(&body).map_err(|why| TransportError::Other {
            context: format!(
                "the queue list from the RabbitMQ management API at {} is not what was expected: {why}",
                api.base
            ),
            source: None,
        }),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(TransportError::Refused {
            context: format!(
                "the RabbitMQ management API at {} refused user `{}` ({status}): the user needs the `monitoring` or `management` tag and access to the virtual host",
                api.base, api.user
            ),
            source: None,
        }),
        StatusCode::NOT_FOUND => Err(TransportError::Refused {
            context: format!(
                "the RabbitMQ management API at {} knows no virtual host `{}` (404)",
                api.base, api.vhost
            ),
            source: None,
        }),
        other => Err(TransportError::Refused {
            context: format!(
                "the RabbitMQ management API at {} answered {other} to a queue listing",
                api.base
            ),
            source: None,
        }),
    }
}

/// `GET path` from the management API: its status and body. A connection that cannot be made
/// is a [`TransportError::Connection`] that says how to enable the API.
async fn get(
    api: &ManagementApi,
    path: &str,
    limit: Duration,
) -> Result<(StatusCode, Bytes), TransportError> {
    let unreachable = |e: Box<dyn std::error::Error + Send + Sync>| {
        TransportError::connection(
            format!(
                "reaching the RabbitMQ management API at {} to list queues, which AMQP 0-9-1 cannot: {ENABLE_IT}",
                api.base
            ),
            e,
        )
    };
    let stream = TransportError::within(
        "connecting to the RabbitMQ management API",
        limit,
        tokio::net::TcpStream::connect((api.host.as_str(), api.port)),
    )
    .await?
    .map_err(|e| unreachable(e.into()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.into()))?;
    // The connection is driven beside the request, and dropped with it: nothing outlives the
    // call.
    let exchange = async {
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", api.user, api.password));
        let request = Request::get(path)
            .header(HOST, format!("{}:{}", api.host, api.port))
            .header(AUTHORIZATION, format!("Basic {credentials}"))
            .header(ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| TransportError::other("building a management API request", e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.into()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.into()))?
            .to_bytes();
        Ok::<_, TransportError>((status, body))
    };
    tokio::pin!(exchange);
    tokio::select! {
        done = &mut exchange => done,
        ended = connection => match ended {
            Err(e) => Err(unreachable(e.into())),
            // Closed by the server once it answered: the answer read so far is the
            // exchange's to finish.
            Ok(()) => exchange.await,
        },
    }
}

/// The queue names of a `/api/queues/<vhost>` answer.
pub(crate) fn parse_queues(body: &[u8]) -> Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let rows = value.as_array().ok_or("not a list")?;
    rows.iter()
        .map(|row| {
            let name = row["name"].as_str().ok_or("a queue without a name")?;
            Ok(name.to_string())
        })
        .collect()
}

/// The error with the passwords of the settings taken out of its text.
fn scrubbed(config: &crate::AmqpConfig, e: TransportError) -> TransportError {
    match e {
        TransportError::Connection { context, source } => TransportError::Connection {
            context: config.scrub(&context),
            source,
        },
        TransportError::Refused { context, source } => TransportError::Refused {
            context: config.scrub(&context),
            source,
        },
        TransportError::Other { context, source } => TransportError::Other {
            context: config.scrub(&context),
            source,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(naming: &Naming, names: &[&str]) -> Vec<String> {
        let listed = names.iter().map(|n| n.to_string()).collect();
        endpoint_queues(naming, listed)
            .into_iter()
            .map(|f| f.endpoint)
            .collect()
    }

    #[test]
    fn an_endpoint_is_an_input_queue_with_an_error_queue_beside_it() {
        let names = [
            "billing",
            "billing.error",
            "billing.delay.1000",
            "orphan",
            "audit.error",
            "staging.sales",
            "staging.sales.error",
        ];
        assert_eq!(
            endpoints(&Naming::default(), &names),
            ["billing", "staging.sales"],
            "without a namespace, every queue with an error queue"
        );
        let staging = Naming::default().with_namespace("staging");
        assert_eq!(
            endpoints(&staging, &names),
            ["sales"],
            "only the namespace's"
        );
        let prefixed = Naming {
            queue_prefix: "t-1.".into(),
            ..Naming::default()
        };
        assert_eq!(
            endpoints(&prefixed, &["t-1.a", "t-1.a.error", "t-2.b", "t-2.b.error"]),
            ["a"],
            "only the prefix's"
        );
    }

    #[test]
    fn the_queue_list_is_read() {
        let body = br#"[{"name":"a","messages":3},{"name":"a.error"}]"#;
        assert_eq!(parse_queues(body).unwrap(), ["a", "a.error"]);
        assert!(parse_queues(b"{}").is_err());
        assert!(parse_queues(b"[{\"messages\":1}]").is_err());
    }
}

//! `bus ui`: a small web page for operators, rendered on the server from the same
//! [`Operations`] as the command, with no JavaScript: the endpoints with their queue figures,
//! each endpoint's failed messages (filtered by reason and message type, paged), one message
//! with every header and its body, and retry and delete behind a confirmation page.
//!
//! ```text
//! GET  /                              endpoints: waiting, consumers, failed
//! GET  /endpoints/{name}/errors       failed messages, oldest first:
//!                                     ?reason=..&type=..&after=ID&limit=50
//! GET  /endpoints/{name}/errors/{id}  one failed message: every header, the body
//! POST /endpoints/{name}/retry        id=..(repeated): a confirmation page; with
//! POST /endpoints/{name}/delete       confirm=yes it is done, and a redirect back to the
//!                                     list says what was ("1 message sent back to sales")
//! ```
//!
//! Who may use it is set by [`Access`]: on loopback no token is needed, but the pages answer
//! only to a loopback host name and refuse a form posted from another site; with a token every
//! request must carry it, as a `token` query parameter, an `Authorization: Bearer` header or
//! (forms) a hidden `token` field, and one without it gets 401.
//!
//! ```no_run
//! # async fn run(ops: bus_cli::Operations) -> std::io::Result<()> {
//! use bus_cli::ui::{self, Access};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! ui::serve(listener, ui::router(ops, Access::loopback()), async {
//!     bus_core::stop_signal().await;
//! })
//! .await
//! # }
//! ```

mod handlers;
mod pages;

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::CliError;
use crate::ops::Operations;
use crate::rates::Rates;

/// The shortest token `--token` takes: a token guards retry and delete on a network address,
/// so one that can be guessed guards nothing.
pub const MIN_TOKEN_LEN: usize = 16;

/// The largest form body read; the biggest form is a page of message ids.
const MAX_FORM: usize = 1 << 20;

/// Who may use the pages.
#[derive(Clone)]
pub struct Access {
    token: Option<Arc<str>>,
}

impl Access {
    /// No token, for a server on a loopback address: only this machine reaches it. Requests
    /// must still name a loopback host (`127.0.0.1`, `[::1]`, `localhost`), so a web page
    /// whose own host name is made to resolve to 127.0.0.1 cannot read or post to it.
    pub fn loopback() -> Self {
        Access { token: None }
    }

    /// Every request must carry `token`: a `token` query parameter, an
    /// `Authorization: Bearer` header, or a `token` field of a posted form.
    pub fn token(token: impl Into<String>) -> Result<Self, CliError> {
        let token = token.into();
        if token.chars().count() < MIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
            return Err(CliError::Invalid(format!(
                "the token must be at least {MIN_TOKEN_LEN} characters without spaces (e.g. `openssl rand -hex 16`)"
            )));
        }
        Ok(Access {
            token: Some(token.into()),
        })
    }

    /// The access for a server listening on `addr`: a loopback address needs no token (one
    /// given is required all the same); any other address requires one.
    pub fn for_listen(addr: SocketAddr, token: Option<String>) -> Result<Self, CliError> {
        match token {
            Some(token) => Access::token(token),
            None if addr.ip().is_loopback() => Ok(Access::loopback()),
            None => Err(CliError::Invalid(format!(
                "{addr} is not a loopback address: anyone who reaches it could retry and delete messages, so give a token with `--token TOKEN` (or BUS_UI_TOKEN), or listen on 127.0.0.1"
            ))),
        }
    }

    /// Whether requests must carry a token.
    pub fn needs_token(&self) -> bool {
        self.token.is_some()
    }

    /// `Ok` when `parts` (and the posted `form`) may be served, else why not.
    fn check(&self, parts: &Parts, form: &[u8]) -> Result<(), Refusal> {
        let host = host(parts);
        if let Some(token) = &self.token {
            let given = bearer(&parts.headers)
                .or_else(|| field(parts.uri.query().unwrap_or("").as_bytes(), "token"))
                .or_else(|| field(form, "token"));
            // A form of another site cannot carry a token it does not know, so with a token
            // no origin check is needed (and a TLS proxy in front may rewrite the Host).
            return match given {
                Some(given) if same(&given, token) => Ok(()),
                _ => Err(Refusal::NoToken),
            };
        }
        if !host.as_deref().is_some_and(is_loopback_host) {
            return Err(Refusal::NotLoopback);
        }
        // Without a token, a form posted by a page of another site would be obeyed: the
        // browser says where a post comes from in its Origin header.
        if parts.method == Method::POST {
            if let Some(origin) = parts.headers.get(header::ORIGIN) {
                let origin = origin.to_str().unwrap_or("");
                let ours = host.as_deref().is_some_and(|host| {
                    [format!("http://{host}"), format!("https://{host}")]
                        .iter()
                        .any(|o| o.eq_ignore_ascii_case(origin))
                });
                if !ours {
                    return Err(Refusal::CrossSite);
                }
            }
        }
        Ok(())
    }
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Without the token, or with a wrong one.
    NoToken,
    /// A host name that is not loopback, without a token.
    NotLoopback,
    /// A form posted by another site, without a token.
    CrossSite,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, why) = match self {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                "This page needs its token: open it as /?token=TOKEN, or send an Authorization: Bearer TOKEN header.",
            ),
            Refusal::NotLoopback => (
                StatusCode::FORBIDDEN,
                "This server listens on loopback without a token and answers only to a loopback host name (127.0.0.1, [::1], localhost). Behind a proxy, start it with --token.",
            ),
            Refusal::CrossSite => (
                StatusCode::FORBIDDEN,
                "A form from another site cannot retry or delete messages here.",
            ),
        };
        let mut response = refusal(status, why);
        if self == Refusal::NoToken {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token itself never reaches a log line.
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// What every handler shares.
struct Ui {
    ops: Operations,
    access: Access,
    /// Messages handled per second, when the services' metrics addresses were given.
    rates: Option<Rates>,
}

type Shared = Arc<Ui>;

/// The pages over `ops`, guarded by `access`. Serve it with [`serve`] (or `axum::serve`).
pub fn router(ops: Operations, access: Access) -> Router {
    router_with_rates(ops, access, None)
}

/// [`router`], with a column of messages handled per second on the endpoints page, read from
/// the services' metrics by `rates`.
pub fn router_with_rates(ops: Operations, access: Access, rates: Option<Rates>) -> Router {
    let ui: Shared = Arc::new(Ui { ops, access, rates });
    Router::new()
        .route("/", get(handlers::endpoints))
        .route("/endpoints/{name}/errors", get(handlers::errors))
        .route("/endpoints/{name}/errors/{id}", get(handlers::message))
        .route("/endpoints/{name}/retry", post(handlers::retry))
        .route("/endpoints/{name}/delete", post(handlers::delete))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui)
}

/// Serve `router` on `listener` until `shutdown` completes, then finish the requests under way.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Checks every request against the access rule, and hardens every response.
async fn guard(State(ui): State<Shared>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // A posted form may carry the token, so it is read here and handed on as bytes.
    let body = if parts.method == Method::POST {
        match to_bytes(body, MAX_FORM).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return harden(refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is too large.",
                ))
            }
        }
    } else {
        Bytes::new()
    };
    if let Err(refused) = ui.access.check(&parts, &body) {
        return harden(refused.into_response());
    }
    harden(next.run(Request::from_parts(parts, Body::from(body))).await)
}

/// Headers every page gets: no scripts, frames or foreign form targets; as links can carry
/// the token, no caching and no referrer to other sites (`same-origin`, not `no-referrer`,
/// which would make browsers send `Origin: null` with the page's own forms).
fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn refusal(status: StatusCode, why: &str) -> Response {
    let page = pages::refused(status, why);
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

/// The host the request names, port included.
fn host(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
}

/// Whether `host` (`name[:port]`) is a loopback name or address.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The first value of `name` in a URL-encoded query or form.
fn field(encoded: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(encoded)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Compares in time independent of where the strings differ, so response times do not tell
/// how much of a guessed token was right.
fn same(given: &str, token: &str) -> bool {
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:80",
            "127.3.2.1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1:8080",
            "[fe80::1]:80",
            "localhost.evil:80",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn a_network_address_needs_a_token_of_some_length() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(Access::for_listen(any, None).is_err());
        assert!(Access::for_listen(any, Some("short".into())).is_err());
        assert!(Access::for_listen(any, Some("0123456789abcdef".into()))
            .unwrap()
            .needs_token());
        assert!(!Access::for_listen(local, None).unwrap().needs_token());
        let debug = format!("{:?}", Access::token("0123456789abcdef").unwrap());
        assert!(!debug.contains("0123"), "{debug}");
    }

    #[test]
    fn tokens_are_compared_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abd", "abc"));
        assert!(!same("ab", "abc"));
    }
}

//! The route handlers: each reads what it needs through [`crate::Operations`] and answers
//! with a page of [`super::pages`], or a redirect after a retry or a delete.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bus_core::MessageId;

use super::pages::{self, Confirm, Listing};
use super::Shared;
use crate::error::CliError;
use crate::ops::{Selection, MAX_SCAN};
use crate::records::{EndpointRow, FailedRow, MessageRecord};

/// How many failed messages a page shows unless `limit` says otherwise, and at most.
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// Builds the addresses the pages link to, carrying the token when there is one.
#[derive(Clone, Debug)]
pub(super) struct Links {
    token: Option<String>,
}

/// The filters of the failed-message list, kept across paging and actions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Filter {
    /// Only messages that failed for this reason.
    pub reason: Option<String>,
    /// Only messages of this wire name.
    pub message_type: Option<String>,
}

impl Filter {
    fn matches(&self, row: &FailedRow) -> bool {
        self.reason
            .as_ref()
            .is_none_or(|r| row.reason.as_ref() == Some(r))
            && self
                .message_type
                .as_ref()
                .is_none_or(|t| &row.message_type == t)
    }

    fn from_pairs(pairs: &[(String, String)]) -> Self {
        Filter {
            reason: first(pairs, "reason"),
            message_type: first(pairs, "type"),
        }
    }
}

/// What a retry or a delete did, as the list shows it after the redirect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Notice {
    /// Messages sent back to the endpoint.
    pub retried: Option<usize>,
    /// Messages deleted.
    pub deleted: Option<usize>,
    /// Messages asked for that were no longer in the error queue.
    pub missing: usize,
}

impl Links {
    pub(super) fn new(token: Option<&str>) -> Self {
        Links {
            token: token.map(str::to_string),
        }
    }

    /// The token, for a hidden form field.
    pub(super) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub(super) fn home(&self) -> String {
        self.with_query("/".into(), &[])
    }

    pub(super) fn errors(&self, endpoint: &str, filter: &Filter, extra: &[(&str, &str)]) -> String {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(reason) = &filter.reason {
            pairs.push(("reason", reason));
        }
        if let Some(message_type) = &filter.message_type {
            pairs.push(("type", message_type));
        }
        pairs.extend_from_slice(extra);
        self.with_query(format!("/endpoints/{}/errors", segment(endpoint)), &pairs)
    }

    /// The list's address without a query, for the filter form, which adds its own fields.
    pub(super) fn errors_path(&self, endpoint: &str) -> String {
        format!("/endpoints/{}/errors", segment(endpoint))
    }

    pub(super) fn message(&self, endpoint: &str, id: &str) -> String {
        self.with_query(
            format!("/endpoints/{}/errors/{}", segment(endpoint), segment(id)),
            &[],
        )
    }

    /// Where a retry or delete form posts; the token travels in the form, not the address.
    pub(super) fn action(&self, endpoint: &str, verb: Verb) -> String {
        format!("/endpoints/{}/{}", segment(endpoint), verb.path())
    }

    fn with_query(&self, path: String, pairs: &[(&str, &str)]) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in pairs {
            query.append_pair(key, value);
        }
        if let Some(token) = &self.token {
            query.append_pair("token", token);
        }
        let query = query.finish();
        if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        }
    }
}

/// `text` as one path segment.
fn segment(text: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// Retry or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verb {
    Retry,
    Delete,
}

impl Verb {
    fn path(self) -> &'static str {
        match self {
            Verb::Retry => "retry",
            Verb::Delete => "delete",
        }
    }
}

fn pairs(encoded: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(encoded)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first non-empty value of `name`: an empty filter field means no filter.
fn first(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.clone())
}

fn html(status: StatusCode, page: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

/// The page for a failed operation: what went wrong, with the status that fits it.
fn failure(links: &Links, error: &CliError) -> Response {
    let status = match error {
        CliError::NotFound { .. } => StatusCode::NOT_FOUND,
        CliError::Invalid(_) => StatusCode::BAD_REQUEST,
        // The broker refused or could not be reached: the page itself is fine.
        _ => StatusCode::BAD_GATEWAY,
    };
    html(status, pages::failed(links, status, &error.to_string()))
}

/// `GET /`.
pub(super) async fn endpoints(State(ui): State<Shared>) -> Response {
    let links = Links::new(ui.access.token.as_deref());
    match ui.ops.endpoints().await {
        Ok(found) => {
            let rows: Vec<EndpointRow> = found.into_iter().map(Into::into).collect();
            let rates = ui.rates.as_ref().map(|r| r.per_second());
            html(
                StatusCode::OK,
                pages::endpoints(&links, &rows, rates.as_ref()),
            )
        }
        Err(error) => failure(&links, &error),
    }
}

/// `GET /endpoints/{name}/errors`.
pub(super) async fn errors(
    State(ui): State<Shared>,
    Path(endpoint): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let links = Links::new(ui.access.token.as_deref());
    let query = pairs(query.unwrap_or_default().as_bytes());
    let filter = Filter::from_pairs(&query);
    let limit = first(&query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(PAGE)
        .clamp(1, MAX_PAGE);
    let after = first(&query, "after");
    let count = |name: &str| first(&query, name).and_then(|n| n.parse::<usize>().ok());
    let notice = Notice {
        retried: count("retried"),
        deleted: count("deleted"),
        missing: count("missing").unwrap_or(0),
    };

    let all = match ui.ops.list(&endpoint, None, MAX_SCAN).await {
        Ok(all) => all,
        Err(error) => return failure(&links, &error),
    };
    let rows: Vec<FailedRow> = all.iter().map(FailedRow::from).collect();
    let mut reasons = BTreeMap::<String, usize>::new();
    let mut types = BTreeMap::<String, usize>::new();
    for row in &rows {
        *reasons
            .entry(row.reason.clone().unwrap_or_default())
            .or_default() += 1;
        *types.entry(row.message_type.clone()).or_default() += 1;
    }
    let matching: Vec<&FailedRow> = rows.iter().filter(|r| filter.matches(r)).collect();
    // A page after a message that has since left the queue starts over, and says so.
    let (start, stale_after) = match &after {
        Some(id) => match matching.iter().position(|r| &r.id == id) {
            Some(at) => (at + 1, None),
            None => (0, Some(id.clone())),
        },
        None => (0, None),
    };
    let shown: Vec<FailedRow> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|r| (*r).clone())
        .collect();
    let listing = Listing {
        endpoint: &endpoint,
        filter: &filter,
        notice: &notice,
        total: rows.len(),
        matching: matching.len(),
        start,
        shown: &shown,
        more: start + shown.len() < matching.len(),
        paged: start > 0,
        stale_after: stale_after.as_deref(),
        limit: (limit != PAGE).then_some(limit),
        reasons: &reasons,
        types: &types,
    };
    html(StatusCode::OK, pages::errors(&links, &listing))
}

/// `GET /endpoints/{name}/errors/{id}`.
pub(super) async fn message(
    State(ui): State<Shared>,
    Path((endpoint, id)): Path<(String, String)>,
) -> Response {
    let links = Links::new(ui.access.token.as_deref());
    match ui.ops.get(&endpoint, &id).await {
        Ok(failed) => {
            let record = MessageRecord::of(&endpoint, failed.envelope());
            html(StatusCode::OK, pages::message(&links, &record))
        }
        Err(error) => failure(&links, &error),
    }
}

/// `POST /endpoints/{name}/retry`.
pub(super) async fn retry(
    State(ui): State<Shared>,
    Path(endpoint): Path<String>,
    body: Bytes,
) -> Response {
    act(&ui, &endpoint, &body, Verb::Retry).await
}

/// `POST /endpoints/{name}/delete`.
pub(super) async fn delete(
    State(ui): State<Shared>,
    Path(endpoint): Path<String>,
    body: Bytes,
) -> Response {
    act(&ui, &endpoint, &body, Verb::Delete).await
}

/// Any other address.
pub(super) async fn not_found(State(ui): State<Shared>) -> Response {
    let links = Links::new(ui.access.token.as_deref());
    html(
        StatusCode::NOT_FOUND,
        pages::failed(&links, StatusCode::NOT_FOUND, "There is no such page."),
    )
}

/// A retry or a delete of the posted ids: first a page to confirm them, then, with
/// `confirm=yes`, the operation and a redirect to the list with a notice of what was done.
async fn act(ui: &Shared, endpoint: &str, body: &[u8], verb: Verb) -> Response {
    let links = Links::new(ui.access.token.as_deref());
    let form = pairs(body);
    let filter = Filter::from_pairs(&form);
    let ids: Vec<String> = form
        .iter()
        .filter(|(k, v)| k == "id" && !v.is_empty())
        .map(|(_, v)| v.clone())
        .collect();
    if ids.is_empty() {
        let error = CliError::Invalid("No messages were chosen.".into());
        return failure(&links, &error);
    }

    if first(&form, "confirm").as_deref() != Some("yes") {
        let all = match ui.ops.list(endpoint, None, MAX_SCAN).await {
            Ok(all) => all,
            Err(error) => return failure(&links, &error),
        };
        let chosen: Vec<FailedRow> = all
            .iter()
            .filter(|f| ids.iter().any(|id| id == f.message_id()))
            .map(FailedRow::from)
            .collect();
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !chosen.iter().any(|c| &&c.id == id))
            .cloned()
            .collect();
        let confirm = Confirm {
            endpoint,
            verb,
            filter: &filter,
            chosen: &chosen,
            missing: &missing,
        };
        return html(StatusCode::OK, pages::confirm(&links, &confirm));
    }

    let selection = Selection::Ids(ids.iter().map(|id| MessageId::from(id.as_str())).collect());
    let outcome = match verb {
        Verb::Retry => ui.ops.retry(endpoint, &selection).await,
        Verb::Delete => ui.ops.delete(endpoint, &selection).await,
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => return failure(&links, &error),
    };
    let done = outcome.done.len().to_string();
    let missing = outcome.not_found.len().to_string();
    let mut notice = vec![(
        match verb {
            Verb::Retry => "retried",
            Verb::Delete => "deleted",
        },
        done.as_str(),
    )];
    if !outcome.not_found.is_empty() {
        notice.push(("missing", missing.as_str()));
    }
    let back = links.errors(endpoint, &filter, &notice);
    // 303: the browser fetches the list with GET, and a reload does not post again.
    (StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_encode_names_and_carry_the_token() {
        let links = Links::new(Some("t&k"));
        assert_eq!(links.home(), "/?token=t%26k");
        assert_eq!(
            links.message("a b/c", "m?1"),
            "/endpoints/a%20b%2Fc/errors/m%3F1?token=t%26k"
        );
        let filter = Filter {
            reason: Some("handler-error".into()),
            message_type: None,
        };
        assert_eq!(
            Links::new(None).errors("sales", &filter, &[("after", "x")]),
            "/endpoints/sales/errors?reason=handler-error&after=x"
        );
    }
}

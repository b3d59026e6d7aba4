//! The HTML of the pages, written out by hand: every text that comes from the broker (names,
//! ids, headers, bodies, errors) goes through [`esc`], every address through
//! [`super::handlers::Links`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::http::StatusCode;
use base64::Engine as _;

use super::handlers::{Filter, Links, Notice, Verb};
use crate::records::{EndpointRow, FailedRow, MessageRecord};

/// `text` made safe for HTML text and for double-quoted attribute values (`&`, `<`, `>`
/// and `"` escaped): one function for both, so no place can pick the weaker one.
fn esc(text: &str) -> Cow<'_, str> {
    html_escape::encode_double_quoted_attribute(text)
}

/// "1 message", "3 messages".
fn messages(n: usize) -> String {
    if n == 1 {
        "1 message".into()
    } else {
        format!("{n} messages")
    }
}

fn known<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map_or("-".to_string(), ToString::to_string)
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1f2a37;color:#fff;padding:.6rem 1.2rem}
header a{color:#fff;text-decoration:none}header .crumbs a{font-weight:600}
main{padding:1rem 1.2rem;max-width:1280px}
h1{font-size:1.3rem;margin:.4rem 0 .8rem}h2{font-size:1.05rem;margin:1.2rem 0 .5rem}
table{border-collapse:collapse;background:#fff;width:100%;border:1px solid #e3e6ea}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef1f4;font-weight:600}
.n{text-align:right;font-variant-numeric:tabular-nums}
.bad,.bad a{color:#b42318;font-weight:600}.muted{color:#667085}
th[scope=row]{width:16rem;font-weight:600}
td.v{white-space:pre-wrap;word-break:break-all}
.notice{background:#e7f6ec;border:1px solid #9bd3ae;padding:.5rem .8rem;margin:.6rem 0}
.warn{background:#fff4e5;border:1px solid #f0c27b;padding:.5rem .8rem;margin:.6rem 0}
pre{background:#fff;border:1px solid #e3e6ea;padding:.6rem;overflow:auto;white-space:pre-wrap;word-break:break-all}
code,pre,td.id,td.v{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
form.bar{display:flex;gap:.6rem;align-items:end;flex-wrap:wrap;margin:.6rem 0}
label{display:flex;flex-direction:column;font-size:12px;color:#475467}
select,button{font:inherit;padding:.25rem .5rem}
button{border:1px solid #98a2b3;background:#fff;border-radius:4px;cursor:pointer}
button.go{background:#1570ef;border-color:#1570ef;color:#fff}
button.danger{background:#b42318;border-color:#b42318;color:#fff}
.paging{margin:.6rem 0;display:flex;gap:1rem}
";

/// A whole page: `crumbs` are (address, text) pairs after the home link.
fn layout(title: &str, links: &Links, crumbs: &[(String, String)], content: &str) -> String {
    let mut nav = format!(r#"<a href="{}">bus</a>"#, esc(&links.home()));
    for (href, text) in crumbs {
        let _ = write!(nav, r#" › <a href="{}">{}</a>"#, esc(href), esc(text));
    }
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · bus</title>
<style>{STYLE}</style>
</head>
<body>
<header><span class="crumbs">{nav}</span></header>
<main>
{content}
</main>
</body>
</html>
"#,
        title = esc(title),
    )
}

/// A hidden field carrying the token, when there is one.
fn token_field(links: &Links) -> String {
    links.token().map_or(String::new(), |token| {
        format!(
            r#"<input type="hidden" name="token" value="{}">"#,
            esc(token)
        )
    })
}

/// Hidden fields that bring the list back with its filters after an action.
fn filter_fields(filter: &Filter) -> String {
    let mut out = String::new();
    if let Some(reason) = &filter.reason {
        let _ = write!(
            out,
            r#"<input type="hidden" name="reason" value="{}">"#,
            esc(reason)
        );
    }
    if let Some(message_type) = &filter.message_type {
        let _ = write!(
            out,
            r#"<input type="hidden" name="type" value="{}">"#,
            esc(message_type)
        );
    }
    out
}

/// The page of a refused request.
pub(super) fn refused(status: StatusCode, why: &str) -> String {
    // No links: a refused request has no token to carry on.
    let title = status.canonical_reason().unwrap_or("Refused");
    layout(
        title,
        &Links::new(None),
        &[],
        &format!("<h1>{}</h1>\n<p>{}</p>", esc(title), esc(why)),
    )
}

/// The page of a failed operation.
pub(super) fn failed(links: &Links, status: StatusCode, why: &str) -> String {
    let title = status.canonical_reason().unwrap_or("Error");
    layout(
        title,
        links,
        &[],
        &format!(
            r#"<h1>{}</h1>
<pre class="error">{}</pre>
<p><a href="{}">Back to the endpoints</a></p>"#,
            esc(title),
            esc(why),
            esc(&links.home())
        ),
    )
}

/// `/`: the endpoints, each linking to its failed messages.
pub(super) fn endpoints(
    links: &Links,
    rows: &[EndpointRow],
    rates: Option<&std::collections::HashMap<String, f64>>,
) -> String {
    let mut content = String::from("<h1>Endpoints</h1>\n");
    if rows.is_empty() {
        content.push_str("<p>The transport knows no endpoints yet: they appear once a service has started on it.</p>");
        return layout("Endpoints", links, &[], &content);
    }
    let rate_head = if rates.is_some() {
        "<th class=\"n\">Handled/s</th>"
    } else {
        ""
    };
    let _ = writeln!(
        content,
        "<table>\n<thead><tr><th>Endpoint</th><th class=\"n\">Waiting</th><th class=\"n\">Consumers</th><th class=\"n\">Failed</th>{rate_head}</tr></thead>\n<tbody>"
    );
    for row in rows {
        let href = links.errors(&row.name, &Filter::default(), &[]);
        let failed = known(&row.error_depth);
        let class = if row.error_depth.unwrap_or(0) > 0 {
            "n bad"
        } else {
            "n"
        };
        let rate = match rates {
            Some(rates) => format!(
                r#"<td class="n" data-rate-of="{}">{}</td>"#,
                esc(&row.name),
                rates
                    .get(&row.name)
                    .map_or("-".to_string(), |r| format!("{r:.1}"))
            ),
            None => String::new(),
        };
        let _ = writeln!(
            content,
            r#"<tr><td><a href="{href}">{name}</a></td><td class="n">{waiting}</td><td class="n">{consumers}</td><td class="{class}" data-failed-of="{name}"><a href="{href}">{failed}</a></td>{rate}</tr>"#,
            href = esc(&href),
            name = esc(&row.name),
            waiting = known(&row.depth),
            consumers = known(&row.consumers),
        );
    }
    content.push_str(
        "</tbody>\n</table>\n<p class=\"muted\">Waiting: messages in the input queue. Failed: messages in the error queue. Handled/s: from the services' metrics, when <code>bus ui --metrics</code> names them. <code>-</code>: not known.</p>",
    );
    layout("Endpoints", links, &[], &content)
}

/// What the failed-message list shows.
pub(super) struct Listing<'a> {
    pub endpoint: &'a str,
    pub filter: &'a Filter,
    pub notice: &'a Notice,
    /// Messages in the error queue.
    pub total: usize,
    /// Of them, those that match the filter.
    pub matching: usize,
    /// Where in the matching ones the page starts.
    pub start: usize,
    pub shown: &'a [FailedRow],
    /// Whether matching messages follow the page.
    pub more: bool,
    /// Whether the page is not the first.
    pub paged: bool,
    /// The `after` id asked for that is no longer in the queue.
    pub stale_after: Option<&'a str>,
    /// The page size, when not the default.
    pub limit: Option<usize>,
    /// Every reason and message type in the queue, with how many have it.
    pub reasons: &'a BTreeMap<String, usize>,
    pub types: &'a BTreeMap<String, usize>,
}

fn notice_text(endpoint: &str, notice: &Notice) -> Option<String> {
    let mut text = match (notice.retried, notice.deleted) {
        (Some(n), _) => format!("{} sent back to {endpoint}", messages(n)),
        (None, Some(n)) => format!("{} deleted from {endpoint}", messages(n)),
        (None, None) if notice.missing > 0 => String::new(),
        (None, None) => return None,
    };
    if notice.missing > 0 {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(
            text,
            "{} no longer in the error queue",
            messages(notice.missing)
        );
    }
    Some(text)
}

fn options(name: &str, label: &str, all: &BTreeMap<String, usize>, chosen: Option<&str>) -> String {
    let mut out = format!(r#"<label>{label}<select name="{name}"><option value="">any</option>"#);
    for (value, count) in all {
        let selected = if chosen == Some(value.as_str()) {
            " selected"
        } else {
            ""
        };
        let shown = if value.is_empty() { "(none)" } else { value };
        let _ = write!(
            out,
            r#"<option value="{}"{selected}>{} ({count})</option>"#,
            esc(value),
            esc(shown)
        );
    }
    // A filter for something no longer in the queue stays visible, and chosen.
    if let Some(chosen) = chosen.filter(|c| !all.contains_key(*c)) {
        let _ = write!(
            out,
            r#"<option value="{0}" selected>{0} (0)</option>"#,
            esc(chosen)
        );
    }
    out.push_str("</select></label>");
    out
}

/// `/endpoints/{name}/errors`: the failed messages, filters, paging, and the actions.
pub(super) fn errors(links: &Links, l: &Listing<'_>) -> String {
    let endpoint = l.endpoint;
    let mut c = format!(
        "<h1>Failed messages of <code>{}</code></h1>\n",
        esc(endpoint)
    );
    if let Some(text) = notice_text(endpoint, l.notice) {
        let _ = writeln!(c, r#"<p class="notice" role="status">{}</p>"#, esc(&text));
    }
    if let Some(id) = l.stale_after {
        let _ = writeln!(
            c,
            r#"<p class="warn">Message <code>{}</code> is no longer in the error queue: showing the first page.</p>"#,
            esc(id)
        );
    }
    let _ = writeln!(
        c,
        r#"<p><span data-total>{}</span> in the error queue{}.</p>"#,
        messages(l.total),
        if l.filter == &Filter::default() {
            String::new()
        } else {
            format!(", {} matching the filters", l.matching)
        }
    );

    // Filters: a plain GET form, so the filtered list has an address of its own.
    let _ = writeln!(
        c,
        r#"<form class="bar" method="get" action="{action}">{reasons}{types}{limit}{token}<button type="submit">Filter</button> <a href="{clear}">Clear</a></form>"#,
        action = esc(&links.errors_path(endpoint)),
        reasons = options("reason", "Reason", l.reasons, l.filter.reason.as_deref()),
        types = options(
            "type",
            "Message type",
            l.types,
            l.filter.message_type.as_deref()
        ),
        limit = l.limit.map_or(String::new(), |n| format!(
            r#"<input type="hidden" name="limit" value="{n}">"#
        )),
        token = token_field(links),
        clear = esc(&links.errors(endpoint, &Filter::default(), &[])),
    );

    if l.shown.is_empty() {
        c.push_str(if l.total == 0 {
            "<p>No failed messages: the error queue is empty.</p>\n"
        } else {
            "<p>No failed messages match the filters.</p>\n"
        });
    } else {
        c.push_str("<table>\n<thead><tr><th>Message id</th><th>Type</th><th>Reason</th><th class=\"n\">Attempts</th><th>Failed at</th><th>Error</th></tr></thead>\n<tbody>\n");
        for row in l.shown {
            let _ = writeln!(
                c,
                r#"<tr><td class="id"><a href="{href}">{id}</a></td><td>{ty}</td><td>{reason}</td><td class="n">{attempts}</td><td>{at}</td><td>{error}</td></tr>"#,
                href = esc(&links.message(endpoint, &row.id)),
                id = esc(&row.id),
                ty = esc(&row.message_type),
                reason = esc(&known(&row.reason)),
                attempts = known(&row.attempts),
                at = esc(&known(&row.failed_at)),
                error = esc(&known(&row.error)),
            );
        }
        c.push_str("</tbody>\n</table>\n");
        let _ = writeln!(
            c,
            r#"<p class="muted">{} to {} of {}.</p>"#,
            l.start + 1,
            l.start + l.shown.len(),
            l.matching
        );
    }

    let mut paging = Vec::new();
    let limit = l.limit.map(|n| n.to_string());
    let limit_pair: Vec<(&str, &str)> = limit.iter().map(|n| ("limit", n.as_str())).collect();
    if l.paged {
        paging.push(format!(
            r#"<a href="{}">« First page</a>"#,
            esc(&links.errors(endpoint, l.filter, &limit_pair))
        ));
    }
    if let (true, Some(last)) = (l.more, l.shown.last()) {
        let mut pairs = limit_pair.clone();
        pairs.push(("after", &last.id));
        paging.push(format!(
            r#"<a href="{}" rel="next">Next page »</a>"#,
            esc(&links.errors(endpoint, l.filter, &pairs))
        ));
    }
    if !paging.is_empty() {
        let _ = writeln!(c, r#"<nav class="paging">{}</nav>"#, paging.join(""));
    }

    if !l.shown.is_empty() {
        // The ids of the rows on this page travel in the form: "all shown" means exactly
        // what the operator saw, not what arrived since.
        let mut ids = String::new();
        for row in l.shown {
            let _ = write!(
                ids,
                r#"<input type="hidden" name="id" value="{}">"#,
                esc(&row.id)
            );
        }
        let n = l.shown.len();
        let _ = writeln!(
            c,
            r#"<form class="bar" method="post" action="{retry}">{ids}{filter}{token}<button class="go" type="submit">Retry all shown ({n})</button><button class="danger" type="submit" formaction="{delete}">Delete all shown ({n})</button></form>"#,
            retry = esc(&links.action(endpoint, Verb::Retry)),
            delete = esc(&links.action(endpoint, Verb::Delete)),
            filter = filter_fields(l.filter),
            token = token_field(links),
        );
    }
    let crumbs = [(
        links.errors(endpoint, &Filter::default(), &[]),
        format!("{endpoint} · failed messages"),
    )];
    layout(
        &format!("Failed messages of {endpoint}"),
        links,
        &crumbs,
        &c,
    )
}

/// `/endpoints/{name}/errors/{id}`: every header and the body, with Retry and Delete.
pub(super) fn message(links: &Links, record: &MessageRecord) -> String {
    let endpoint = &record.endpoint;
    let id = &record.message_id;
    let mut c = format!(
        "<h1>Message <code>{}</code></h1>\n<p>In the error queue of <code>{}</code>.</p>\n",
        esc(id),
        esc(endpoint)
    );
    let _ = writeln!(
        c,
        r#"<form class="bar" method="post" action="{retry}"><input type="hidden" name="id" value="{id}">{token}<button class="go" type="submit">Retry</button><button class="danger" type="submit" formaction="{delete}">Delete</button></form>"#,
        retry = esc(&links.action(endpoint, Verb::Retry)),
        delete = esc(&links.action(endpoint, Verb::Delete)),
        id = esc(id),
        token = token_field(links),
    );

    c.push_str("<h2>Headers</h2>\n<table>\n<tbody>\n");
    let mut row = |name: &str, value: &str| {
        let _ = writeln!(
            c,
            r#"<tr><th scope="row">{}</th><td class="v">{}</td></tr>"#,
            esc(name),
            esc(value)
        );
    };
    row("message id", id);
    row("message type", &record.message_type);
    row("content type", &record.content_type);
    if let Some(correlation) = &record.correlation_id {
        row("correlation id", correlation);
    }
    if let Some(sent) = &record.sent_at {
        row("sent at", sent);
    }
    for (name, value) in &record.headers {
        row(name, value);
    }
    c.push_str("</tbody>\n</table>\n");

    c.push_str("<h2>Body</h2>\n");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&record.body_base64)
        .unwrap_or_default();
    match (&record.body, std::str::from_utf8(&bytes)) {
        (Some(json), _) => {
            let pretty = serde_json::to_string_pretty(json).unwrap_or_default();
            let _ = writeln!(c, r#"<pre class="body">{}</pre>"#, esc(&pretty));
        }
        (None, Ok(text)) => {
            let _ = writeln!(
                c,
                r#"<p class="muted">Not JSON; as text:</p><pre class="body">{}</pre>"#,
                esc(text)
            );
        }
        (None, Err(_)) => {
            let _ = writeln!(
                c,
                r#"<p class="muted">Not text; {} bytes as base64:</p><pre class="body">{}</pre>"#,
                bytes.len(),
                esc(&record.body_base64)
            );
        }
    }
    let crumbs = [
        (
            links.errors(endpoint, &Filter::default(), &[]),
            format!("{endpoint} · failed messages"),
        ),
        (links.message(endpoint, id), id.clone()),
    ];
    layout(&format!("Message {id}"), links, &crumbs, &c)
}

/// What a confirmation page asks about.
pub(super) struct Confirm<'a> {
    pub endpoint: &'a str,
    pub verb: Verb,
    /// The list's filters, to go back to.
    pub filter: &'a Filter,
    /// The chosen messages still in the error queue.
    pub chosen: &'a [FailedRow],
    /// The chosen ids no longer there.
    pub missing: &'a [String],
}

/// The page that asks before a retry or a delete is done.
pub(super) fn confirm(links: &Links, k: &Confirm<'_>) -> String {
    let endpoint = k.endpoint;
    let n = k.chosen.len();
    let (title, explain, button) = match k.verb {
        Verb::Retry => (
            format!("Send {} back to {endpoint}?", messages(n)),
            "Each goes back to the input queue of the endpoint with its own message id, its failure headers kept as history, and leaves the error queue once the transport accepted it.",
            format!("Yes, send {} back", messages(n)),
        ),
        Verb::Delete => (
            format!("Delete {} from {endpoint}?", messages(n)),
            "They are removed from the error queue for good and never handled. Export them first (bus errors export) to keep a copy.",
            format!("Yes, delete {}", messages(n)),
        ),
    };
    let mut c = format!("<h1>{}</h1>\n<p>{}</p>\n", esc(&title), esc(explain));
    if !k.missing.is_empty() {
        let ids: Vec<String> = k
            .missing
            .iter()
            .map(|id| format!("<code>{}</code>", esc(id)))
            .collect();
        let _ = writeln!(
            c,
            r#"<p class="warn">No longer in the error queue: {}.</p>"#,
            ids.join(", ")
        );
    }
    let back = links.errors(endpoint, k.filter, &[]);
    if k.chosen.is_empty() {
        let _ = writeln!(
            c,
            r#"<p>Nothing is left to do. <a href="{}">Back to the list</a></p>"#,
            esc(&back)
        );
    } else {
        c.push_str("<table>\n<thead><tr><th>Message id</th><th>Type</th><th>Reason</th><th>Error</th></tr></thead>\n<tbody>\n");
        let mut ids = String::new();
        for row in k.chosen {
            let _ = writeln!(
                c,
                r#"<tr><td class="id">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&row.id),
                esc(&row.message_type),
                esc(&known(&row.reason)),
                esc(&known(&row.error)),
            );
            let _ = write!(
                ids,
                r#"<input type="hidden" name="id" value="{}">"#,
                esc(&row.id)
            );
        }
        c.push_str("</tbody>\n</table>\n");
        let _ = writeln!(
            c,
            r#"<form class="bar" method="post" action="{action}">{ids}{filter}{token}<input type="hidden" name="confirm" value="yes"><button class="{class}" type="submit">{button}</button> <a href="{back}">Cancel</a></form>"#,
            action = esc(&links.action(endpoint, k.verb)),
            filter = filter_fields(k.filter),
            token = token_field(links),
            class = if k.verb == Verb::Delete {
                "danger"
            } else {
                "go"
            },
            button = esc(&button),
            back = esc(&back),
        );
    }
    let crumbs = [(
        links.errors(endpoint, &Filter::default(), &[]),
        format!("{endpoint} · failed messages"),
    )];
    layout(&title, links, &crumbs, &c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_say_what_was_done() {
        let notice = |retried, deleted, missing| {
            notice_text(
                "sales",
                &Notice {
                    retried,
                    deleted,
                    missing,
                },
            )
        };
        assert_eq!(
            notice(Some(1), None, 0).as_deref(),
            Some("1 message sent back to sales")
        );
        assert_eq!(
            notice(None, Some(3), 1).as_deref(),
            Some("3 messages deleted from sales; 1 message no longer in the error queue")
        );
        assert_eq!(notice(None, None, 0), None);
    }

    #[test]
    fn broker_text_is_escaped() {
        let rows = [EndpointRow {
            name: "<script>alert(1)</script>".into(),
            depth: None,
            consumers: Some(1),
            error_depth: Some(2),
        }];
        let page = endpoints(&Links::new(None), &rows, None);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }
}

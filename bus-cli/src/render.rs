//! The human output of the `bus` command: aligned columns, `-` for what is not known.

use crate::records::{EndpointRow, FailedRow, MessageRecord};

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn known<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map_or("-".to_string(), ToString::to_string)
}

/// `bus endpoints`.
///
/// ```
/// use bus_cli::{render, EndpointRow};
///
/// let rows = [EndpointRow { name: "sales".into(), depth: Some(3), consumers: None, error_depth: Some(1) }];
/// assert_eq!(
///     render::endpoints(&rows),
///     "ENDPOINT  WAITING  CONSUMERS  FAILED\nsales     3        -          1\n\
///      (-: the transport cannot tell)\n"
/// );
/// ```
pub fn endpoints(rows: &[EndpointRow]) -> String {
    if rows.is_empty() {
        return "no endpoints\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                known(&r.depth),
                known(&r.consumers),
                known(&r.error_depth),
            ]
        })
        .collect();
    let mut out = table(&["ENDPOINT", "WAITING", "CONSUMERS", "FAILED"], &cells);
    let unknown = rows
        .iter()
        .any(|r| r.depth.is_none() || r.consumers.is_none() || r.error_depth.is_none());
    if unknown {
        out.push_str("(-: the transport cannot tell)\n");
    }
    out
}

/// `bus errors list`.
pub fn failed(endpoint: &str, rows: &[FailedRow]) -> String {
    if rows.is_empty() {
        return format!("no failed messages in the error queue of `{endpoint}`\n");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.message_type.clone(),
                known(&r.reason),
                known(&r.attempts),
                known(&r.failed_at),
                known(&r.error),
            ]
        })
        .collect();
    table(
        &["ID", "TYPE", "REASON", "ATTEMPTS", "FAILED AT", "ERROR"],
        &cells,
    )
}

/// `bus errors show`: the well-known headers, the others sorted, then the body (pretty JSON
/// when it is JSON, else its bytes as base64).
pub fn message(record: &MessageRecord) -> String {
    let mut out = format!(
        "message id:     {}\nmessage type:   {}\ncontent type:   {}\n",
        record.message_id, record.message_type, record.content_type
    );
    if let Some(c) = &record.correlation_id {
        out.push_str(&format!("correlation id: {c}\n"));
    }
    if let Some(t) = &record.sent_at {
        out.push_str(&format!("sent at:        {t}\n"));
    }
    for (name, value) in &record.headers {
        out.push_str(&format!("{name}: {value}\n"));
    }
    out.push('\n');
    match &record.body {
        Some(json) => {
            out.push_str(&serde_json::to_string_pretty(json).unwrap_or_default());
            out.push('\n');
        }
        None => out.push_str(&format!("(not JSON; base64) {}\n", record.body_base64)),
    }
    out
}

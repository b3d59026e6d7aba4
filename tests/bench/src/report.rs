//! The figures of a run: one [`Row`] per figure, printed as a table or as JSON lines.

use serde::Serialize;

use crate::machine::Machine;

/// One figure measured on both sides.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The case, e.g. `memory commands, 1 handler`.
    pub case: String,
    /// What was measured, e.g. `throughput`.
    pub metric: String,
    /// Its unit, e.g. `msg/s`.
    pub unit: &'static str,
    /// The bus's figure.
    pub bus: f64,
    /// The raw library's figure.
    pub raw: f64,
    /// `bus / raw`.
    pub ratio: f64,
    /// Whether a larger figure is better (throughput) or worse (latency, memory).
    pub higher_is_better: bool,
    /// What the raw side is, when the case name does not say.
    pub note: String,
}

impl Row {
    /// A row; the ratio is computed.
    pub fn new(
        case: impl Into<String>,
        metric: impl Into<String>,
        unit: &'static str,
        bus: f64,
        raw: f64,
        higher_is_better: bool,
    ) -> Self {
        Row {
            case: case.into(),
            metric: metric.into(),
            unit,
            bus,
            raw,
            ratio: if raw == 0.0 { f64::NAN } else { bus / raw },
            higher_is_better,
            note: String::new(),
        }
    }

    /// Add a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// A figure for the table: thousands separated above 1,000, else a few significant digits.
fn figure(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x.abs() >= 999.5 {
        let s = format!("{:.0}", x.round());
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The table, as printed at the end of a run.
pub fn table(machine: &Machine, rows: &[Row]) -> String {
    let headers = ["case", "metric", "bus", "raw", "bus/raw", "raw side"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.case.clone(),
                format!("{} ({})", r.metric, r.unit),
                figure(r.bus),
                figure(r.raw),
                if r.ratio.is_finite() {
                    format!("{:.2}", r.ratio)
                } else {
                    "-".into()
                },
                r.note.clone(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::from("|");
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            // Figures right-aligned, text left-aligned.
            if (2..=4).contains(&i) {
                s.push_str(&format!(" {c:>w$} |"));
            } else {
                s.push_str(&format!(" {c:<w$} |"));
            }
        }
        s
    };
    let mut out = String::new();
    out.push_str(&machine.describe());
    out.push('\n');
    out.push_str(&line(&headers.map(String::from)));
    out.push('\n');
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if (2..=4).contains(&i) {
                format!("{}:", "-".repeat(w.saturating_sub(1)))
            } else {
                "-".repeat(*w)
            }
        })
        .collect();
    out.push_str(&line(&rule));
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// One JSON object per line: the machine first, then every row.
pub fn json_lines(machine: &Machine, rows: &[Row]) -> String {
    let mut out = String::new();
    let machine_line = serde_json::json!({ "kind": "machine", "machine": machine });
    out.push_str(&machine_line.to_string());
    out.push('\n');
    for r in rows {
        let mut v = serde_json::to_value(r).expect("rows serialize");
        if let Some(obj) = v.as_object_mut() {
            obj.insert("kind".into(), "case".into());
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

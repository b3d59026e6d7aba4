//! W3C trace context in message headers: the producer span's context written as `traceparent`
//! (and `tracestate`), read back on receive to make the consumer span its child.
//!
//! The format is fixed (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, 55
//! characters), so it is written and read here rather than through `opentelemetry_sdk`'s
//! propagator, which would bring the whole SDK into every service that only wants its
//! traces to connect.

use std::str::FromStr;
use std::sync::Arc;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::{header, Headers};

/// The trace context headers of a producer span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TraceHeaders {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceHeaders {
    /// The headers of `span`'s OpenTelemetry context; `None` when it has none (nobody
    /// listens, or the subscriber has no OpenTelemetry layer).
    pub(crate) fn of(span: &Span) -> Option<Self> {
        if span.is_disabled() {
            return None;
        }
        let context = span.context();
        let otel = context.span();
        let span_context = otel.span_context();
        if !span_context.is_valid() {
            return None;
        }
        let state = span_context.trace_state().header();
        Some(TraceHeaders {
            traceparent: traceparent(span_context),
            tracestate: (!state.is_empty()).then_some(state),
        })
    }

    /// Write them into `headers` (copied first only if someone else holds them), replacing
    /// any the message had.
    pub(crate) fn write(&self, headers: &mut Arc<Headers>) {
        let custom = &mut Arc::make_mut(headers).custom;
        custom.insert(header::TRACEPARENT.to_string(), self.traceparent.clone());
        match &self.tracestate {
            Some(state) => {
                custom.insert(header::TRACESTATE.to_string(), state.clone());
            }
            None => {
                custom.remove(header::TRACESTATE);
            }
        }
    }
}

/// Make the trace context `headers` carry the parent of `span`, which must not have been
/// entered yet. Nothing happens without one, or when nobody listens to the span.
pub(crate) fn adopt_parent(span: &Span, headers: &Headers) {
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = extract(headers) {
        // Without an OpenTelemetry layer there is no parent to set; that is fine.
        let _ = span.set_parent(parent);
    }
}

/// The remote context the headers carry, if they carry a valid one.
fn extract(headers: &Headers) -> Option<Context> {
    let parent = parse_traceparent(headers.get(header::TRACEPARENT)?)?;
    let state = headers
        .get(header::TRACESTATE)
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    let span_context = SpanContext::new(parent.trace_id, parent.span_id, parent.flags, true, state);
    Some(Context::new().with_remote_span_context(span_context))
}

/// A `traceparent` value: version 00.
fn traceparent(span_context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    )
}

/// What a `traceparent` says.
#[derive(Debug, PartialEq, Eq)]
struct Parent {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

/// Read a `traceparent` value as W3C trace context says: lowercase hex fields of fixed
/// length, trace and span ids not all zeros, version `ff` invalid, a version 00 value exactly
/// 55 characters, a later version's value possibly longer (only its first four fields read).
fn parse_traceparent(value: &str) -> Option<Parent> {
    let value = value.trim();
    let bytes = value.as_bytes();
    if !value.is_ascii() || bytes.len() < 55 {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let hex = |field: &str| {
        field
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let (version, trace_id, span_id, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    if ![version, trace_id, span_id, flags].into_iter().all(hex) || version == "ff" {
        return None;
    }
    if bytes.len() > 55 && (version == "00" || bytes[55] != b'-') {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    Some(Parent {
        trace_id,
        span_id,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let parent = parse_traceparent(VALUE).expect("valid");
        assert_eq!(
            parent.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            parent.span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(parent.flags.is_sampled());
        let span_context = SpanContext::new(
            parent.trace_id,
            parent.span_id,
            parent.flags,
            true,
            TraceState::default(),
        );
        assert_eq!(traceparent(&span_context), VALUE);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(
            parse_traceparent(later).is_some(),
            "a later version's extra fields"
        );
    }

    #[test]
    fn headers_carry_the_context_and_a_state_only_when_there_is_one() {
        let mut headers = Arc::new(Headers::default());
        let with_state = TraceHeaders {
            traceparent: VALUE.into(),
            tracestate: Some("vendor=1".into()),
        };
        with_state.write(&mut headers);
        assert_eq!(headers.get(header::TRACESTATE), Some("vendor=1"));
        let context = extract(&headers).expect("a context");
        let span = context.span();
        assert!(span.span_context().is_remote());
        assert_eq!(span.span_context().trace_state().get("vendor"), Some("1"));

        let without = TraceHeaders {
            traceparent: VALUE.into(),
            tracestate: None,
        };
        without.write(&mut headers);
        assert_eq!(headers.get(header::TRACEPARENT), Some(VALUE));
        assert_eq!(headers.get(header::TRACESTATE), None, "no stale state");
    }
}

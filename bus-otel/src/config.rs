//! Reading the standard `OTEL_*` variables into what to build, without building anything.
//!
//! Parsing takes a lookup function rather than reading the process environment so that
//! every combination can be tested without touching process-wide state.

use crate::OtelError;

pub(crate) const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub(crate) const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub(crate) const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
pub(crate) const OTEL_METRICS_EXPORTER: &str = "OTEL_METRICS_EXPORTER";
pub(crate) const OTEL_PROPAGATORS: &str = "OTEL_PROPAGATORS";
pub(crate) const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub(crate) const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";

/// The collector address the OpenTelemetry specification falls back to for OTLP/HTTP.
const DEFAULT_OTLP_HTTP_ENDPOINT: &str = "http://localhost:4318";

/// The wire encoding of OTLP over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `http/protobuf`: the specification's default, and what every collector accepts.
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

impl Protocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
        }
    }

    pub(crate) fn to_otlp(self) -> opentelemetry_otlp::Protocol {
        match self {
            Protocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
            Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        }
    }
}

/// One signal (traces or metrics) sent to an OTLP/HTTP receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtlpTarget {
    /// How the payload is encoded.
    pub(crate) protocol: Protocol,
    /// The full URL requests go to, for the startup log line. The OTLP exporter resolves
    /// the same URL from the same variables itself, so headers, timeouts and compression
    /// (`OTEL_EXPORTER_OTLP_*_HEADERS` and so on) apply as the specification says.
    pub(crate) url: String,
}

/// Which W3C propagators to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Propagators {
    pub(crate) trace_context: bool,
    pub(crate) baggage: bool,
}

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `OTEL_SDK_DISABLED=true`: no OpenTelemetry provider at all, logs only.
    pub(crate) disabled: bool,
    /// `OTEL_SERVICE_NAME`, when set.
    pub(crate) service_name: Option<String>,
    /// Where spans go; `None` when traces are not exported.
    pub(crate) traces: Option<OtlpTarget>,
    /// Where metrics are pushed; `None` when they are only kept for the Prometheus scrape.
    pub(crate) metrics: Option<OtlpTarget>,
    pub(crate) propagators: Propagators,
}

/// The variables that differ between traces and metrics.
struct Signal {
    exporter_var: &'static str,
    exporter_expected: &'static str,
    /// Exporter names that are accepted but mean "no OTLP push".
    pull_names: &'static [&'static str],
    endpoint_var: &'static str,
    protocol_var: &'static str,
    path: &'static str,
}

const TRACES: Signal = Signal {
    exporter_var: OTEL_TRACES_EXPORTER,
    exporter_expected: "`otlp` or `none`",
    pull_names: &[],
    endpoint_var: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol_var: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    path: "/v1/traces",
};

const METRICS: Signal = Signal {
    exporter_var: OTEL_METRICS_EXPORTER,
    exporter_expected: "`otlp`, `prometheus` or `none` (a comma-separated list)",
    pull_names: &["prometheus"],
    endpoint_var: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    protocol_var: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    path: "/v1/metrics",
};

impl Settings {
    /// Reads the settings from the process environment.
    pub(crate) fn from_env() -> Result<Settings, OtelError> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`. An empty (or blank) value counts as unset, as
    /// the specification asks.
    pub(crate) fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, OtelError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let disabled = match get(OTEL_SDK_DISABLED) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                return Err(OtelError::InvalidValue {
                    var: OTEL_SDK_DISABLED,
                    value: v,
                    expected: "`true` or `false`",
                })
            }
        };
        let service_name = get(OTEL_SERVICE_NAME);
        if disabled {
            // Nothing else is read: a disabled SDK must not fail on settings it ignores.
            return Ok(Settings {
                disabled,
                service_name,
                traces: None,
                metrics: None,
                propagators: Propagators {
                    trace_context: false,
                    baggage: false,
                },
            });
        }

        Ok(Settings {
            disabled,
            service_name,
            traces: otlp_target(&TRACES, &get)?,
            metrics: otlp_target(&METRICS, &get)?,
            propagators: propagators(&get)?,
        })
    }
}

/// Whether and where one signal is pushed over OTLP.
///
/// With `OTEL_*_EXPORTER` unset, OTLP is only used when an endpoint variable is set: a
/// service started without any OpenTelemetry configuration must not retry against a
/// collector that is not there. Setting the exporter to `otlp` explicitly without an
/// endpoint sends to the specification's default, `http://localhost:4318`.
fn otlp_target(
    signal: &Signal,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpTarget>, OtelError> {
    let explicit = match get(signal.exporter_var) {
        None => None,
        Some(value) => {
            let mut otlp = false;
            let mut none = false;
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let name = name.to_ascii_lowercase();
                match name.as_str() {
                    "otlp" => otlp = true,
                    "none" => none = true,
                    n if signal.pull_names.contains(&n) => {}
                    _ => {
                        return Err(OtelError::InvalidValue {
                            var: signal.exporter_var,
                            value,
                            expected: signal.exporter_expected,
                        })
                    }
                }
            }
            Some(otlp && !none)
        }
    };
    if explicit == Some(false) {
        return Ok(None);
    }

    let protocol = protocol(signal.protocol_var, get)?;
    let url = match (get(signal.endpoint_var), get(OTEL_EXPORTER_OTLP_ENDPOINT)) {
        (Some(url), _) => {
            check_scheme(signal.endpoint_var, &url)?;
            url
        }
        (None, Some(base)) => {
            check_scheme(OTEL_EXPORTER_OTLP_ENDPOINT, &base)?;
            join(&base, signal.path)
        }
        (None, None) if explicit == Some(true) => join(DEFAULT_OTLP_HTTP_ENDPOINT, signal.path),
        (None, None) => return Ok(None),
    };
    Ok(Some(OtlpTarget { protocol, url }))
}

/// The signal's protocol variable, else the generic one, else `http/protobuf`.
fn protocol(
    signal_var: &'static str,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Protocol, OtelError> {
    let (var, value) = match (get(signal_var), get(OTEL_EXPORTER_OTLP_PROTOCOL)) {
        (Some(v), _) => (signal_var, v),
        (None, Some(v)) => (OTEL_EXPORTER_OTLP_PROTOCOL, v),
        (None, None) => return Ok(Protocol::HttpProtobuf),
    };
    match value.to_ascii_lowercase().as_str() {
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Ok(Protocol::HttpJson),
        "grpc" => Err(OtelError::GrpcNotSupported { var, value }),
        _ => Err(OtelError::InvalidValue {
            var,
            value,
            expected: "`http/protobuf` (the default) or `http/json`",
        }),
    }
}

/// Catches endpoints the exporter could never reach, at startup rather than at every export.
fn check_scheme(var: &'static str, url: &str) -> Result<(), OtelError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        Err(OtelError::TlsNotSupported {
            var,
            value: url.to_owned(),
        })
    } else if lower.starts_with("http://") {
        Ok(())
    } else {
        Err(OtelError::InvalidValue {
            var,
            value: url.to_owned(),
            expected: "an http:// URL such as http://otel-collector:4318",
        })
    }
}

/// The specification's rule for the generic endpoint: the signal path is appended.
fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

fn propagators(get: &impl Fn(&str) -> Option<String>) -> Result<Propagators, OtelError> {
    let Some(value) = get(OTEL_PROPAGATORS) else {
        return Ok(Propagators {
            trace_context: true,
            baggage: true,
        });
    };
    let mut chosen = Propagators {
        trace_context: false,
        baggage: false,
    };
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.to_ascii_lowercase().as_str() {
            "tracecontext" => chosen.trace_context = true,
            "baggage" => chosen.baggage = true,
            "none" => {}
            _ => {
                return Err(OtelError::InvalidValue {
                    var: OTEL_PROPAGATORS,
                    value,
                    expected: "`tracecontext`, `baggage` or `none` (a comma-separated list)",
                })
            }
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, OtelError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn nothing_set_exports_nothing_and_propagates_w3c() {
        let s = settings(&[]).unwrap();
        assert!(!s.disabled);
        assert_eq!(s.traces, None);
        assert_eq!(s.metrics, None);
        assert_eq!(s.service_name, None);
        assert!(s.propagators.trace_context && s.propagators.baggage);
    }

    #[test]
    fn the_generic_endpoint_gets_signal_paths_and_protobuf_by_default() {
        let s = settings(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318/")]).unwrap();
        let traces = s.traces.unwrap();
        assert_eq!(traces.url, "http://collector:4318/v1/traces");
        assert_eq!(traces.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.metrics.unwrap().url, "http://collector:4318/v1/metrics");
    }

    #[test]
    fn a_signal_endpoint_is_used_verbatim_and_alone_exports_only_that_signal() {
        let s = settings(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://tempo:4318/otlp/v1/traces",
            ),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/json"),
        ])
        .unwrap();
        let traces = s.traces.unwrap();
        assert_eq!(traces.url, "http://tempo:4318/otlp/v1/traces");
        assert_eq!(traces.protocol, Protocol::HttpJson);
        assert_eq!(s.metrics, None);
    }

    #[test]
    fn signal_protocols_override_the_generic_one() {
        let s = settings(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/json"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "HTTP/PROTOBUF"),
        ])
        .unwrap();
        assert_eq!(s.traces.unwrap().protocol, Protocol::HttpJson);
        assert_eq!(s.metrics.unwrap().protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn exporter_none_turns_a_signal_off_despite_an_endpoint() {
        let s = settings(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
            (OTEL_TRACES_EXPORTER, "none"),
            (OTEL_METRICS_EXPORTER, "prometheus"),
        ])
        .unwrap();
        assert_eq!(s.traces, None);
        assert_eq!(s.metrics, None);
    }

    #[test]
    fn an_explicit_otlp_exporter_without_endpoint_uses_the_default_collector() {
        let s = settings(&[(OTEL_TRACES_EXPORTER, "otlp")]).unwrap();
        assert_eq!(s.traces.unwrap().url, "http://localhost:4318/v1/traces");
        assert_eq!(s.metrics, None);
        let s = settings(&[(OTEL_METRICS_EXPORTER, "otlp,prometheus")]).unwrap();
        assert_eq!(s.metrics.unwrap().url, "http://localhost:4318/v1/metrics");
    }

    #[test]
    fn sdk_disabled_ignores_everything_else_even_bad_values() {
        let s = settings(&[
            (OTEL_SDK_DISABLED, "TRUE"),
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "carrier-pigeon"),
            (OTEL_SERVICE_NAME, "svc"),
        ])
        .unwrap();
        assert!(s.disabled);
        assert_eq!(s.traces, None);
        assert_eq!(s.metrics, None);
        assert_eq!(s.service_name.as_deref(), Some("svc"));
    }

    #[test]
    fn blank_values_count_as_unset() {
        let s = settings(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "  "),
            (OTEL_SERVICE_NAME, ""),
            (OTEL_EXPORTER_OTLP_PROTOCOL, ""),
        ])
        .unwrap();
        assert_eq!(s.traces, None);
        assert_eq!(s.service_name, None);
    }

    /// Variables set, and what the error message must mention.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

    #[test]
    fn bad_values_say_what_to_write_instead() {
        let cases: &[Case] = &[
            (
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "http/xml"),
                ],
                &[
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    "http/xml",
                    "http/protobuf",
                    "http/json",
                ],
            ),
            (
                &[
                    (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
                ],
                &["gRPC", "http/protobuf", "4318"],
            ),
            (
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "https://c:4318")],
                &["OTEL_EXPORTER_OTLP_ENDPOINT", "http://"],
            ),
            (
                &[(OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4318")],
                &["OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318"],
            ),
            (
                &[(OTEL_TRACES_EXPORTER, "zipkin")],
                &["OTEL_TRACES_EXPORTER", "`otlp` or `none`"],
            ),
            (
                &[(OTEL_METRICS_EXPORTER, "console")],
                &["OTEL_METRICS_EXPORTER", "prometheus"],
            ),
            (
                &[(OTEL_SDK_DISABLED, "yes")],
                &["OTEL_SDK_DISABLED", "`true` or `false`"],
            ),
            (
                &[(OTEL_PROPAGATORS, "b3")],
                &["OTEL_PROPAGATORS", "tracecontext"],
            ),
        ];
        for (vars, needles) in cases {
            let message = settings(vars).unwrap_err().to_string();
            for needle in *needles {
                assert!(
                    message.contains(needle),
                    "{message:?} should mention {needle:?}"
                );
            }
        }
    }

    #[test]
    fn propagators_follow_the_list() {
        let s = settings(&[(OTEL_PROPAGATORS, "tracecontext")]).unwrap();
        assert!(s.propagators.trace_context && !s.propagators.baggage);
        let s = settings(&[(OTEL_PROPAGATORS, "none")]).unwrap();
        assert!(!s.propagators.trace_context && !s.propagators.baggage);
    }
}

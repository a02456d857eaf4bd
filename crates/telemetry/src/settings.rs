//! What the environment asks of telemetry: the log filter and format, and
//! whether and how to export spans. Pure: reads variables through a lookup
//! function, so every case is testable without touching the process
//! environment. A value that cannot be honoured is an error, never a silent
//! default: a typo in a log filter must not leave an operator blind.

use std::fmt;

use tracing_subscriber::EnvFilter;

use crate::Error;

/// The log filter variable; `RUST_LOG` is read when it is unset.
pub const AIRLOCK_LOG: &str = "AIRLOCK_LOG";
pub const AIRLOCK_LOG_FORMAT: &str = "AIRLOCK_LOG_FORMAT";

// The standard OpenTelemetry variables this crate reads itself. The exporter
// reads the rest (headers, timeout, compression, insecure) on its own.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const OTEL_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The OTLP transport, from `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc` (the default here, as before this variable was read; the
    /// OpenTelemetry specification's default is `http/protobuf`).
    Grpc,
    /// `http/protobuf`: POST to `<endpoint>/v1/traces`.
    HttpProtobuf,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

/// Everything [`crate::init`] needs, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Which variable the filter came from (`AIRLOCK_LOG`, `RUST_LOG` or
    /// `default`), for messages.
    pub filter_source: &'static str,
    /// Filter directives, known to parse.
    pub filter: String,
    pub format: LogFormat,
    /// `None`: spans are not exported (and cost next to nothing).
    pub export: Option<Protocol>,
}

impl Settings {
    /// From the process environment.
    pub fn from_env() -> Result<Settings, Error> {
        Settings::from_vars(|name| std::env::var(name).ok())
    }

    /// From `var`, which returns a variable's value if it is set. Empty
    /// values count as unset, as the OpenTelemetry specification says.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings, Error> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let (filter_source, filter) = match (var(AIRLOCK_LOG), var("RUST_LOG")) {
            (Some(v), _) => (AIRLOCK_LOG, v),
            (None, Some(v)) => ("RUST_LOG", v),
            (None, None) => ("default", "info".to_owned()),
        };
        if let Err(e) = EnvFilter::try_new(&filter) {
            return Err(Error::BadFilter {
                var: filter_source,
                filter,
                detail: e.to_string(),
            });
        }
        let format = match var(AIRLOCK_LOG_FORMAT) {
            None => LogFormat::Text,
            Some(v) if v.eq_ignore_ascii_case("text") => LogFormat::Text,
            Some(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            Some(value) => {
                return Err(Error::BadSetting {
                    var: AIRLOCK_LOG_FORMAT,
                    value,
                    expected: "`text` or `json`",
                });
            }
        };
        Ok(Settings {
            filter_source,
            filter,
            format,
            export: export(&var)?,
        })
    }
}

/// Whether to export, and over which protocol. Export is on when an OTLP
/// endpoint is set or `OTEL_TRACES_EXPORTER=otlp` (then the exporter's
/// default endpoint); `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`
/// turn it off whatever else is set.
fn export(var: &impl Fn(&str) -> Option<String>) -> Result<Option<Protocol>, Error> {
    if var(OTEL_SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let wanted = match var(OTEL_TRACES_EXPORTER) {
        Some(v) if v.trim().eq_ignore_ascii_case("none") => false,
        Some(v) if v.trim().eq_ignore_ascii_case("otlp") => true,
        Some(value) => {
            return Err(Error::BadSetting {
                var: OTEL_TRACES_EXPORTER,
                value,
                expected: "`otlp` or `none`",
            });
        }
        None => {
            var(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).is_some() || var(OTEL_EXPORTER_OTLP_ENDPOINT).is_some()
        }
    };
    if !wanted {
        return Ok(None);
    }
    // The signal's own variable wins over the general one.
    let chosen = [OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL]
        .into_iter()
        .find_map(|name| var(name).map(|v| (name, v)));
    let protocol = match chosen {
        None => Protocol::Grpc,
        Some((_, v)) if v.trim() == "grpc" => Protocol::Grpc,
        Some((_, v)) if v.trim() == "http/protobuf" => Protocol::HttpProtobuf,
        Some((name, value)) => {
            return Err(Error::BadSetting {
                var: name,
                value,
                expected: "`grpc` or `http/protobuf` (`http/json` is not supported)",
            });
        }
    };
    Ok(Some(protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Variables as (name, value) pairs.
    type Vars<'a> = &'a [(&'a str, &'a str)];

    fn settings(vars: Vars<'_>) -> Result<Settings, Error> {
        Settings::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    fn export_of(vars: Vars<'_>) -> Option<Protocol> {
        settings(vars).expect("valid settings").export
    }

    #[test]
    fn nothing_set_means_info_text_and_no_export() {
        let s = settings(&[]).expect("defaults");
        assert_eq!(s.filter_source, "default");
        assert_eq!(s.filter, "info");
        assert_eq!(s.format, LogFormat::Text);
        assert_eq!(s.export, None);
    }

    #[test]
    fn the_protocol_is_chosen_from_the_environment() {
        let endpoint = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4317");
        let cases: &[(Vars<'_>, Option<Protocol>)] = &[
            // An endpoint alone: gRPC, as before the protocol was read.
            (&[endpoint], Some(Protocol::Grpc)),
            (
                &[endpoint, (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc")],
                Some(Protocol::Grpc),
            ),
            (
                &[endpoint, (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")],
                Some(Protocol::HttpProtobuf),
            ),
            // The traces-only variables win over the general ones.
            (
                &[
                    endpoint,
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
                    (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/protobuf"),
                ],
                Some(Protocol::HttpProtobuf),
            ),
            (
                &[
                    (
                        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                        "http://collector:4318/v1/traces",
                    ),
                    (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/protobuf"),
                ],
                Some(Protocol::HttpProtobuf),
            ),
            // An empty variable is unset.
            (
                &[endpoint, (OTEL_EXPORTER_OTLP_PROTOCOL, "")],
                Some(Protocol::Grpc),
            ),
            // A protocol without an endpoint exports nothing...
            (&[(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")], None),
            // ...unless OTLP is asked for by name (the default endpoint).
            (
                &[
                    (OTEL_TRACES_EXPORTER, "otlp"),
                    (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
                ],
                Some(Protocol::HttpProtobuf),
            ),
            // Off switches win over an endpoint.
            (&[endpoint, (OTEL_TRACES_EXPORTER, "none")], None),
            (&[endpoint, (OTEL_SDK_DISABLED, "true")], None),
            (&[endpoint, (OTEL_SDK_DISABLED, "false")], Some(Protocol::Grpc)),
        ];
        for (vars, expected) in cases {
            assert_eq!(export_of(vars), *expected, "{vars:?}");
        }
    }

    #[test]
    fn an_unsupported_protocol_or_exporter_is_an_error_naming_the_variable() {
        let endpoint = (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4317");
        let cases: &[(Vars<'_>, &str)] = &[
            (
                &[endpoint, (OTEL_EXPORTER_OTLP_PROTOCOL, "http/json")],
                OTEL_EXPORTER_OTLP_PROTOCOL,
            ),
            (
                &[endpoint, (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "GRPC!")],
                OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            ),
            (&[(OTEL_TRACES_EXPORTER, "zipkin")], OTEL_TRACES_EXPORTER),
        ];
        for (vars, var) in cases {
            match settings(vars) {
                Err(e @ Error::BadSetting { .. }) => {
                    let message = e.to_string();
                    assert!(message.contains(var), "{message}");
                }
                other => panic!("{vars:?}: expected a bad setting, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_airlock_log_is_an_error_naming_the_variable_and_the_value() {
        for bad in ["info,airlock_proxy=loud", "airlock[{", "=debug=info"] {
            let err = settings(&[(AIRLOCK_LOG, bad)]).expect_err(bad);
            let message = err.to_string();
            assert!(
                matches!(&err, Error::BadFilter { var: "AIRLOCK_LOG", filter, .. } if filter == bad),
                "{bad}: {err:?}"
            );
            assert!(
                message.starts_with("AIRLOCK_LOG=") && message.contains(bad),
                "{message}"
            );
        }
    }

    #[test]
    fn airlock_log_wins_over_rust_log_and_both_are_checked() {
        let s = settings(&[(AIRLOCK_LOG, "debug"), ("RUST_LOG", "warn")]).expect("valid");
        assert_eq!((s.filter_source, s.filter.as_str()), ("AIRLOCK_LOG", "debug"));
        // AIRLOCK_LOG set: a RUST_LOG meant for some other program is not read.
        assert!(settings(&[(AIRLOCK_LOG, "debug"), ("RUST_LOG", "x=loud")]).is_ok());
        let s = settings(&[("RUST_LOG", "info,airlock_control=trace")]).expect("valid");
        assert_eq!(s.filter_source, "RUST_LOG");
        assert!(matches!(
            settings(&[("RUST_LOG", "x=loud")]),
            Err(Error::BadFilter { var: "RUST_LOG", .. })
        ));
        // Empty: as if unset.
        assert_eq!(settings(&[(AIRLOCK_LOG, " ")]).expect("valid").filter, "info");
    }

    #[test]
    fn the_log_format_is_text_or_json() {
        let format = |v: &str| settings(&[(AIRLOCK_LOG_FORMAT, v)]).map(|s| s.format);
        assert_eq!(format("json").expect("json"), LogFormat::Json);
        assert_eq!(format("JSON").expect("json"), LogFormat::Json);
        assert_eq!(format("text").expect("text"), LogFormat::Text);
        assert!(matches!(
            format("yaml"),
            Err(Error::BadSetting {
                var: AIRLOCK_LOG_FORMAT,
                ..
            })
        ));
    }
}

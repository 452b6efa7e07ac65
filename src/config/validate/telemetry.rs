//! The `telemetry` section: OpenTelemetry traces over OTLP/HTTP (`telemetry.otlp`).
//!
//! Each key falls back to its standard `OTEL_*` variable, so a deployment that already
//! sets them only needs `telemetry: { otlp: {} }`: `endpoint` to
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (`/v1/traces` appended, as for `endpoint`), then `http://localhost:4318`;
//! `service_name` to `OTEL_SERVICE_NAME`, then `sse-gateway`; `sample_ratio` to
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, then 1. `OTEL_SDK_DISABLED=true`
//! turns traces off whatever the file says, as it does in every OpenTelemetry SDK.
//! Values are resolved here, so `check` and `/config` show what the gateway will use.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use serde_yaml::Value;

use super::{join, Validator};
use crate::config::{raw, OtlpConfig};

/// Where OTLP/HTTP listens when nothing says otherwise.
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
const DEFAULT_SERVICE_NAME: &str = "sse-gateway";
const PATH: &str = "telemetry.otlp";

impl Validator<'_> {
    /// `None` when off, or when invalid (the errors are recorded).
    pub(super) fn telemetry(&mut self, value: Option<Value>) -> Option<OtlpConfig> {
        let telemetry: raw::Telemetry = match value {
            None | Some(Value::Null) => return None,
            Some(value) => self.section(Some(value), "telemetry")?,
        };
        let otlp = telemetry.otlp?;
        let env = |name: &str| (self.env)(name).filter(|value| !value.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        let (traces_url, endpoint_path) = match (
            otlp.endpoint,
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(base), _, _) => (traces_url(&base), Some(join(PATH, "endpoint"))),
            (None, Some(url), _) => (url, None),
            (None, None, Some(base)) => (traces_url(&base), None),
            (None, None, None) => (traces_url(DEFAULT_ENDPOINT), None),
        };
        let mut ok = true;
        if let Err(problem) = check_url(&traces_url) {
            let message = format!("invalid OTLP endpoint \"{traces_url}\": {problem}");
            match endpoint_path {
                Some(path) => self.error_at_value(&path, message),
                None => self.error_at_value(
                    PATH,
                    format!("{message} (from the OTEL_EXPORTER_OTLP_* environment)"),
                ),
            }
            ok = false;
        }
        for (name, value) in &otlp.headers {
            let path = join(&join(PATH, "headers"), name);
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error_at_key(&path, format!("invalid header name \"{name}\""));
                ok = false;
            } else if HeaderValue::from_str(value).is_err() {
                self.error_at_value(&path, "invalid header value: visible ASCII only");
                ok = false;
            }
        }
        // An argument that is no number (`0,1` in a decimal-comma locale) is refused:
        // read as the default, it would trace every request.
        let ratio_arg = match env("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(arg) => arg.trim().parse::<f64>().map_err(|_| {
                format!("OTEL_TRACES_SAMPLER_ARG={arg} is not a number: give the ratio of requests to trace, from 0 to 1 (such as 0.1)")
            }),
        };
        let sample_ratio = match (otlp.sample_ratio, env("OTEL_TRACES_SAMPLER")) {
            (Some(ratio), _) => Ok(ratio),
            (None, None) => ratio_arg,
            // The gateway always follows a sampled flag the client sent, so the
            // parent-based samplers and the plain ones are the same ratio here.
            (None, Some(sampler)) => match sampler.trim() {
                "always_on" | "parentbased_always_on" => Ok(1.0),
                "always_off" | "parentbased_always_off" => Ok(0.0),
                "traceidratio" | "parentbased_traceidratio" => ratio_arg,
                other => Err(format!("OTEL_TRACES_SAMPLER={other} is not supported: use always_on, always_off or traceidratio (parentbased_ forms too), or set sample_ratio")),
            },
        };
        let sample_ratio = sample_ratio.unwrap_or_else(|message| {
            self.error_at_value(PATH, message);
            ok = false;
            1.0
        });
        if !(0.0..=1.0).contains(&sample_ratio) {
            self.error_at_value(
                &join(PATH, "sample_ratio"),
                format!("sample_ratio {sample_ratio} is not between 0 and 1"),
            );
            ok = false;
        }
        let service_name = otlp
            .service_name
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        if service_name.trim().is_empty() {
            self.error_at_value(&join(PATH, "service_name"), "service_name is empty");
            ok = false;
        }
        ok.then(|| OtlpConfig {
            traces_url,
            headers: otlp.headers.into_iter().collect::<BTreeMap<_, _>>(),
            sample_ratio,
            service_name,
        })
    }
}

/// The OTLP/HTTP traces URL under a base URL.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim().trim_end_matches('/'))
}

fn check_url(url: &str) -> Result<(), &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("use http:// or https://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host");
    }
    if uri.query().is_some() {
        return Err("no query allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{GatewayConfig, OtlpConfig};

    const BASE: &str = "upstreams: { demo: { demo: {} } }
routes:
  - { name: chat, match: { path_prefix: /api }, upstream: demo }
";

    fn parse(extra: &str, env: &[(&str, &str)]) -> Result<Option<OtlpConfig>, String> {
        let lookup = |name: &str| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        };
        GatewayConfig::parse(&format!("{BASE}{extra}"), "g.yaml", &lookup)
            .map(|config| config.otlp)
            .map_err(|errors| errors.to_string())
    }

    #[test]
    fn off_when_absent_and_defaults_when_empty() {
        assert_eq!(parse("", &[]), Ok(None));
        assert_eq!(parse("telemetry: {}\n", &[]), Ok(None));
        let otlp = parse("telemetry: { otlp: {} }\n", &[]).unwrap().unwrap();
        assert_eq!(otlp.traces_url, "http://localhost:4318/v1/traces");
        assert_eq!(otlp.sample_ratio, 1.0);
        assert_eq!(otlp.service_name, "sse-gateway");
    }

    #[test]
    fn the_file_wins_over_the_environment_which_wins_over_defaults() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_SERVICE_NAME", "edge"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let from_env = parse("telemetry: { otlp: {} }\n", &env).unwrap().unwrap();
        assert_eq!(from_env.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(from_env.service_name, "edge");
        assert_eq!(from_env.sample_ratio, 0.25);
        let traces = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom")];
        let otlp = parse("telemetry: { otlp: {} }\n", &traces)
            .unwrap()
            .unwrap();
        assert_eq!(otlp.traces_url, "http://t:1/custom", "used as it is");
        let file = "telemetry:\n  otlp: { endpoint: \"https://otel.example:4318/base\", sample_ratio: 0.5, service_name: gw, headers: { x-api-key: k } }\n";
        let otlp = parse(file, &env).unwrap().unwrap();
        assert_eq!(otlp.traces_url, "https://otel.example:4318/base/v1/traces");
        assert_eq!(otlp.sample_ratio, 0.5);
        assert_eq!(otlp.service_name, "gw");
        assert_eq!(otlp.headers["x-api-key"], "k");
    }

    #[test]
    fn the_standard_sampler_and_sdk_switches_are_honoured() {
        let ratio = |env: &[(&str, &str)]| {
            parse("telemetry: { otlp: {} }\n", env).map(|otlp| otlp.map(|otlp| otlp.sample_ratio))
        };
        assert_eq!(
            ratio(&[("OTEL_TRACES_SAMPLER", "always_off")]),
            Ok(Some(0.0))
        );
        assert_eq!(
            ratio(&[("OTEL_TRACES_SAMPLER", "parentbased_always_on")]),
            Ok(Some(1.0))
        );
        let ratio_of_arg = [
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ];
        assert_eq!(ratio(&ratio_of_arg), Ok(Some(0.1)));
        let decimal_comma = [
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0,1"),
        ];
        let refused = ratio(&decimal_comma).unwrap_err();
        assert!(
            refused.contains("OTEL_TRACES_SAMPLER_ARG=0,1 is not a number"),
            "{refused}"
        );
        let unknown = ratio(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).unwrap_err();
        assert!(
            unknown.contains("OTEL_TRACES_SAMPLER=jaeger_remote is not supported"),
            "{unknown}"
        );
        let file = "telemetry: { otlp: { sample_ratio: 0.5 } }\n";
        let off = [("OTEL_TRACES_SAMPLER", "always_off")];
        assert_eq!(
            parse(file, &off).unwrap().unwrap().sample_ratio,
            0.5,
            "the file wins"
        );
        assert_eq!(ratio(&[("OTEL_SDK_DISABLED", "TRUE")]), Ok(None));
        assert_eq!(ratio(&[("OTEL_SDK_DISABLED", "false")]), Ok(Some(1.0)));
    }

    #[test]
    fn bad_values_are_located() {
        let errors = parse(
            "telemetry:\n  otlp:\n    endpoint: \"ftp://x\"\n    sample_ratio: 2\n    headers: { \"bad name\": v }\n",
            &[],
        )
        .unwrap_err();
        assert!(errors.contains("g.yaml:6:15: telemetry.otlp.endpoint: invalid OTLP endpoint \"ftp://x/v1/traces\": use http:// or https://"), "{errors}");
        assert!(
            errors.contains(
                "g.yaml:7:19: telemetry.otlp.sample_ratio: sample_ratio 2 is not between 0 and 1"
            ),
            "{errors}"
        );
        assert!(
            errors.contains("telemetry.otlp.headers.bad name: invalid header name"),
            "{errors}"
        );
        let unknown = parse("telemetry: { otlp: { endpoints: x } }\n", &[]).unwrap_err();
        assert!(unknown.contains("unknown field `endpoints`"), "{unknown}");
    }
}

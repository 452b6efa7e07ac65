//! The `shutdown` section: how a stop ends once `drain_timeout` is over.
//!
//! Only the wait for a final scrape lives here. It is bounded because it adds to every
//! stop's length and so to the grace period an orchestrator must give the gateway; a
//! wait longer than any sane scrape interval is a typo (`10m` for `10s`), not a wish.

use std::time::Duration;

use serde_yaml::Value;

use super::Validator;
use crate::config::{defaults, raw, HumanDuration, ShutdownConfig};

/// The longest `shutdown.final_scrape_wait` accepted: a few slow scrape intervals.
const MAX_FINAL_SCRAPE_WAIT: Duration = Duration::from_secs(5 * 60);

impl Validator<'_> {
    pub(super) fn shutdown(&mut self, value: Option<Value>) -> Option<ShutdownConfig> {
        let shutdown: raw::Shutdown = match value {
            None | Some(Value::Null) => raw::Shutdown {
                final_scrape_wait: None,
            },
            Some(value) => self.section(Some(value), "shutdown")?,
        };
        let wait = shutdown
            .final_scrape_wait
            .map_or(defaults::FINAL_SCRAPE_WAIT, |d| d.0);
        if wait > MAX_FINAL_SCRAPE_WAIT {
            self.error_at_value(
                "shutdown.final_scrape_wait",
                format!(
                    "{} is longer than the {} allowed: every stop would take that long after the drain (use `0` to never wait)",
                    HumanDuration(wait),
                    HumanDuration(MAX_FINAL_SCRAPE_WAIT)
                ),
            );
            return None;
        }
        Some(ShutdownConfig {
            final_scrape_wait: wait,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::GatewayConfig;

    const BASE: &str = "upstreams: { demo: { demo: {} } }
routes:
  - { name: chat, match: { path_prefix: /api }, upstream: demo }
";

    fn parse(extra: &str) -> Result<GatewayConfig, String> {
        GatewayConfig::parse(&format!("{BASE}{extra}"), "g.yaml", &|_| None)
            .map_err(|errors| errors.to_string())
    }

    #[test]
    fn final_scrape_wait_defaults_to_10s_and_0_turns_it_off() {
        let default = parse("").unwrap();
        assert_eq!(default.shutdown.final_scrape_wait, Duration::from_secs(10));
        let empty = parse("shutdown:\n").unwrap();
        assert_eq!(empty.shutdown.final_scrape_wait, Duration::from_secs(10));
        let off = parse("shutdown: { final_scrape_wait: 0 }\n").unwrap();
        assert_eq!(off.shutdown.final_scrape_wait, Duration::ZERO);
        let set = parse("shutdown:\n  final_scrape_wait: 30s\n").unwrap();
        assert_eq!(set.shutdown.final_scrape_wait, Duration::from_secs(30));
        assert_eq!(
            set.redacted_json()["shutdown"]["final_scrape_wait"],
            "30s",
            "/config shows the section"
        );
    }

    #[test]
    fn bad_values_are_located() {
        assert_eq!(
            parse("shutdown:\n  final_scrape_wait: 10 seconds\n").unwrap_err(),
            "g.yaml:5:22: shutdown.final_scrape_wait: invalid duration \"10 seconds\": expected an integer and a unit (ms, s, m, h, d), such as 250ms or 30s"
        );
        assert_eq!(
            parse("shutdown:\n  final_scrape_wait: 10m\n").unwrap_err(),
            "g.yaml:5:22: shutdown.final_scrape_wait: 10m is longer than the 5m allowed: every stop would take that long after the drain (use `0` to never wait)"
        );
        let unknown = parse("shutdown:\n  final_scrape: 1s\n").unwrap_err();
        assert!(
            unknown.starts_with("g.yaml:5:3: shutdown.final_scrape: unknown field `final_scrape`"),
            "{unknown}"
        );
    }
}

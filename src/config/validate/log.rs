//! The `log` section, and `log.level` checked the way the gateway will use it.
//!
//! A `tracing` filter takes a bare word as a target to log at every level, so a typo
//! such as `inof` is a valid filter that silences every line the gateway writes. Here
//! a bare word must be a level; a target takes its level explicitly (`hyper=info`).

use std::str::FromStr;

use serde_yaml::Value;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use super::Validator;
use crate::config::{defaults, raw, LogConfig, LogFormat};

impl Validator<'_> {
    pub(super) fn log(&mut self, value: Option<Value>) -> Option<LogConfig> {
        let log: raw::Log = match value {
            None => raw::Log {
                format: None,
                level: None,
            },
            Some(value) => self.section(Some(value), "log")?,
        };
        let level = log.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
        if let Err(problem) = check_filter(&level) {
            self.error_at_value(
                "log.level",
                format!("invalid log level \"{level}\": {problem}"),
            );
            return None;
        }
        Some(LogConfig {
            format: log.format.unwrap_or(LogFormat::Pretty),
            level,
        })
    }
}

/// Why `filter` is not a filter the gateway accepts, in words for the operator.
pub(crate) fn check_filter(filter: &str) -> Result<(), String> {
    const LEVELS: &str = "error, warn, info, debug, trace or off";
    EnvFilter::builder()
        .parse(filter)
        .map_err(|error| format!("{error} (use {LEVELS}, or TARGET=LEVEL)"))?;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[']);
        if bare && LevelFilter::from_str(directive).is_err() {
            return Err(format!(
                "`{directive}` is not a level (use {LEVELS}); to log a target, write `{directive}=LEVEL`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_filter;

    #[test]
    fn bare_words_must_be_levels_and_targets_take_a_level() {
        for good in [
            "info",
            "WARN",
            "off",
            "sse_gateway=debug,hyper=info",
            "info,hyper=warn",
            "debug,",
        ] {
            assert_eq!(check_filter(good), Ok(()), "{good}");
        }
        let error = check_filter("inof").unwrap_err();
        assert!(error.contains("`inof` is not a level"), "{error}");
        assert!(check_filter("info,sse_gateway").is_err());
        assert!(check_filter("hyper=inof").is_err());
    }
}

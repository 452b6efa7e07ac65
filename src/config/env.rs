//! `${VAR}` and `${VAR:-default}` substitution in the string values of `gateway.yaml`.
//!
//! Substitution runs on parsed string scalars, never on the raw text, so a variable's
//! value can not change the YAML structure around it (a value with `: ` or a newline
//! stays one string). `$${` writes a literal `${`.

/// Why a string could not be substituted; Display is the operator-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvError {
    /// `${NAME}` with no such variable and no default.
    #[error(
        "environment variable {0} is not set (set it, or give a default with ${{{0}:-value}})"
    )]
    Missing(String),
    /// `${NAME}` set to the empty string, with no default: an empty API key or url is
    /// never what was meant, and "not set" would send the operator looking elsewhere.
    #[error(
        "environment variable {0} is set but empty (give it a value, or a default with ${{{0}:-value}})"
    )]
    Empty(String),
    /// `${` without its closing brace.
    #[error("unterminated ${{ in \"{0}\" (write $${{ for a literal ${{)")]
    Unterminated(String),
    /// `${}` or a name with characters other than letters, digits and `_`.
    #[error(
        "invalid variable name \"{0}\" (use letters, digits and _, not starting with a digit)"
    )]
    BadName(String),
}

/// Substitutes every `${...}` in `text` using `lookup`.
///
/// Returns `Ok(None)` when `text` holds no substitution at all, so callers can tell a
/// value that came from the environment (and redact it) from a literal one.
pub(super) fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, EnvError> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| EnvError::Unterminated(text.to_owned()))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(EnvError::BadName(name.to_owned()));
            }
            // An empty variable falls back to the default too, as in POSIX `:-`.
            match (lookup(name), default) {
                (Some(value), _) if !value.is_empty() => out.push_str(&value),
                (_, Some(default)) => out.push_str(default),
                (Some(_), None) => return Err(EnvError::Empty(name.to_owned())),
                (None, None) => return Err(EnvError::Missing(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("8080".into()),
            _ => None,
        }
    }

    fn sub(text: &str) -> Result<Option<String>, EnvError> {
        substitute(text, &env)
    }

    #[test]
    fn plain_text_is_not_touched() {
        assert_eq!(sub("http://127.0.0.1:8000"), Ok(None));
        assert_eq!(sub("costs $5"), Ok(None));
    }

    #[test]
    fn variables_and_defaults() {
        assert_eq!(sub("${KEY}").unwrap().unwrap(), "s3cret");
        assert_eq!(sub("Bearer ${KEY}!").unwrap().unwrap(), "Bearer s3cret!");
        assert_eq!(sub("0.0.0.0:${PORT}").unwrap().unwrap(), "0.0.0.0:8080");
        assert_eq!(sub("${NOPE:-fallback}").unwrap().unwrap(), "fallback");
        assert_eq!(sub("${EMPTY:-fallback}").unwrap().unwrap(), "fallback");
        assert_eq!(sub("${NOPE:-}").unwrap().unwrap(), "");
        assert_eq!(sub("${KEY:-x}${PORT}").unwrap().unwrap(), "s3cret8080");
    }

    #[test]
    fn escaped_dollar_brace_is_literal() {
        assert_eq!(sub("$${KEY} $x").unwrap().unwrap(), "${KEY} $x");
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(sub("${NOPE}"), Err(EnvError::Missing("NOPE".into())));
        assert!(sub("${NOPE}")
            .unwrap_err()
            .to_string()
            .contains("NOPE is not set"));
        assert_eq!(sub("${EMPTY}"), Err(EnvError::Empty("EMPTY".into())));
        assert!(sub("${EMPTY}")
            .unwrap_err()
            .to_string()
            .contains("EMPTY is set but empty"));
        assert_eq!(sub("${KEY"), Err(EnvError::Unterminated("${KEY".into())));
        assert_eq!(sub("${}"), Err(EnvError::BadName(String::new())));
        assert_eq!(sub("${A-B}"), Err(EnvError::BadName("A-B".into())));
        assert_eq!(sub("${1X}"), Err(EnvError::BadName("1X".into())));
    }
}

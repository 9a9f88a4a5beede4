//! Secrets in config: `${ENV_VAR}` expansion and a wrapper that never prints.

use std::fmt;
use std::sync::Arc;

/// A credential. `Debug` and `Display` print a placeholder so a secret cannot
/// reach a log line by accident; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Replaces every `${NAME}` in `text` with the variable's value. `$$` writes a
/// literal `$`. A missing variable is an error naming it.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('{') {
            let close = inner
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
            let name = &inner[..close];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable reference"
                ));
            }
            let value =
                env(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "sk-123".to_string())
    }

    #[test]
    fn expands_references() {
        assert_eq!(expand_env("${KEY}", &env).unwrap(), "sk-123");
        assert_eq!(
            expand_env("Bearer ${KEY}!", &env).unwrap(),
            "Bearer sk-123!"
        );
        assert_eq!(expand_env("cost $$5 $x", &env).unwrap(), "cost $5 $x");
        assert_eq!(expand_env("plain", &env).unwrap(), "plain");
    }

    #[test]
    fn reports_bad_references() {
        assert!(
            expand_env("${MISSING}", &env)
                .unwrap_err()
                .contains("MISSING")
        );
        assert!(expand_env("${KEY", &env).unwrap_err().contains("unclosed"));
        assert!(expand_env("${K-Y}", &env).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("sk-very-secret");
        assert!(!format!("{secret:?} {secret}").contains("sk-very"));
    }
}

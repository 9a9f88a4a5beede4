//! The env file holding the gateway's secrets, in the format systemd's
//! `EnvironmentFile=` reads: `NAME="value"` lines, `#` comments.
//!
//! Values in this file take precedence over the caller's environment, for
//! the daemon `apx start` runs exactly as systemd's `EnvironmentFile=` does,
//! so the gateway behaves the same under both.

use std::collections::BTreeMap;
use std::path::Path;

/// Variables from an env file, in file order (a later line wins).
pub type EnvVars = BTreeMap<String, String>;

/// Reads an env file; a missing file is an empty set.
pub fn read(path: &Path) -> anyhow::Result<EnvVars> {
    match crate::paths::read_optional(path)? {
        None => Ok(EnvVars::new()),
        Some(text) => {
            parse(&text).map_err(|message| anyhow::anyhow!("{}: {message}", path.display()))
        }
    }
}

/// Parses `NAME=value` lines. Values may be bare, `"double quoted"` (with
/// backslash escapes) or `'single quoted'` (literal). `export ` is allowed.
pub fn parse(text: &str) -> Result<EnvVars, String> {
    let mut vars = EnvVars::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (name, raw) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected NAME=value", index + 1))?;
        let name = name.trim();
        if !valid_name(name) {
            return Err(format!(
                "line {}: `{name}` is not a valid variable name",
                index + 1
            ));
        }
        let value = unquote(raw.trim()).map_err(|m| format!("line {}: {m}", index + 1))?;
        vars.insert(name.to_string(), value);
    }
    Ok(vars)
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(raw: &str) -> Result<String, String> {
    if let Some(rest) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Ok(out),
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => break,
                },
                other => out.push(other),
            }
        }
        Err("unclosed double quote".to_string())
    } else if let Some(rest) = raw.strip_prefix('\'') {
        rest.find('\'')
            .map(|end| rest[..end].to_string())
            .ok_or_else(|| "unclosed single quote".to_string())
    } else {
        Ok(raw.to_string())
    }
}

/// A value as a double-quoted env-file string that systemd and [`parse`]
/// both read back as the same text (no variable expansion either way).
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' | '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_systemd_reads() {
        let vars = parse(
            "# comment\n\nOPENAI_API_KEY=\"sk-1\"\nexport B='lit $x'\nC = bare value \nD=\"a \\\"q\\\" \\$x\"\n",
        )
        .unwrap();
        assert_eq!(vars["OPENAI_API_KEY"], "sk-1");
        assert_eq!(vars["B"], "lit $x");
        assert_eq!(vars["C"], "bare value");
        assert_eq!(vars["D"], "a \"q\" $x");
    }

    #[test]
    fn quoting_round_trips() {
        for value in ["plain", "with \"quotes\"", "back\\slash", "$HOME `cmd`", ""] {
            let text = format!("X={}\n", quote(value));
            assert_eq!(parse(&text).unwrap()["X"], value, "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("just words").is_err());
        assert!(parse("1X=2").is_err());
        assert!(parse("X=\"open").is_err());
    }
}

//! The one configuration schema of apx: what the file may say, how it is
//! validated, and the resolved [`Config`] the gateway runs on.
//!
//! Loading is all-or-nothing: every problem is reported with the file, line,
//! column and field, and the gateway never starts half-configured.

mod secrets;
pub mod units;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use secrets::Secret;
use units::{ByteSize, HumanDuration};

use crate::auth::KeyHash;
use crate::providers::ProviderKind;

/// Address the gateway listens on when the config does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The config file as written. Field names here are the file's field names.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `host:port` the gateway accepts clients on.
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Upstream providers by name; models refer to them.
    #[serde(default)]
    pub providers: BTreeMap<String, Spanned<ProviderEntry>>,
    /// The models clients may ask for.
    #[serde(default)]
    pub models: Vec<Spanned<ModelEntry>>,
    /// Gateway-issued client keys, stored as hashes only. Keys made with
    /// `apx keys create` live in the state directory instead.
    #[serde(default)]
    pub keys: Vec<Spanned<KeyEntry>>,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub logging: Logging,
}

/// Where apx keeps its state (key store, request logs).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Relative paths are taken from the config file's directory. Default:
    /// `/var/lib/apx` for root, else `$XDG_DATA_HOME/apx` (`~/.local/share/apx`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

/// How request records are captured and kept.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    pub capture: CaptureMode,
    /// Records older than this are deleted.
    pub retention: HumanDuration,
    /// The log store is trimmed, oldest first, beyond this size.
    pub max_size: ByteSize,
    /// Request headers to capture besides the built-in list (case-insensitive).
    pub headers: Vec<String>,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            capture: CaptureMode::Auto,
            retention: HumanDuration(Duration::from_secs(30 * 86_400)),
            max_size: ByteSize(1 << 30),
            headers: Vec::new(),
        }
    }
}

/// Where request records come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// eBPF where the kernel allows it, else user space.
    #[default]
    Auto,
    /// eBPF or fail to start.
    Ebpf,
    /// Records made by the gateway process itself.
    Userspace,
    /// No request records.
    Off,
}

impl CaptureMode {
    pub fn name(self) -> &'static str {
        match self {
            CaptureMode::Auto => "auto",
            CaptureMode::Ebpf => "ebpf",
            CaptureMode::Userspace => "userspace",
            CaptureMode::Off => "off",
        }
    }
}

/// The state directory apx uses when the config does not name one.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/apx");
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("apx");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/apx"),
        None => PathBuf::from("/var/lib/apx"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_LISTEN.to_string())
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    /// Wire format the upstream speaks.
    pub kind: Spanned<String>,
    /// Base URL as the provider's own SDK takes it: with `/v1` for OpenAI-format
    /// servers (`https://api.openai.com/v1`), without for Anthropic
    /// (`https://api.anthropic.com`). Not used by `kind = "echo"`.
    #[serde(default)]
    pub base_url: Option<Spanned<String>>,
    /// Upstream credential; normally a `${ENV_VAR}` reference.
    #[serde(default)]
    pub api_key: Option<Spanned<String>>,
    /// OpenAI-format upstreams: ask for token usage on streamed chat and
    /// completions calls (`stream_options.include_usage`) when the client
    /// did not, so every streamed call is logged with its tokens; the extra
    /// usage event is removed before the stream reaches the client. On by
    /// default; turn it off for a server that rejects `stream_options`.
    #[serde(default)]
    pub stream_usage: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The model name clients send.
    pub name: Spanned<String>,
    /// Name of an entry in `[providers]`.
    pub provider: Spanned<String>,
    /// The model name sent upstream, when it differs from `name`.
    #[serde(default)]
    pub upstream_model: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub name: Spanned<String>,
    /// `sha256:<64 hex digits>` of the key; `apx keys create` prints both.
    pub hash: Spanned<String>,
}

/// Resource limits and timeouts. Every one has a default that suits a single host.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted (413 beyond).
    pub max_request_body: ByteSize,
    /// Largest request head (request line + headers) accepted (431 beyond).
    pub max_header_bytes: ByteSize,
    /// Open client connections at once; further connections wait in the backlog.
    pub max_connections: usize,
    /// Streaming responses in flight at once (503 beyond).
    pub max_concurrent_streams: usize,
    /// Time to open a TCP (and TLS) connection upstream (504 beyond).
    pub connect_timeout: HumanDuration,
    /// Time from sending a request upstream to its response headers and first byte (504 beyond).
    pub first_byte_timeout: HumanDuration,
    /// Longest silence between two body chunks, in either direction.
    pub idle_timeout: HumanDuration,
    /// Time a client has to send its request head (connection closed beyond).
    pub client_header_timeout: HumanDuration,
    /// Time a client has to send its whole request body (408 beyond).
    pub client_body_timeout: HumanDuration,
    /// On SIGTERM: how long in-flight requests may take to finish.
    pub shutdown_grace: HumanDuration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: ByteSize(32 << 20),
            max_header_bytes: ByteSize(32 << 10),
            max_connections: 10_000,
            max_concurrent_streams: 2_000,
            connect_timeout: HumanDuration(Duration::from_secs(10)),
            first_byte_timeout: HumanDuration(Duration::from_secs(300)),
            idle_timeout: HumanDuration(Duration::from_secs(120)),
            client_header_timeout: HumanDuration(Duration::from_secs(15)),
            client_body_timeout: HumanDuration(Duration::from_secs(60)),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// A validated configuration: everything resolved, every reference checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub keys: Vec<KeyConfig>,
    /// Absolute path of the state directory.
    pub state_dir: PathBuf,
    pub logging: Logging,
}

impl Config {
    /// The key store written by `apx keys`.
    pub fn key_store_path(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    /// The request log store read by `apx logs`.
    pub fn log_store_path(&self) -> PathBuf {
        self.state_dir.join("logs.db")
    }
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Without a trailing slash.
    pub base_url: http::Uri,
    pub api_key: Option<Secret>,
    /// See [`ProviderEntry::stream_usage`].
    pub stream_usage: bool,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub name: String,
    /// Index into [`Config::providers`].
    pub provider: usize,
    pub upstream_model: Option<String>,
}

#[derive(Clone, Debug)]
pub struct KeyConfig {
    pub name: String,
    pub hash: KeyHash,
}

/// A config that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_invalid(path, *line, *column, field, message, snippet))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Dotted path of the offending field, e.g. `models[2].provider`.
        field: String,
        message: String,
        /// The offending source line, for display.
        snippet: String,
    },
}

fn render_invalid(
    path: &Path,
    line: usize,
    column: usize,
    field: &str,
    message: &str,
    snippet: &str,
) -> String {
    let mut text = format!("{}:{line}:{column}: ", path.display());
    if !field.is_empty() {
        text.push_str(&format!("`{field}`: "));
    }
    text.push_str(message);
    if !snippet.is_empty() {
        let gutter = line.to_string().len();
        text.push_str(&format!(
            "\n{:gutter$} |\n{line} | {snippet}\n{:gutter$} | {:>column$}",
            "", "", "^"
        ));
    }
    text
}

impl ConfigError {
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::Read { .. } => None,
        }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Read { .. } => None,
        }
    }
}

/// Reads, parses and validates a config file, resolving `${ENV_VAR}` references
/// from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Parses and validates config text. `env` resolves `${NAME}` references.
pub fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let locate = Locator { path, text };
    let file: ConfigFile = toml::from_str(text).map_err(|err| {
        let span = err.span().unwrap_or(0..0);
        locate.error(span, "", err.message().trim_end())
    })?;
    Validator { locate, env }.validate(file)
}

/// Turns byte spans into line/column errors.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: Range<usize>, field: &str, message: impl fmt::Display) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..start].chars().count() + 1;
        let snippet = self.text[line_start..]
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            message: message.to_string(),
            snippet,
        }
    }
}

struct Validator<'a> {
    locate: Locator<'a>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn validate(&self, file: ConfigFile) -> Result<Config, ConfigError> {
        let listen = file.listen.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.locate.error(
                file.listen.span(),
                "listen",
                format!(
                    "`{}` is not a socket address (expected host:port, e.g. \"127.0.0.1:8080\")",
                    file.listen.get_ref()
                ),
            )
        })?;
        self.validate_limits(&file.limits)?;

        let mut providers = Vec::with_capacity(file.providers.len());
        for (name, entry) in &file.providers {
            providers.push(self.provider(name, entry)?);
        }

        let mut models = Vec::with_capacity(file.models.len());
        let mut model_names = HashSet::new();
        for (index, entry) in file.models.iter().enumerate() {
            let field = |name: &str| format!("models[{index}].{name}");
            let model = entry.get_ref();
            let name = model.name.get_ref().trim();
            if name.is_empty() {
                return Err(self.locate.error(
                    model.name.span(),
                    &field("name"),
                    "model name is empty",
                ));
            }
            if !model_names.insert(name.to_string()) {
                return Err(self.locate.error(
                    model.name.span(),
                    &field("name"),
                    format!("model `{name}` is defined twice"),
                ));
            }
            let provider_name = model.provider.get_ref();
            let provider = providers
                .iter()
                .position(|p| &p.name == provider_name)
                .ok_or_else(|| {
                    let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                    self.locate.error(
                        model.provider.span(),
                        &field("provider"),
                        format!(
                            "unknown provider `{provider_name}` (defined in [providers]: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })?;
            let upstream_model = match &model.upstream_model {
                Some(upstream) if upstream.get_ref().trim().is_empty() => {
                    return Err(self.locate.error(
                        upstream.span(),
                        &field("upstream_model"),
                        "upstream_model is empty (leave it out to send the model name as is)",
                    ));
                }
                Some(upstream) => Some(upstream.get_ref().clone()),
                None => None,
            };
            models.push(ModelConfig {
                name: name.to_string(),
                provider,
                upstream_model,
            });
        }

        let mut keys = Vec::with_capacity(file.keys.len());
        let mut key_names = HashSet::new();
        let mut key_hashes = HashSet::new();
        for (index, entry) in file.keys.iter().enumerate() {
            let key = entry.get_ref();
            let hash = KeyHash::parse(key.hash.get_ref()).map_err(|message| {
                self.locate
                    .error(key.hash.span(), &format!("keys[{index}].hash"), message)
            })?;
            if !key_names.insert(key.name.get_ref().clone()) {
                return Err(self.locate.error(
                    key.name.span(),
                    &format!("keys[{index}].name"),
                    format!("key name `{}` is used twice", key.name.get_ref()),
                ));
            }
            if !key_hashes.insert(hash) {
                return Err(self.locate.error(
                    key.hash.span(),
                    &format!("keys[{index}].hash"),
                    "the same key hash is listed twice",
                ));
            }
            keys.push(KeyConfig {
                name: key.name.get_ref().clone(),
                hash,
            });
        }

        let state_dir = match &file.storage.dir {
            None => default_state_dir(),
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => self
                .locate
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .join(dir),
        };
        for (index, header) in file.logging.headers.iter().enumerate() {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                let span = self
                    .locate
                    .text
                    .find(header.as_str())
                    .map_or(0..0, |s| s..s);
                return Err(self.locate.error(
                    span,
                    &format!("logging.headers[{index}]"),
                    format!("`{header}` is not a valid header name"),
                ));
            }
        }

        Ok(Config {
            source: self.locate.path.to_path_buf(),
            listen,
            limits: file.limits,
            providers,
            models,
            keys,
            state_dir,
            logging: file.logging,
        })
    }

    fn provider(
        &self,
        name: &str,
        entry: &Spanned<ProviderEntry>,
    ) -> Result<ProviderConfig, ConfigError> {
        let field = |f: &str| format!("providers.{name}.{f}");
        let provider = entry.get_ref();
        let kind = ProviderKind::from_name(provider.kind.get_ref()).ok_or_else(|| {
            self.locate.error(
                provider.kind.span(),
                &field("kind"),
                format!(
                    "unknown provider kind `{}` (expected one of: {})",
                    provider.kind.get_ref(),
                    ProviderKind::NAMES.join(", ")
                ),
            )
        })?;
        let base_url = match (&provider.base_url, kind) {
            // The echo provider picks its own loopback address at start.
            (_, ProviderKind::Echo) => http::Uri::from_static("http://127.0.0.1"),
            (Some(raw), _) => parse_base_url(raw.get_ref())
                .map_err(|message| self.locate.error(raw.span(), &field("base_url"), message))?,
            (None, _) => {
                return Err(self.locate.error(
                    entry.span(),
                    &field("base_url"),
                    format!("base_url is required for kind `{}`", kind.name()),
                ));
            }
        };
        let api_key = match &provider.api_key {
            None => None,
            Some(raw) => {
                let value = secrets::expand_env(raw.get_ref(), self.env)
                    .map_err(|message| self.locate.error(raw.span(), &field("api_key"), message))?;
                if value.trim().is_empty() {
                    return Err(self.locate.error(
                        raw.span(),
                        &field("api_key"),
                        "api_key is empty (leave it out for upstreams that take no key)",
                    ));
                }
                Some(Secret::new(value))
            }
        };
        Ok(ProviderConfig {
            name: name.to_string(),
            kind,
            base_url,
            api_key,
            stream_usage: provider.stream_usage.unwrap_or(true),
        })
    }

    fn validate_limits(&self, limits: &Limits) -> Result<(), ConfigError> {
        // Spans of nested plain values are not kept; point at the [limits] table name.
        let span = self
            .locate
            .text
            .find("[limits]")
            .map_or(0..0, |start| start..start + 8);
        let checks: [(&str, bool, &str); 6] = [
            (
                "limits.max_request_body",
                limits.max_request_body.0 > 0,
                "must be larger than 0",
            ),
            (
                "limits.max_header_bytes",
                limits.max_header_bytes.0 >= 8192,
                "must be at least 8KiB",
            ),
            (
                "limits.max_connections",
                limits.max_connections > 0,
                "must be larger than 0",
            ),
            (
                "limits.max_concurrent_streams",
                limits.max_concurrent_streams > 0,
                "must be larger than 0",
            ),
            (
                "limits.first_byte_timeout",
                !limits.first_byte_timeout.0.is_zero(),
                "must be longer than 0",
            ),
            (
                "limits.idle_timeout",
                !limits.idle_timeout.0.is_zero(),
                "must be longer than 0",
            ),
        ];
        for (field, ok, message) in checks {
            if !ok {
                return Err(self.locate.error(span.clone(), field, message));
            }
        }
        Ok(())
    }
}

fn parse_base_url(text: &str) -> Result<http::Uri, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let uri: http::Uri = trimmed
        .parse()
        .map_err(|_| format!("`{text}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{text}` must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{text}` must not have a query string"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(Path::new("apx.toml"), text, &move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    const GOOD: &str = r#"
listen = "127.0.0.1:9000"

[limits]
max_request_body = "1MiB"
idle_timeout = "5s"

[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1/"
api_key = "${OPENAI_API_KEY}"

[providers.local]
kind = "openai"
base_url = "http://127.0.0.1:11434/v1"

[providers.anthropic]
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key = "${ANTHROPIC_API_KEY}"

[[models]]
name = "gpt-4o"
provider = "openai"

[[models]]
name = "claude"
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"

[[keys]]
name = "alice"
hash = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

[storage]
dir = "state"

[logging]
capture = "userspace"
retention = "7d"
headers = ["x-tenant"]
"#;

    #[test]
    fn a_full_config_resolves() {
        let config = parse_with(
            GOOD,
            &[
                ("OPENAI_API_KEY", "sk-1"),
                ("ANTHROPIC_API_KEY", "sk-ant-2"),
            ],
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.limits.max_request_body.0, 1 << 20);
        assert_eq!(config.limits.idle_timeout.0, Duration::from_secs(5));
        assert_eq!(config.providers.len(), 3);
        let openai = config
            .providers
            .iter()
            .find(|p| p.name == "openai")
            .unwrap();
        assert_eq!(openai.base_url.to_string(), "https://api.openai.com/v1");
        assert_eq!(openai.api_key.as_ref().unwrap().expose(), "sk-1");
        let claude = &config.models[1];
        assert_eq!(
            config.providers[claude.provider].kind,
            ProviderKind::Anthropic
        );
        assert_eq!(claude.upstream_model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(config.keys[0].name, "alice");
        assert_eq!(config.state_dir, Path::new("state"));
        assert_eq!(config.logging.capture, CaptureMode::Userspace);
        assert_eq!(config.logging.retention.0, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn missing_env_var_names_field_and_line() {
        let err = parse_with(GOOD, &[("OPENAI_API_KEY", "sk-1")]).unwrap_err();
        assert_eq!(err.field(), Some("providers.anthropic.api_key"));
        assert_eq!(err.line(), Some(20));
        let text = err.to_string();
        assert!(text.contains("apx.toml:20:"), "{text}");
        assert!(text.contains("ANTHROPIC_API_KEY"), "{text}");
    }

    #[test]
    fn unknown_provider_reference_is_located() {
        let text = GOOD.replace("provider = \"anthropic\"", "provider = \"antropic\"");
        let err = parse_with(
            &text,
            &[("OPENAI_API_KEY", "a"), ("ANTHROPIC_API_KEY", "b")],
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("models[1].provider"));
        assert_eq!(err.line(), Some(28));
        assert!(err.to_string().contains("unknown provider `antropic`"));
    }

    #[test]
    fn typo_in_field_name_is_rejected_with_line() {
        let text = GOOD.replace("upstream_model =", "upstream_modle =");
        let err = parse_with(
            &text,
            &[("OPENAI_API_KEY", "a"), ("ANTHROPIC_API_KEY", "b")],
        )
        .unwrap_err();
        assert_eq!(err.line(), Some(29));
        assert!(err.to_string().contains("upstream_modle"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        let vars = [("OPENAI_API_KEY", "a"), ("ANTHROPIC_API_KEY", "b")];
        let cases = [
            (
                "listen = \"127.0.0.1:9000\"",
                "listen = \"localhost\"",
                "listen",
            ),
            (
                "kind = \"anthropic\"",
                "kind = \"bedrock\"",
                "providers.anthropic.kind",
            ),
            (
                "base_url = \"https://api.anthropic.com\"",
                "base_url = \"ftp://x\"",
                "providers.anthropic.base_url",
            ),
            ("sha256:2cf2", "md5:2cf2", "keys[0].hash"),
            ("name = \"claude\"", "name = \"gpt-4o\"", "models[1].name"),
        ];
        for (from, to, field) in cases {
            let text = GOOD.replace(from, to);
            let err = parse_with(&text, &vars).unwrap_err();
            assert_eq!(err.field(), Some(field), "{from} -> {to}: {err}");
        }
        let text = GOOD.replace("idle_timeout = \"5s\"", "idle_timeout = \"5 parsecs\"");
        let err = parse_with(&text, &vars).unwrap_err();
        assert_eq!(err.line(), Some(6), "{err}");
    }

    #[test]
    fn empty_file_is_a_valid_default() {
        let config = parse_with("", &[]).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert!(config.models.is_empty());
    }
}

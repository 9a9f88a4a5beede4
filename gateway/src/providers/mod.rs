//! Upstream providers. Every provider is reached through the [`Provider`]
//! trait; the wire formats are [`openai`] (which also covers every
//! OpenAI-compatible server: vLLM, Ollama, Groq, Mistral, …, listed in
//! [`catalog`]) and [`anthropic`].

pub mod anthropic;
pub mod catalog;
pub mod echo;
pub mod openai;

use std::sync::Arc;

use http::{HeaderMap, Uri};

use crate::api::Endpoint;
use crate::config::{ProviderConfig, Secret};

/// The wire format an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    /// Built in: answers locally, for trying apx with no provider account.
    Echo,
}

impl ProviderKind {
    /// Names accepted for `kind` in the config file.
    pub const NAMES: [&'static str; 3] = ["openai", "anthropic", "echo"];

    pub fn from_name(name: &str) -> Option<ProviderKind> {
        match name {
            "openai" => Some(ProviderKind::OpenAi),
            "anthropic" => Some(ProviderKind::Anthropic),
            "echo" => Some(ProviderKind::Echo),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Echo => "echo",
        }
    }

    /// Human name of the format, for error messages.
    pub fn format_name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "OpenAI",
            ProviderKind::Anthropic => "Anthropic",
            ProviderKind::Echo => "built-in echo",
        }
    }
}

/// What the gateway needs to know to forward a request to one upstream.
pub trait Provider: Send + Sync + 'static {
    /// The name given in `[providers.<name>]`.
    fn name(&self) -> &str;

    fn kind(&self) -> ProviderKind;

    /// Where `endpoint` lives on this upstream, or `None` when the upstream's
    /// API has no such endpoint.
    fn endpoint_uri(&self, endpoint: Endpoint) -> Option<&Uri>;

    /// Puts this upstream's credential into the outgoing headers, in the one
    /// header its API reads it from. Client credentials are already removed.
    fn authorize(&self, headers: &mut HeaderMap);

    /// Headers the upstream API requires that a client may leave out.
    fn fill_required_headers(&self, _headers: &mut HeaderMap) {}

    /// Whether a streamed call to `endpoint` reports token usage only when
    /// asked (`stream_options.include_usage`), and the gateway should ask.
    fn asks_for_stream_usage(&self, _endpoint: Endpoint) -> bool {
        false
    }

    /// The upstream credential, so it can be scrubbed from anything sent back.
    fn credential(&self) -> Option<&Secret>;

    /// Hosts that must resolve for the provider to be usable.
    fn host(&self) -> (&str, u16);
}

/// Builds the provider for a config entry. Must run inside a tokio runtime
/// (the echo provider starts its local server).
pub fn from_config(config: &ProviderConfig) -> std::io::Result<Arc<dyn Provider>> {
    Ok(match config.kind {
        ProviderKind::OpenAi => Arc::new(openai::OpenAiProvider::new(config)),
        ProviderKind::Anthropic => Arc::new(anthropic::AnthropicProvider::new(config)),
        ProviderKind::Echo => Arc::new(echo::EchoProvider::start(config)?),
    })
}

/// Precomputes `base_url + path` for every endpoint an upstream serves, so the
/// request path does no URL building.
pub(crate) struct EndpointTable {
    uris: Vec<(Endpoint, Uri)>,
}

impl EndpointTable {
    pub(crate) fn new(base: &Uri, paths: &[(Endpoint, &str)]) -> EndpointTable {
        let base = base.to_string();
        let base = base.trim_end_matches('/');
        let uris = paths
            .iter()
            .filter_map(|(endpoint, path)| {
                // base_url was validated as a URL and path is a fixed
                // absolute path, so the join parses; skip defensively if not.
                let uri = format!("{base}{path}").parse().ok()?;
                Some((*endpoint, uri))
            })
            .collect();
        EndpointTable { uris }
    }

    pub(crate) fn get(&self, endpoint: Endpoint) -> Option<&Uri> {
        self.uris
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map(|(_, uri)| uri)
    }
}

/// Host and port of a base URL, with the scheme's default port.
pub(crate) fn host_and_port(uri: &Uri) -> (String, u16) {
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    (host, port)
}

/// A header value holding a secret: marked sensitive so HTTP/2 HPACK never
/// indexes it and debug output hides it.
pub(crate) fn secret_header(value: &str) -> Option<http::HeaderValue> {
    let mut header = http::HeaderValue::from_str(value).ok()?;
    header.set_sensitive(true);
    Some(header)
}

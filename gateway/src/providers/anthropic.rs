//! The Anthropic Messages API wire format. Credentials go in `x-api-key`;
//! every request carries `anthropic-version`.

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use super::{EndpointTable, Provider, ProviderKind, host_and_port, secret_header};
use crate::api::Endpoint;
use crate::config::{ProviderConfig, Secret};

/// Sent when a client (not an official SDK) leaves `anthropic-version` out.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

pub struct AnthropicProvider {
    name: String,
    endpoints: EndpointTable,
    api_key: Option<HeaderValue>,
    credential: Option<Secret>,
    host: (String, u16),
}

impl AnthropicProvider {
    pub fn new(config: &ProviderConfig) -> AnthropicProvider {
        // The base URL is the host root (`https://api.anthropic.com`), as the Anthropic SDK expects.
        let endpoints = EndpointTable::new(
            &config.base_url,
            &[
                (Endpoint::Messages, "/v1/messages"),
                (Endpoint::CountTokens, "/v1/messages/count_tokens"),
            ],
        );
        AnthropicProvider {
            name: config.name.clone(),
            endpoints,
            api_key: config
                .api_key
                .as_ref()
                .and_then(|key| secret_header(key.expose())),
            credential: config.api_key.clone(),
            host: host_and_port(&config.base_url),
        }
    }
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn endpoint_uri(&self, endpoint: Endpoint) -> Option<&Uri> {
        self.endpoints.get(endpoint)
    }

    fn authorize(&self, headers: &mut HeaderMap) {
        if let Some(value) = &self.api_key {
            headers.insert(X_API_KEY.clone(), value.clone());
        }
    }

    fn fill_required_headers(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(&ANTHROPIC_VERSION) {
            headers.insert(
                ANTHROPIC_VERSION.clone(),
                HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
            );
        }
    }

    fn credential(&self) -> Option<&Secret> {
        self.credential.as_ref()
    }

    fn host(&self) -> (&str, u16) {
        (&self.host.0, self.host.1)
    }
}

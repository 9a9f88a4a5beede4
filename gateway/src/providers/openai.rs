//! The OpenAI wire format, spoken by OpenAI and by every OpenAI-compatible
//! server. Credentials go in `Authorization: Bearer`.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Uri};

use super::{EndpointTable, Provider, ProviderKind, host_and_port, secret_header};
use crate::api::Endpoint;
use crate::config::{ProviderConfig, Secret};

pub struct OpenAiProvider {
    name: String,
    endpoints: EndpointTable,
    authorization: Option<HeaderValue>,
    credential: Option<Secret>,
    host: (String, u16),
    stream_usage: bool,
}

impl OpenAiProvider {
    pub fn new(config: &ProviderConfig) -> OpenAiProvider {
        // The base URL already ends in the API root (`…/v1`), as the OpenAI SDK expects.
        let endpoints = EndpointTable::new(
            &config.base_url,
            &[
                (Endpoint::ChatCompletions, "/chat/completions"),
                (Endpoint::Completions, "/completions"),
                (Endpoint::Embeddings, "/embeddings"),
                (Endpoint::Responses, "/responses"),
            ],
        );
        OpenAiProvider {
            name: config.name.clone(),
            endpoints,
            authorization: config
                .api_key
                .as_ref()
                .and_then(|key| secret_header(&format!("Bearer {}", key.expose()))),
            credential: config.api_key.clone(),
            host: host_and_port(&config.base_url),
            stream_usage: config.stream_usage,
        }
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    fn endpoint_uri(&self, endpoint: Endpoint) -> Option<&Uri> {
        self.endpoints.get(endpoint)
    }

    fn asks_for_stream_usage(&self, endpoint: Endpoint) -> bool {
        self.stream_usage && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    fn authorize(&self, headers: &mut HeaderMap) {
        if let Some(value) = &self.authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
    }

    fn credential(&self) -> Option<&Secret> {
        self.credential.as_ref()
    }

    fn host(&self) -> (&str, u16) {
        (&self.host.0, self.host.1)
    }
}

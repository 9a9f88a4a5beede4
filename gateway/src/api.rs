//! The HTTP API apx serves: which endpoint a request is for, and which API
//! family (OpenAI or Anthropic) its errors must look like.

use http::Method;

/// The two API families clients speak. Errors are shaped after the family of
/// the endpoint that was called, so each SDK raises its own exception classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiFlavor {
    OpenAi,
    Anthropic,
}

/// An endpoint the gateway serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
    ListModels,
    GetModel,
    Healthz,
    Readyz,
    /// Process status for `apx status`: counts only, nothing secret.
    Status,
}

/// Why a request matched no endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoEndpoint {
    UnknownPath,
    WrongMethod(&'static str),
}

impl Endpoint {
    /// Every endpoint that is forwarded to an upstream.
    pub const PROXIED: [Endpoint; 6] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Messages,
        Endpoint::CountTokens,
    ];

    /// Matches a request line to an endpoint. A trailing slash is tolerated.
    pub fn recognize(method: &Method, path: &str) -> Result<Endpoint, NoEndpoint> {
        let path = match path.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed,
            _ => path,
        };
        let (endpoint, allowed) = match path {
            "/v1/chat/completions" => (Endpoint::ChatCompletions, Method::POST),
            "/v1/completions" => (Endpoint::Completions, Method::POST),
            "/v1/embeddings" => (Endpoint::Embeddings, Method::POST),
            "/v1/responses" => (Endpoint::Responses, Method::POST),
            "/v1/messages" => (Endpoint::Messages, Method::POST),
            "/v1/messages/count_tokens" => (Endpoint::CountTokens, Method::POST),
            "/v1/models" => (Endpoint::ListModels, Method::GET),
            "/healthz" => (Endpoint::Healthz, Method::GET),
            "/readyz" => (Endpoint::Readyz, Method::GET),
            "/apx/status" => (Endpoint::Status, Method::GET),
            _ if path.starts_with("/v1/models/") && path.len() > "/v1/models/".len() => {
                (Endpoint::GetModel, Method::GET)
            }
            _ => return Err(NoEndpoint::UnknownPath),
        };
        let head_of_get = allowed == Method::GET && method == Method::HEAD;
        if method == allowed || head_of_get {
            Ok(endpoint)
        } else if allowed == Method::GET {
            Err(NoEndpoint::WrongMethod("GET"))
        } else {
            Err(NoEndpoint::WrongMethod("POST"))
        }
    }

    /// The error shape callers of this endpoint expect.
    pub fn flavor(self) -> ApiFlavor {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => ApiFlavor::Anthropic,
            _ => ApiFlavor::OpenAi,
        }
    }

    /// The path below the `/v1` API root, as both families name it.
    pub fn api_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::Messages => "/messages",
            Endpoint::CountTokens => "/messages/count_tokens",
            Endpoint::ListModels | Endpoint::GetModel => "/models",
            Endpoint::Healthz => "/healthz",
            Endpoint::Readyz => "/readyz",
            Endpoint::Status => "/apx/status",
        }
    }
}

/// Picks the error family for a request that matched no endpoint: Anthropic
/// SDKs always send `anthropic-version`, OpenAI SDKs never do.
pub fn flavor_of_unmatched(path: &str, headers: &http::HeaderMap) -> ApiFlavor {
    if path.starts_with("/v1/messages") || headers.contains_key("anthropic-version") {
        ApiFlavor::Anthropic
    } else {
        ApiFlavor::OpenAi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_endpoints_and_methods() {
        use Endpoint::*;
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            Endpoint::recognize(&post, "/v1/chat/completions"),
            Ok(ChatCompletions)
        );
        assert_eq!(
            Endpoint::recognize(&post, "/v1/chat/completions/"),
            Ok(ChatCompletions)
        );
        assert_eq!(
            Endpoint::recognize(&post, "/v1/messages/count_tokens"),
            Ok(CountTokens)
        );
        assert_eq!(
            Endpoint::recognize(&get, "/v1/models/org/model-1"),
            Ok(GetModel)
        );
        assert_eq!(Endpoint::recognize(&Method::HEAD, "/healthz"), Ok(Healthz));
        assert_eq!(
            Endpoint::recognize(&get, "/v1/chat/completions"),
            Err(NoEndpoint::WrongMethod("POST"))
        );
        assert_eq!(Endpoint::recognize(&get, "/v1/models/"), Ok(ListModels));
        assert_eq!(
            Endpoint::recognize(&get, "/v2/x"),
            Err(NoEndpoint::UnknownPath)
        );
        assert_eq!(Endpoint::recognize(&get, "/"), Err(NoEndpoint::UnknownPath));
    }
}

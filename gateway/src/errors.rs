//! Every way a request can fail inside the gateway, with the status and the
//! error body each API family's SDK expects.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use crate::api::ApiFlavor;
use crate::auth::AuthError;

/// A request the gateway answers itself, with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    #[error("unknown endpoint {method} {path}")]
    UnknownEndpoint { method: String, path: String },
    #[error("{path} only accepts {allowed}")]
    MethodNotAllowed { path: String, allowed: &'static str },
    #[error("the model `{0}` does not exist or is not served by this gateway")]
    ModelNotFound(String),
    #[error("you must provide a model parameter")]
    MissingModel,
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(
        "the model `{model}` is served by a {provider_format}-format provider, which has no {path} endpoint; {hint}"
    )]
    WrongFormat {
        model: String,
        provider_format: &'static str,
        path: String,
        hint: &'static str,
    },
    #[error("the request body is larger than the gateway's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body did not arrive within {}s", .0.as_secs_f64())]
    BodyTimeout(Duration),
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error("the gateway is at its limit of {0} concurrent streams; retry shortly")]
    TooManyStreams(usize),
    #[error("the upstream provider `{provider}` could not be reached: {reason}")]
    UpstreamUnreachable { provider: String, reason: String },
    #[error("the upstream provider `{provider}` did not answer within {}s ({phase})", .after.as_secs_f64())]
    UpstreamTimeout {
        provider: String,
        phase: &'static str,
        after: Duration,
    },
    #[error(
        "the upstream provider `{provider}` rejected the gateway's own credential (upstream status {status}); the gateway's provider configuration needs fixing, your key is fine"
    )]
    UpstreamCredentialRejected { provider: String, status: u16 },
    #[error("the upstream provider `{provider}` failed: {reason}")]
    UpstreamBroken { provider: String, reason: String },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            UnknownEndpoint { .. } | ModelNotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            MissingModel
            | InvalidJson(_)
            | InvalidRequest(_)
            | WrongFormat { .. }
            | BodyRead(_) => StatusCode::BAD_REQUEST,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            TooManyStreams(_) => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamUnreachable { .. }
            | UpstreamCredentialRejected { .. }
            | UpstreamBroken { .. } => StatusCode::BAD_GATEWAY,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Errors answered before the request body was read to its end.
    pub fn leaves_body_unread(&self) -> bool {
        matches!(
            self,
            GatewayError::Unauthenticated(_)
                | GatewayError::BodyTooLarge { .. }
                | GatewayError::BodyTimeout(_)
                | GatewayError::BodyRead(_)
        )
    }

    /// A short stable name for logs (`model_not_found`, `upstream_timeout`, …).
    pub fn code(&self) -> &'static str {
        let (kind, code) = self.openai_type_and_code();
        code.unwrap_or(kind)
    }

    /// OpenAI's `error.type` and `error.code`.
    fn openai_type_and_code(&self) -> (&'static str, Option<&'static str>) {
        use GatewayError::*;
        match self {
            Unauthenticated(_) => ("invalid_request_error", Some("invalid_api_key")),
            UnknownEndpoint { .. } => ("invalid_request_error", Some("unknown_url")),
            MethodNotAllowed { .. } => ("invalid_request_error", Some("method_not_allowed")),
            ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            MissingModel => ("invalid_request_error", Some("missing_model")),
            InvalidJson(_) => ("invalid_request_error", Some("invalid_json")),
            InvalidRequest(_) => ("invalid_request_error", None),
            WrongFormat { .. } => (
                "invalid_request_error",
                Some("unsupported_endpoint_for_model"),
            ),
            BodyTooLarge { .. } => ("invalid_request_error", Some("request_too_large")),
            BodyTimeout(_) => ("invalid_request_error", Some("request_timeout")),
            BodyRead(_) => ("invalid_request_error", Some("body_read_error")),
            TooManyStreams(_) => ("server_error", Some("too_many_concurrent_streams")),
            UpstreamUnreachable { .. } => ("server_error", Some("upstream_unreachable")),
            UpstreamTimeout { .. } => ("server_error", Some("upstream_timeout")),
            UpstreamCredentialRejected { .. } => {
                ("server_error", Some("upstream_credential_rejected"))
            }
            UpstreamBroken { .. } => ("server_error", Some("upstream_error")),
        }
    }

    /// Anthropic's `error.type`.
    fn anthropic_type(&self) -> &'static str {
        use GatewayError::*;
        match self {
            Unauthenticated(_) => "authentication_error",
            UnknownEndpoint { .. } | ModelNotFound(_) => "not_found_error",
            MethodNotAllowed { .. }
            | MissingModel
            | InvalidJson(_)
            | InvalidRequest(_)
            | WrongFormat { .. }
            | BodyRead(_) => "invalid_request_error",
            BodyTooLarge { .. } => "request_too_large",
            BodyTimeout(_) | UpstreamTimeout { .. } => "timeout_error",
            TooManyStreams(_) => "overloaded_error",
            UpstreamUnreachable { .. }
            | UpstreamCredentialRejected { .. }
            | UpstreamBroken { .. } => "api_error",
        }
    }

    /// The JSON error body in the caller's API family.
    pub fn body(&self, flavor: ApiFlavor) -> Bytes {
        let (kind, code) = match flavor {
            ApiFlavor::OpenAi => self.openai_type_and_code(),
            ApiFlavor::Anthropic => (self.anthropic_type(), None),
        };
        error_body(flavor, kind, code, &self.to_string())
    }
}

/// An error body in a family's shape: OpenAI
/// `{"error":{"message","type","param","code"}}`, Anthropic
/// `{"type":"error","error":{"type","message"}}`.
pub fn error_body(flavor: ApiFlavor, kind: &str, code: Option<&str>, message: &str) -> Bytes {
    let value = match flavor {
        ApiFlavor::OpenAi => json!({
            "error": { "message": message, "type": kind, "param": null, "code": code }
        }),
        ApiFlavor::Anthropic => json!({
            "type": "error",
            "error": { "type": kind, "message": message }
        }),
    };
    Bytes::from(value.to_string())
}

/// The error type a family uses for an upstream status that arrived without a
/// usable body.
pub fn kind_for_status(flavor: ApiFlavor, status: StatusCode) -> &'static str {
    match (flavor, status.as_u16()) {
        (ApiFlavor::OpenAi, 429) => "rate_limit_exceeded",
        (ApiFlavor::OpenAi, 400..=499) => "invalid_request_error",
        (ApiFlavor::OpenAi, _) => "server_error",
        (ApiFlavor::Anthropic, 400) => "invalid_request_error",
        (ApiFlavor::Anthropic, 401) => "authentication_error",
        (ApiFlavor::Anthropic, 403) => "permission_error",
        (ApiFlavor::Anthropic, 404) => "not_found_error",
        (ApiFlavor::Anthropic, 413) => "request_too_large",
        (ApiFlavor::Anthropic, 429) => "rate_limit_error",
        (ApiFlavor::Anthropic, 504) => "timeout_error",
        (ApiFlavor::Anthropic, 529) => "overloaded_error",
        (ApiFlavor::Anthropic, 400..=499) => "invalid_request_error",
        (ApiFlavor::Anthropic, _) => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_each_family_shape() {
        let err = GatewayError::ModelNotFound("gpt-9".into());
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        let openai: serde_json::Value =
            serde_json::from_slice(&err.body(ApiFlavor::OpenAi)).unwrap();
        assert_eq!(openai["error"]["code"], "model_not_found");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        assert!(
            openai["error"]["message"]
                .as_str()
                .unwrap()
                .contains("gpt-9")
        );
        let anthropic: serde_json::Value =
            serde_json::from_slice(&err.body(ApiFlavor::Anthropic)).unwrap();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "not_found_error");
    }
}

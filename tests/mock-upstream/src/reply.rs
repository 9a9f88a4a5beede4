//! Response construction shared by both APIs: JSON and SSE success bodies
//! (with the scenario's compression / pacing applied) and error bodies in
//! each API's exact shape.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, VARY};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::Shared;
use crate::body::{MockBody, StreamPlan, compress};
use crate::scenario::{Accepts, Scenario};
use crate::text::to_json;

pub(crate) type Resp = Response<MockBody>;

/// Which API's conventions (error shape, request-id header) apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAi,
    Anthropic,
}

/// Per-request context handed to the endpoint handlers.
pub(crate) struct Ctx {
    pub api: Api,
    pub request_id: String,
    pub scenario: Scenario,
    pub accepts: Accepts,
    pub shared: Arc<Shared>,
}

/// A header value from a string we built ourselves (ids, numbers); falls
/// back to an empty value if it were ever not a valid header value.
pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

impl Ctx {
    fn response(&self, status: StatusCode, content_type: &'static str, body: MockBody) -> Resp {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let id_header = match self.api {
            Api::OpenAi => HeaderName::from_static("x-request-id"),
            Api::Anthropic => HeaderName::from_static("request-id"),
        };
        headers.insert(id_header, header_value(&self.request_id));
        resp
    }

    /// A successful JSON reply. `empty-stream`, `gzip`/`br`, `stall-after`
    /// and `drop-after` apply (the whole body counts as one event).
    pub(crate) fn json_ok(&self, body: Vec<u8>) -> Resp {
        if self.scenario.empty_stream {
            return self.empty_stream();
        }
        let mut encoding = self.accepts.pick(self.scenario.encoding);
        let data = match encoding.map(|enc| compress(enc, &body)) {
            Some(Ok(compressed)) => compressed,
            Some(Err(_)) | None => {
                encoding = None;
                Bytes::from(body)
            }
        };
        let sc = &self.scenario;
        let body = if sc.stall_after.is_some() || sc.drop_after.is_some() {
            MockBody::events(
                vec![data],
                StreamPlan {
                    stall_after: sc.stall_after,
                    drop_after: sc.drop_after,
                    ..StreamPlan::default()
                },
            )
        } else {
            MockBody::full(data)
        };
        let mut resp = self.response(StatusCode::OK, "application/json", body);
        if let Some(enc) = encoding {
            let headers = resp.headers_mut();
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(enc.token()));
            headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
        }
        resp
    }

    /// A successful event stream: one body frame per event, paced and cut
    /// according to the scenario, counted in the stream stats.
    pub(crate) fn sse_ok(&self, events: Vec<Bytes>) -> Resp {
        if self.scenario.empty_stream {
            return self.empty_stream();
        }
        let sc = &self.scenario;
        let encoding = self.accepts.pick(sc.encoding);
        let plan = StreamPlan {
            delay: sc.chunk_delay,
            stall_after: sc.stall_after,
            drop_after: sc.drop_after,
            encoding,
            stats: Some(self.shared.clone()),
        };
        let mut resp = self.response(
            StatusCode::OK,
            "text/event-stream",
            MockBody::events(events, plan),
        );
        let headers = resp.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Some(enc) = encoding {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(enc.token()));
            headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
        }
        resp
    }

    fn empty_stream(&self) -> Resp {
        let mut resp = self.response(StatusCode::OK, "text/event-stream", MockBody::empty());
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }

    /// An error in this API's shape with the usual type for `status`.
    pub(crate) fn error(&self, status: u16, message: &str) -> Resp {
        match self.api {
            Api::OpenAi => {
                let (kind, code) = openai_error_kind(status);
                self.openai_error(status, kind, code, None, message)
            }
            Api::Anthropic => self.anthropic_error(status, anthropic_error_kind(status), message),
        }
    }

    /// An OpenAI-shaped error: `{"error":{"message","type","param","code"}}`.
    pub(crate) fn openai_error(
        &self,
        status: u16,
        kind: &str,
        code: Option<&str>,
        param: Option<&str>,
        message: &str,
    ) -> Resp {
        let body = json!({
            "error": {
                "message": message,
                "type": kind,
                "param": param,
                "code": code,
            }
        });
        self.error_response(status, to_json(&body))
    }

    /// An Anthropic-shaped error:
    /// `{"type":"error","error":{"type","message"},"request_id"}`.
    pub(crate) fn anthropic_error(&self, status: u16, kind: &str, message: &str) -> Resp {
        let body = json!({
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": self.request_id,
        });
        self.error_response(status, to_json(&body))
    }

    fn error_response(&self, status: u16, body: Vec<u8>) -> Resp {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = self.response(status, "application/json", MockBody::full(body));
        if status == StatusCode::TOO_MANY_REQUESTS {
            let headers = resp.headers_mut();
            headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
            let limits: &[(&'static str, &'static str)] = match self.api {
                Api::OpenAi => &[
                    ("x-ratelimit-limit-requests", "60"),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "7s"),
                    ("x-ratelimit-limit-tokens", "150000"),
                    ("x-ratelimit-remaining-tokens", "0"),
                    ("x-ratelimit-reset-tokens", "7s"),
                ],
                Api::Anthropic => &[
                    ("anthropic-ratelimit-requests-limit", "60"),
                    ("anthropic-ratelimit-requests-remaining", "0"),
                    ("anthropic-ratelimit-tokens-limit", "150000"),
                    ("anthropic-ratelimit-tokens-remaining", "0"),
                ],
            };
            for (name, value) in limits {
                headers.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
        }
        resp
    }

    /// The error a `status:<code>` scenario asks for.
    pub(crate) fn scenario_error(&self, status: u16) -> Resp {
        let message = match (self.api, status) {
            (Api::OpenAi, 429) => {
                "Rate limit reached for requests per min (RPM): Limit 60, Used 60, Requested 1. \
                 Please try again in 7s."
            }
            (Api::OpenAi, 500) => {
                "The server had an error while processing your request. Sorry about that!"
            }
            (Api::OpenAi, 503) => "The engine is currently overloaded, please try again later.",
            (Api::Anthropic, 429) => {
                "Number of request tokens has exceeded your per-minute rate limit"
            }
            (Api::Anthropic, 500) => "Internal server error",
            (Api::Anthropic, 529) => "Overloaded",
            _ => "Mock upstream error requested by x-mock-scenario",
        };
        self.error(status, message)
    }

    /// A load-balancer style HTML page with `status`.
    pub(crate) fn html_error(&self, status: u16) -> Resp {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let title = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        let page = format!(
            "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
             <center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n\
             </body>\r\n</html>\r\n"
        );
        let mut resp = Response::new(MockBody::full(page));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        resp
    }
}

/// OpenAI `(type, code)` for an HTTP status.
fn openai_error_kind(status: u16) -> (&'static str, Option<&'static str>) {
    match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("invalid_request_error", Some("permission_denied")),
        404 => ("invalid_request_error", Some("not_found")),
        429 => ("rate_limit_exceeded", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    }
}

/// Anthropic error `type` for an HTTP status.
fn anthropic_error_kind(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

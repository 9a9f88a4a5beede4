//! Forwarding one API call upstream and streaming the answer back. Reads top
//! to bottom in the order a request lives: authenticate → read → route →
//! translate → forward → stream back.

mod body;
pub mod headers;
pub mod request;
pub mod upstream;
mod upstream_error;
mod usage_event;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

pub use body::{FailureSignal, RelayBody, RelayError, ResponseBody};

use crate::api::Endpoint;
use crate::auth;
use crate::errors::GatewayError;
use crate::logging::GatewayFacts;
use crate::providers::Provider;
use crate::state::Gateway;

/// Handles a call to one of the [`Endpoint::PROXIED`] endpoints.
pub async fn forward(
    gateway: &Gateway,
    endpoint: Endpoint,
    request: Request<Incoming>,
    facts: &mut GatewayFacts,
) -> Result<Response<ResponseBody>, GatewayError> {
    let limits = &gateway.limits;
    let (mut parts, body) = request.into_parts();

    // Authenticate before reading a byte of the body.
    let key = auth::authenticate(&gateway.keys, &parts.headers)?;
    facts.key_id = Some(key.id);
    facts.key_name = Some(key.name);

    let body = request::read_body(
        body,
        &parts.headers,
        limits.max_request_body.0,
        limits.client_body_timeout.0,
    )
    .await?;

    // Route on the model the client asked for.
    let summary = request::summarize(&body)?;
    let route = gateway
        .routes
        .get(&summary.model)
        .ok_or_else(|| GatewayError::ModelNotFound(summary.model.to_string()))?;
    let provider: &dyn Provider = route.provider.as_ref();
    facts.model = Some(route.name);
    facts.upstream_model = Some(route.upstream_model.unwrap_or(route.name));
    facts.provider = Some(route.provider_name);
    facts.provider_kind = Some(provider.kind().name());
    facts.stream = summary.stream;
    let endpoint_uri = provider
        .endpoint_uri(endpoint)
        .ok_or_else(|| wrong_format(endpoint, &summary.model, provider))?;

    // Translate: only the model name may change, and a stream that would
    // carry no token usage asks for it; every other byte passes as sent.
    let streaming = summary.stream;
    let usage_asked =
        streaming && !summary.has_stream_options && provider.asks_for_stream_usage(endpoint);
    let body = match &route.upstream_model {
        Some(upstream_model) => request::rename_model(&body, &summary, upstream_model),
        None => body,
    };
    let body = if usage_asked {
        request::ask_for_stream_usage(&body)
    } else {
        body
    };

    let stream_permit = if streaming {
        let permit = gateway
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::TooManyStreams(limits.max_concurrent_streams))?;
        Some(permit)
    } else {
        None
    };

    // Forward, with the provider's credential in place of the client's.
    headers::for_upstream(&mut parts.headers);
    if usage_asked {
        // The added usage event is removed on the way back, which needs the
        // events in clear: a compressed stream would reach the client with it.
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
    }
    provider.fill_required_headers(&mut parts.headers);
    provider.authorize(&mut parts.headers);
    parts.uri = with_query(endpoint_uri, parts.uri.path_and_query());
    parts.version = Version::HTTP_11;
    let upstream_request = Request::from_parts(parts, Full::new(body));
    let first_byte = limits.first_byte_timeout.0;
    let exchange = async {
        let response = gateway
            .upstream
            .send(upstream_request, provider.name(), limits.connect_timeout.0)
            .await?;
        if !response.status().is_success() {
            return Ok(UpstreamAnswer::Error(response));
        }
        let (head, mut body) = response.into_parts();
        // Wait for the first byte so a failure before it is an HTTP error,
        // not a 200 that breaks; it is sent on the moment it arrives.
        let first = first_frame(&mut body, provider, streaming).await?;
        Ok::<_, GatewayError>(UpstreamAnswer::Success(head, body, first))
    };
    // One deadline for the response head and the first byte of the body.
    let answer = tokio::time::timeout(first_byte, exchange)
        .await
        .map_err(|_| GatewayError::UpstreamTimeout {
            provider: provider.name().to_string(),
            phase: "waiting for the first byte",
            after: first_byte,
        })??;

    // Stream back.
    let flavor = endpoint.flavor();
    let (mut head, upstream_body, first) = match answer {
        UpstreamAnswer::Error(response) => {
            facts.upstream_status = Some(response.status().as_u16());
            return upstream_error::relay_error(response, provider, flavor, limits.idle_timeout.0)
                .await;
        }
        UpstreamAnswer::Success(head, body, first) => (head, body, first),
    };
    facts.upstream_status = Some(head.status.as_u16());
    headers::for_client(&mut head.headers);
    let is_event_stream = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let is_plain = head
        .headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let on_failure = if is_event_stream && is_plain {
        FailureSignal::SseErrorEvent(flavor)
    } else {
        FailureSignal::Abort
    };
    let has_length = head.headers.contains_key(header::CONTENT_LENGTH);
    let relay = RelayBody::new(
        first,
        upstream_body,
        limits.idle_timeout.0,
        on_failure,
        provider.name().to_string(),
        stream_permit,
    );
    let mut body = ResponseBody::relay(relay);
    // Only a plain event stream of unannounced length can lose an event.
    if usage_asked && is_event_stream && is_plain && !has_length {
        body.remove_injected_usage();
    }
    Ok(Response::from_parts(head, body))
}

/// What came back before the first-byte deadline.
enum UpstreamAnswer {
    /// A non-2xx response, body unread.
    Error(Response<Incoming>),
    /// A 2xx head, its body, and the first data frame (if the body has one).
    Success(http::response::Parts, Incoming, Option<Frame<Bytes>>),
}

/// Reads up to the first data frame of a successful upstream response.
async fn first_frame(
    body: &mut Incoming,
    provider: &dyn Provider,
    streaming: bool,
) -> Result<Option<Frame<Bytes>>, GatewayError> {
    let broken = |reason: String| GatewayError::UpstreamBroken {
        provider: provider.name().to_string(),
        reason,
    };
    if body.is_end_stream() && !streaming {
        return Ok(None);
    }
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let empty = frame.data_ref().is_some_and(|data| data.is_empty());
                if !empty {
                    return Ok(Some(frame));
                }
            }
            Some(Err(err)) => {
                return Err(broken(format!(
                    "connection error before the first byte: {err}"
                )));
            }
            None if streaming => {
                return Err(broken("the stream ended before sending any data".into()));
            }
            None => return Ok(None),
        }
    }
}

/// The upstream endpoint URI with the client's query string, if any.
fn with_query(endpoint: &Uri, client: Option<&PathAndQuery>) -> Uri {
    let Some(query) = client.and_then(PathAndQuery::query) else {
        return endpoint.clone();
    };
    let mut parts = endpoint.clone().into_parts();
    let path = parts
        .path_and_query
        .as_ref()
        .map_or("/", PathAndQuery::path);
    match format!("{path}?{query}").parse() {
        Ok(path_and_query) => {
            parts.path_and_query = Some(path_and_query);
            Uri::from_parts(parts).unwrap_or_else(|_| endpoint.clone())
        }
        // The client's query already parsed once, so this does not happen.
        Err(_) => endpoint.clone(),
    }
}

fn wrong_format(endpoint: Endpoint, model: &str, provider: &dyn Provider) -> GatewayError {
    use crate::providers::ProviderKind;
    let hint = match provider.kind() {
        ProviderKind::Anthropic => "call POST /v1/messages (Anthropic SDK) for this model",
        ProviderKind::OpenAi => {
            "call the OpenAI endpoints (/v1/chat/completions, /v1/responses, …) for this model"
        }
        ProviderKind::Echo => "the echo provider answers /v1/chat/completions and /v1/messages",
    };
    GatewayError::WrongFormat {
        model: model.to_string(),
        provider_format: provider.kind().format_name(),
        path: format!("/v1{}", endpoint.api_path()),
        hint,
    }
}

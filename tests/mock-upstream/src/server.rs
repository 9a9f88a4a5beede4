//! Accept loop, per-connection serving (HTTP/1.1 keep-alive or h2c) and
//! request routing.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::reply::{Api, Ctx, Resp};
use crate::scenario::{Accepts, Scenario};
use crate::{RecordedRequest, Shared, anthropic, control, ids, openai};

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<()>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: back off briefly.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        // Best effort: the mock still works with Nagle on.
        let _ = stream.set_nodelay(true);
        let guard = ConnectionGuard::new(shared.clone());
        let builder = builder.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let shared = guard.shared.clone();
            let service = service_fn(move |req| handle(shared.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
            drop(guard);
        });
    }
}

/// Keeps `open_connections` accurate for as long as a connection task runs.
struct ConnectionGuard {
    shared: Arc<Shared>,
}

impl ConnectionGuard {
    fn new(shared: Arc<Shared>) -> ConnectionGuard {
        shared.open_connections.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard { shared }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The endpoints the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    OpenAiModels,
    AnthropicModels,
    Messages,
    CountTokens,
    NotFound,
}

fn route(method: &Method, path: &str, headers: &HeaderMap) -> (Api, Route) {
    let post = method == Method::POST;
    let get = method == Method::GET;
    match path {
        "/v1/chat/completions" if post => (Api::OpenAi, Route::ChatCompletions),
        "/v1/completions" if post => (Api::OpenAi, Route::Completions),
        "/v1/embeddings" if post => (Api::OpenAi, Route::Embeddings),
        "/v1/responses" if post => (Api::OpenAi, Route::Responses),
        "/v1/messages" if post => (Api::Anthropic, Route::Messages),
        "/v1/messages/count_tokens" if post => (Api::Anthropic, Route::CountTokens),
        "/v1/models" if get => {
            // Both APIs list models here; only Anthropic clients send
            // anthropic-version.
            if headers.contains_key("anthropic-version") {
                (Api::Anthropic, Route::AnthropicModels)
            } else {
                (Api::OpenAi, Route::OpenAiModels)
            }
        }
        _ if path.starts_with("/v1/messages") || headers.contains_key("anthropic-version") => {
            (Api::Anthropic, Route::NotFound)
        }
        _ => (Api::OpenAi, Route::NotFound),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let (parts, body) = req.into_parts();
    // A body that fails to arrive means the client is gone; the reply will
    // not be read, so an empty body is as good as any.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = parts.uri.path();
    if path.starts_with("/_mock/") {
        return Ok(control::handle(&shared, &parts.method, path));
    }
    shared.record(RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    Ok(dispatch(shared, &parts, &body).await)
}

async fn dispatch(shared: Arc<Shared>, parts: &Parts, body: &[u8]) -> Resp {
    let headers = &parts.headers;
    let (api, route) = route(&parts.method, parts.uri.path(), headers);
    let request_id = match api {
        Api::OpenAi => ids::hex("req_", 32),
        Api::Anthropic => ids::alnum("req_011C", 22),
    };
    let scenario = Scenario::parse(
        headers
            .get_all("x-mock-scenario")
            .iter()
            .map(|v| v.as_bytes()),
    );
    let accepts = Accepts::parse(
        headers
            .get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let (scenario, scenario_error) = match scenario {
        Ok(sc) => (sc, None),
        Err(message) => (Scenario::default(), Some(message)),
    };
    let ctx = Ctx {
        api,
        request_id,
        scenario,
        accepts,
        shared,
    };
    if let Some(message) = scenario_error {
        return ctx.error(400, &message);
    }
    if let Some(delay) = ctx.scenario.slow_first_byte {
        tokio::time::sleep(delay).await;
    }
    if route == Route::NotFound {
        return not_found(&ctx, &parts.method, parts.uri.path());
    }
    if let Some(denied) = check_auth(&ctx, headers) {
        return denied;
    }
    if let Some(status) = ctx.scenario.status {
        return ctx.scenario_error(status);
    }
    if let Some(status) = ctx.scenario.html_error {
        return ctx.html_error(status);
    }
    match route {
        Route::OpenAiModels => return openai::models(&ctx),
        Route::AnthropicModels => return anthropic::models(&ctx),
        _ => {}
    }
    let json = match parse_json_object(body) {
        Ok(v) => v,
        Err(detail) => return bad_json(&ctx, &detail),
    };
    match route {
        Route::ChatCompletions => openai::chat_completions(&ctx, &json),
        Route::Completions => openai::completions(&ctx, &json),
        Route::Embeddings => openai::embeddings(&ctx, &json),
        Route::Responses => openai::responses(&ctx, &json),
        Route::Messages => anthropic::messages(&ctx, &json),
        Route::CountTokens => anthropic::count_tokens(&ctx, &json),
        Route::OpenAiModels | Route::AnthropicModels | Route::NotFound => {
            not_found(&ctx, &parts.method, parts.uri.path())
        }
    }
}

fn parse_json_object(body: &[u8]) -> Result<Value, String> {
    if body.is_empty() {
        return Err("the request body is empty".to_owned());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("the request body must be a JSON object".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn bad_json(ctx: &Ctx, detail: &str) -> Resp {
    match ctx.api {
        Api::OpenAi => ctx.openai_error(
            400,
            "invalid_request_error",
            None,
            None,
            &format!(
                "We could not parse the JSON body of your request. (HINT: This likely means \
                 you aren't using your HTTP library correctly. The OpenAI API expects a JSON \
                 payload, but what was sent was not valid JSON: {detail}.)"
            ),
        ),
        Api::Anthropic => ctx.anthropic_error(
            400,
            "invalid_request_error",
            &format!("There was an issue with the JSON body of your request: {detail}"),
        ),
    }
}

fn not_found(ctx: &Ctx, method: &Method, path: &str) -> Resp {
    match ctx.api {
        Api::OpenAi => ctx.openai_error(
            404,
            "invalid_request_error",
            None,
            None,
            &format!("Invalid URL ({method} {path})"),
        ),
        Api::Anthropic => ctx.anthropic_error(404, "not_found_error", "Not Found"),
    }
}

/// `None` when the request carries this API's credentials, else the 401.
fn check_auth(ctx: &Ctx, headers: &HeaderMap) -> Option<Resp> {
    let shared = &ctx.shared;
    match ctx.api {
        Api::OpenAi => {
            let Some(token) = bearer_token(headers) else {
                return Some(ctx.openai_error(
                    401,
                    "invalid_request_error",
                    Some("invalid_api_key"),
                    None,
                    "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer \
                     YOUR_KEY), or as the password field (with blank username) if you're \
                     accessing the API from your browser and are prompted for a username and \
                     password. You can obtain an API key from \
                     https://platform.openai.com/account/api-keys.",
                ));
            };
            if token == shared.openai_key {
                return None;
            }
            Some(ctx.openai_error(
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
                &format!(
                    "Incorrect API key provided: {}. You can find your API key at \
                     https://platform.openai.com/account/api-keys.",
                    mask_key(&token)
                ),
            ))
        }
        Api::Anthropic => {
            // x-api-key is the documented header; the anthropic Python SDK
            // (2.x) sends the API key as `Authorization: Bearer` instead.
            let key_ok = headers
                .get("x-api-key")
                .is_some_and(|k| k.as_bytes() == shared.anthropic_key.as_bytes())
                || bearer_token(headers).is_some_and(|t| t == shared.anthropic_key);
            if !key_ok {
                return Some(ctx.anthropic_error(401, "authentication_error", "invalid x-api-key"));
            }
            if !headers.contains_key("anthropic-version") {
                return Some(ctx.anthropic_error(
                    401,
                    "authentication_error",
                    "anthropic-version: header is required",
                ));
            }
            None
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the whole value
/// when there is no `Bearer` scheme).
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?;
    let value = String::from_utf8_lossy(value.as_bytes());
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => value.trim(),
    };
    Some(token.to_owned())
}

/// `sk-up***test`: first five and last four characters of a key.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 9 {
        return "***".to_owned();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys() {
        assert_eq!(mask_key("sk-upstream-openai-test"), "sk-up***test");
        assert_eq!(mask_key("short"), "***");
    }

    #[test]
    fn routes() {
        let empty = HeaderMap::new();
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions", &empty),
            (Api::OpenAi, Route::ChatCompletions)
        );
        assert_eq!(
            route(&Method::GET, "/v1/chat/completions", &empty),
            (Api::OpenAi, Route::NotFound)
        );
        assert_eq!(
            route(&Method::POST, "/v1/messages/count_tokens", &empty),
            (Api::Anthropic, Route::CountTokens)
        );
        let mut anthropic = HeaderMap::new();
        anthropic.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        assert_eq!(
            route(&Method::GET, "/v1/models", &anthropic),
            (Api::Anthropic, Route::AnthropicModels)
        );
        assert_eq!(
            route(&Method::GET, "/v1/models", &empty),
            (Api::OpenAi, Route::OpenAiModels)
        );
    }

    use http::HeaderValue;
}

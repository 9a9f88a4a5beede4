//! The echo upstream: OpenAI chat completions and Anthropic messages, JSON or
//! streamed one word at a time, repeating the last user message.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

/// Every echo answer starts with this, so nobody mistakes it for a model.
pub const ECHO_PREFIX: &str = "[apx echo]";

/// Pause between streamed words: slow enough to see the stream arrive.
pub const WORD_DELAY: Duration = Duration::from_millis(25);

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Binds a loopback port and serves the echo API on it in the background.
pub fn spawn() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service =
                    service_fn(|request| async move { Ok::<_, Infallible>(answer(request).await) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(request: Request<Incoming>) -> Response<EchoBody> {
    let family = match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/chat/completions") => Family::OpenAi,
        (&Method::POST, "/v1/messages") => Family::Anthropic,
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                json!({"error": {"message": "not found"}}),
            );
        }
    };
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            family.error("the request body is not valid JSON"),
        );
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("echo")
        .to_string();
    let text = format!("{ECHO_PREFIX} You said: {}", last_user_text(&req));
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let input_tokens = body.len().div_ceil(4);
    let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    let output_tokens = words.len();
    if !stream {
        return json_response(
            StatusCode::OK,
            family.complete(&model, &text, input_tokens, output_tokens),
        );
    }
    let events = family.stream_events(&model, &words, input_tokens, output_tokens);
    let mut response = Response::new(BodyExt::boxed(paced(events)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A body fed by a task that sends the first event at once and each word
/// `WORD_DELAY` after the one before; it stops when the body is dropped.
fn paced(events: Vec<(Bytes, bool)>) -> PacedBody {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for (event, delay_before) in events {
            if delay_before {
                tokio::time::sleep(WORD_DELAY).await;
            }
            if sender.send(event).await.is_err() {
                return;
            }
        }
    });
    PacedBody { receiver }
}

struct PacedBody {
    receiver: tokio::sync::mpsc::Receiver<Bytes>,
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .receiver
            .poll_recv(cx)
            .map(|event| event.map(|data| Ok(Frame::data(data))))
    }
}

fn json_response(status: StatusCode, value: Value) -> Response<EchoBody> {
    let body = http_body_util::Full::new(Bytes::from(value.to_string()));
    let mut response = Response::new(BodyExt::boxed(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The text of the last user message, whether content is a string or blocks.
fn last_user_text(req: &Value) -> String {
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    let Some(last) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return String::new();
    };
    match last.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

#[derive(Clone, Copy)]
enum Family {
    OpenAi,
    Anthropic,
}

impl Family {
    fn error(self, message: &str) -> Value {
        match self {
            Family::OpenAi => {
                json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
            }
            Family::Anthropic => {
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
            }
        }
    }

    fn complete(self, model: &str, text: &str, input: usize, output: usize) -> Value {
        match self {
            Family::OpenAi => json!({
                "id": "chatcmpl-echo",
                "object": "chat.completion",
                "created": crate::time::unix_seconds(std::time::SystemTime::now()),
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}
            }),
            Family::Anthropic => json!({
                "id": "msg_echo",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": output}
            }),
        }
    }

    /// The stream as (event bytes, wait before sending it).
    fn stream_events(
        self,
        model: &str,
        words: &[String],
        input: usize,
        output: usize,
    ) -> Vec<(Bytes, bool)> {
        let mut events = Vec::with_capacity(words.len() + 6);
        match self {
            Family::OpenAi => {
                let created = crate::time::unix_seconds(std::time::SystemTime::now());
                let chunk = |delta: Value, finish: Value| {
                    let value = json!({
                        "id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": created,
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
                    });
                    Bytes::from(format!("data: {value}\n\n"))
                };
                events.push((
                    chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                    false,
                ));
                for word in words {
                    events.push((chunk(json!({"content": word}), Value::Null), true));
                }
                events.push((chunk(json!({}), json!("stop")), false));
                let usage = json!({
                    "id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [],
                    "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}
                });
                events.push((Bytes::from(format!("data: {usage}\n\n")), false));
                events.push((Bytes::from_static(b"data: [DONE]\n\n"), false));
            }
            Family::Anthropic => {
                let event = |name: &str, value: Value| {
                    Bytes::from(format!("event: {name}\ndata: {value}\n\n"))
                };
                events.push((
                    event(
                        "message_start",
                        json!({"type": "message_start", "message": {
                    "id": "msg_echo", "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input, "output_tokens": 0}}}),
                    ),
                    false,
                ));
                events.push((
                    event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                    ),
                    false,
                ));
                for word in words {
                    events.push((
                        event(
                            "content_block_delta",
                            json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": word}}),
                        ),
                        true,
                    ));
                }
                events.push((
                    event(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": 0}),
                    ),
                    false,
                ));
                events.push((
                    event(
                        "message_delta",
                        json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": output}}),
                    ),
                    false,
                ));
                events.push((
                    event("message_stop", json!({"type": "message_stop"})),
                    false,
                ));
            }
        }
        events
    }
}

//! Anthropic endpoints: messages (plain and streamed), token counting and
//! the model list.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::ids;
use crate::reply::{Ctx, Resp};
use crate::text::{
    argument_pieces, count_words, echo_arguments, join_text, reply_text, stream_pieces, to_json,
    words_in, write_json,
};

/// The text announcing a tool call, before the `tool_use` block.
const TOOL_PREAMBLE: &str = "Calling tool";

fn invalid(ctx: &Ctx, message: &str) -> Resp {
    ctx.anthropic_error(400, "invalid_request_error", message)
}

/// Validated pieces of a messages / count_tokens request.
struct Parsed<'a> {
    model: &'a str,
    messages: &'a [Value],
    input_tokens: usize,
}

/// Validates a request; `Err` carries the 400 message.
fn parse(req: &Value, need_max_tokens: bool) -> Result<Parsed<'_>, &'static str> {
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return Err("model: Field required");
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return Err("messages: Field required");
    };
    if need_max_tokens && !req.get("max_tokens").is_some_and(Value::is_u64) {
        return Err("max_tokens: Field required");
    }
    let system_words = req.get("system").map_or(0, count_words);
    let message_words: usize = messages
        .iter()
        .map(|m| m.get("content").map_or(0, count_words))
        .sum();
    Ok(Parsed {
        model,
        messages,
        input_tokens: (system_words + message_words).max(1),
    })
}

/// Whether the last message carries a `tool_result` block (the client is
/// answering our tool call, so the model now replies with text).
fn after_tool_result(messages: &[Value]) -> bool {
    messages
        .last()
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        })
}

/// The tool the model calls, if any: the forced one (`tool_choice` of type
/// `tool`) or the first tool.
fn tool_name<'a>(req: &'a Value, messages: &[Value]) -> Option<&'a str> {
    let tools = req.get("tools").and_then(Value::as_array)?;
    if tools.is_empty() || after_tool_result(messages) {
        return None;
    }
    let choice = req.get("tool_choice");
    if choice.and_then(|c| c.get("type")).and_then(Value::as_str) == Some("none") {
        return None;
    }
    choice
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .or_else(|| tools.first()?.get("name")?.as_str())
}

fn usage(input_tokens: usize, output_tokens: usize) -> Value {
    json!({
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard"
    })
}

/// An SSE event `event: <kind>\ndata: <json>\n\n`.
fn event(kind: &str, data: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(data.len() + kind.len() + 16);
    b.extend_from_slice(b"event: ");
    b.extend_from_slice(kind.as_bytes());
    b.extend_from_slice(b"\ndata: ");
    b.extend_from_slice(data);
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

/// A `content_block_delta` event, written by hand (the per-word hot path).
fn delta_event(index: usize, delta_type: &str, field: &str, value: &str) -> Bytes {
    let mut b = Vec::with_capacity(96 + value.len());
    b.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
    write_json(&mut b, &index);
    b.extend_from_slice(b",\"delta\":{\"type\":");
    write_json(&mut b, delta_type);
    b.push(b',');
    write_json(&mut b, field);
    b.push(b':');
    write_json(&mut b, value);
    b.extend_from_slice(b"}}");
    event("content_block_delta", &b)
}

/// `POST /v1/messages`.
pub(crate) fn messages(ctx: &Ctx, req: &Value) -> Resp {
    let parsed = match parse(req, true) {
        Ok(p) => p,
        Err(message) => return invalid(ctx, message),
    };
    let last_user = parsed
        .messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(join_text)
        .unwrap_or_default();
    let id = ids::alnum("msg_01", 22);
    let model = parsed.model;
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);

    match tool_name(req, parsed.messages) {
        None => {
            let text = reply_text(model, &last_user, ctx.scenario.words);
            let output_tokens = words_in(&text);
            if !stream {
                let body = json!({
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": null,
                    "usage": usage(parsed.input_tokens, output_tokens)
                });
                return ctx.json_ok(to_json(&body));
            }
            let mut events = start_events(&id, model, parsed.input_tokens);
            events.push(block_start(0, &json!({"type": "text", "text": ""})));
            events.push(event("ping", br#"{"type":"ping"}"#));
            for piece in stream_pieces(&text) {
                events.push(delta_event(0, "text_delta", "text", piece));
            }
            events.push(block_stop(0));
            finish_events(&mut events, "end_turn", output_tokens);
            ctx.sse_ok(events)
        }
        Some(name) => {
            let arguments = echo_arguments(&last_user);
            let input: Value = serde_json::from_str(&arguments).unwrap_or_else(|_| json!({}));
            let tool_id = ids::alnum("toolu_01", 22);
            let output_tokens = words_in(TOOL_PREAMBLE) + words_in(&arguments).max(1);
            if !stream {
                let body = json!({
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [
                        {"type": "text", "text": TOOL_PREAMBLE},
                        {"type": "tool_use", "id": tool_id, "name": name, "input": input}
                    ],
                    "stop_reason": "tool_use",
                    "stop_sequence": null,
                    "usage": usage(parsed.input_tokens, output_tokens)
                });
                return ctx.json_ok(to_json(&body));
            }
            let mut events = start_events(&id, model, parsed.input_tokens);
            events.push(block_start(0, &json!({"type": "text", "text": ""})));
            events.push(event("ping", br#"{"type":"ping"}"#));
            for piece in stream_pieces(TOOL_PREAMBLE) {
                events.push(delta_event(0, "text_delta", "text", piece));
            }
            events.push(block_stop(0));
            events.push(block_start(
                1,
                &json!({"type": "tool_use", "id": tool_id, "name": name, "input": {}}),
            ));
            // The real API opens every tool input with an empty fragment.
            events.push(delta_event(1, "input_json_delta", "partial_json", ""));
            for piece in argument_pieces(&arguments) {
                events.push(delta_event(1, "input_json_delta", "partial_json", piece));
            }
            events.push(block_stop(1));
            finish_events(&mut events, "tool_use", output_tokens);
            ctx.sse_ok(events)
        }
    }
}

fn start_events(id: &str, model: &str, input_tokens: usize) -> Vec<Bytes> {
    let start = json!({
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(input_tokens, 1)
        }
    });
    vec![event("message_start", &to_json(&start))]
}

fn block_start(index: usize, block: &Value) -> Bytes {
    let data = json!({"type": "content_block_start", "index": index, "content_block": block});
    event("content_block_start", &to_json(&data))
}

fn block_stop(index: usize) -> Bytes {
    let data = json!({"type": "content_block_stop", "index": index});
    event("content_block_stop", &to_json(&data))
}

fn finish_events(events: &mut Vec<Bytes>, stop_reason: &str, output_tokens: usize) {
    let delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": output_tokens}
    });
    events.push(event("message_delta", &to_json(&delta)));
    events.push(event("message_stop", br#"{"type":"message_stop"}"#));
}

/// `POST /v1/messages/count_tokens`.
pub(crate) fn count_tokens(ctx: &Ctx, req: &Value) -> Resp {
    match parse(req, false) {
        Ok(parsed) => ctx.json_ok(to_json(&json!({"input_tokens": parsed.input_tokens}))),
        Err(message) => invalid(ctx, message),
    }
}

/// `GET /v1/models` with Anthropic headers.
pub(crate) fn models(ctx: &Ctx) -> Resp {
    let body = json!({
        "data": [
            {
                "type": "model",
                "id": "claude-sonnet-4-5-20250929",
                "display_name": "Claude Sonnet 4.5",
                "created_at": "2025-09-29T00:00:00Z"
            },
            {
                "type": "model",
                "id": "claude-haiku-4-5-20251001",
                "display_name": "Claude Haiku 4.5",
                "created_at": "2025-10-01T00:00:00Z"
            }
        ],
        "has_more": false,
        "first_id": "claude-sonnet-4-5-20250929",
        "last_id": "claude-haiku-4-5-20251001"
    });
    ctx.json_ok(to_json(&body))
}

//! OpenAI endpoints: chat completions, legacy completions, embeddings,
//! Responses API and the model list.

use base64::Engine;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::ids;
use crate::reply::{Ctx, Resp};
use crate::text::{
    argument_pieces, count_words, echo_arguments, embedding, join_text, reply_text, stream_pieces,
    to_json, words_in, write_json,
};

const FINGERPRINT: &str = "fp_mock";

/// The request's `model`, when it is a string.
fn model_of(req: &Value) -> Option<&str> {
    req.get("model").and_then(Value::as_str)
}

fn missing_model(ctx: &Ctx) -> Resp {
    ctx.openai_error(
        400,
        "invalid_request_error",
        None,
        None,
        "you must provide a model parameter",
    )
}

fn missing_param(ctx: &Ctx, param: &str) -> Resp {
    ctx.openai_error(
        400,
        "invalid_request_error",
        Some("missing_required_parameter"),
        Some(param),
        &format!("Missing required parameter: '{param}'."),
    )
}

fn invalid_param(ctx: &Ctx, param: &str, message: &str) -> Resp {
    ctx.openai_error(
        400,
        "invalid_request_error",
        Some("invalid_value"),
        Some(param),
        message,
    )
}

fn is_stream(req: &Value) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn include_usage(req: &Value) -> bool {
    req.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn tool_choice_is_none(req: &Value) -> bool {
    req.get("tool_choice").and_then(Value::as_str) == Some("none")
}

/// The name of the tool a chat request forces (`tool_choice`) or else its
/// first tool's name.
fn chat_tool_name(req: &Value) -> Option<&str> {
    let forced = req
        .pointer("/tool_choice/function/name")
        .or_else(|| req.pointer("/tool_choice/name"))
        .and_then(Value::as_str);
    forced.or_else(|| {
        let first = req.get("tools")?.as_array()?.first()?;
        first
            .pointer("/function/name")
            .or_else(|| first.get("name"))
            .or_else(|| first.pointer("/custom/name"))
            .and_then(Value::as_str)
    })
}

fn chat_usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// What the mock "model" answers.
enum Answer {
    Text(String),
    Tool { name: String, arguments: String },
}

impl Answer {
    fn words(&self) -> usize {
        match self {
            Answer::Text(t) => words_in(t),
            Answer::Tool { arguments, .. } => words_in(arguments).max(1),
        }
    }
}

/// `POST /v1/chat/completions`.
pub(crate) fn chat_completions(ctx: &Ctx, req: &Value) -> Resp {
    let Some(model) = model_of(req) else {
        return missing_model(ctx);
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return missing_param(ctx, "messages");
    };
    let prompt_tokens = messages
        .iter()
        .map(|m| m.get("content").map_or(0, count_words))
        .sum::<usize>()
        .max(1);
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(join_text)
        .unwrap_or_default();
    let has_tools = req
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let after_tool_result = messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("tool");
    let tool = if has_tools && !tool_choice_is_none(req) && !after_tool_result {
        chat_tool_name(req)
    } else {
        None
    };
    let answer = match tool {
        Some(name) => Answer::Tool {
            name: name.to_owned(),
            arguments: echo_arguments(&last_user),
        },
        None => Answer::Text(reply_text(model, &last_user, ctx.scenario.words)),
    };
    let completion_tokens = answer.words();
    let id = ids::alnum("chatcmpl-", 29);
    let created = ids::now_secs();
    let usage = chat_usage(prompt_tokens, completion_tokens);

    if !is_stream(req) {
        let (message, finish) = match &answer {
            Answer::Text(text) => (
                json!({"role": "assistant", "content": text, "refusal": null, "annotations": []}),
                "stop",
            ),
            Answer::Tool { name, arguments } => (
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "id": ids::alnum("call_", 24),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments}
                    }],
                    "refusal": null,
                    "annotations": []
                }),
                "tool_calls",
            ),
        };
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish
            }],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT
        });
        return ctx.json_ok(to_json(&body));
    }

    let with_usage = include_usage(req);
    let chunks = ChunkPrefix::new(&id, "chat.completion.chunk", created, model, with_usage);
    let mut events = Vec::new();
    let finish = match &answer {
        Answer::Text(text) => {
            events.push(chunks.chat(br#"{"role":"assistant","content":"","refusal":null}"#, None));
            for piece in stream_pieces(text) {
                let mut delta = Vec::with_capacity(piece.len() + 16);
                delta.extend_from_slice(b"{\"content\":");
                write_json(&mut delta, piece);
                delta.push(b'}');
                events.push(chunks.chat(&delta, None));
            }
            "stop"
        }
        Answer::Tool { name, arguments } => {
            let first = json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "index": 0,
                    "id": ids::alnum("call_", 24),
                    "type": "function",
                    "function": {"name": name, "arguments": ""}
                }],
                "refusal": null
            });
            events.push(chunks.chat(&to_json(&first), None));
            for piece in argument_pieces(arguments) {
                let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
                events.push(chunks.chat(&to_json(&delta), None));
            }
            "tool_calls"
        }
    };
    events.push(chunks.chat(b"{}", Some(finish)));
    if with_usage {
        events.push(chunks.usage(&usage));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    ctx.sse_ok(events)
}

/// The constant start of every chunk of one stream, serialized once.
struct ChunkPrefix {
    prefix: Vec<u8>,
    usage_null: bool,
}

impl ChunkPrefix {
    fn new(id: &str, object: &str, created: u64, model: &str, usage_null: bool) -> ChunkPrefix {
        let mut p = Vec::with_capacity(160 + model.len());
        p.extend_from_slice(b"data: {\"id\":");
        write_json(&mut p, id);
        p.extend_from_slice(b",\"object\":");
        write_json(&mut p, object);
        p.extend_from_slice(b",\"created\":");
        write_json(&mut p, &created);
        p.extend_from_slice(b",\"model\":");
        write_json(&mut p, model);
        p.extend_from_slice(b",\"system_fingerprint\":\"");
        p.extend_from_slice(FINGERPRINT.as_bytes());
        p.extend_from_slice(b"\",\"choices\":[");
        ChunkPrefix {
            prefix: p,
            usage_null,
        }
    }

    fn finish(&self, mut buf: Vec<u8>, finish: Option<&str>) -> Bytes {
        buf.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => write_json(&mut buf, f),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b"}]");
        if self.usage_null {
            buf.extend_from_slice(b",\"usage\":null");
        }
        buf.extend_from_slice(b"}\n\n");
        Bytes::from(buf)
    }

    /// A `chat.completion.chunk` event with one choice carrying `delta`
    /// (already JSON).
    fn chat(&self, delta: &[u8], finish: Option<&str>) -> Bytes {
        let mut b = Vec::with_capacity(self.prefix.len() + delta.len() + 96);
        b.extend_from_slice(&self.prefix);
        b.extend_from_slice(b"{\"index\":0,\"delta\":");
        b.extend_from_slice(delta);
        self.finish(b, finish)
    }

    /// A `text_completion` stream event carrying `text`.
    fn text(&self, text: &str, finish: Option<&str>) -> Bytes {
        let mut b = Vec::with_capacity(self.prefix.len() + text.len() + 96);
        b.extend_from_slice(&self.prefix);
        b.extend_from_slice(b"{\"index\":0,\"text\":");
        write_json(&mut b, text);
        self.finish(b, finish)
    }

    /// The final `choices: []` event carrying usage.
    fn usage(&self, usage: &Value) -> Bytes {
        let mut b = Vec::with_capacity(self.prefix.len() + 300);
        b.extend_from_slice(&self.prefix);
        b.extend_from_slice(b"],\"usage\":");
        write_json(&mut b, usage);
        b.extend_from_slice(b"}\n\n");
        Bytes::from(b)
    }
}

/// The text of a legacy `prompt`: a string, strings, or token arrays.
fn prompt_text(prompt: &Value) -> String {
    match prompt {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let mut parts: Vec<String> = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => parts.push(s.clone()),
                    Value::Number(n) => parts.push(n.to_string()),
                    Value::Array(tokens) => {
                        let t: Vec<String> = tokens.iter().map(Value::to_string).collect();
                        parts.push(t.join(" "));
                    }
                    _ => {}
                }
            }
            parts.join(" ")
        }
        _ => String::new(),
    }
}

/// `POST /v1/completions` (legacy).
pub(crate) fn completions(ctx: &Ctx, req: &Value) -> Resp {
    let Some(model) = model_of(req) else {
        return missing_model(ctx);
    };
    let Some(prompt) = req.get("prompt") else {
        return missing_param(ctx, "prompt");
    };
    let prompt = prompt_text(prompt);
    let prompt_tokens = words_in(&prompt).max(1);
    let text = reply_text(model, &prompt, ctx.scenario.words);
    let completion_tokens = words_in(&text);
    let id = ids::alnum("cmpl-", 29);
    let created = ids::now_secs();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    });
    if !is_stream(req) {
        let body = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage
        });
        return ctx.json_ok(to_json(&body));
    }
    let with_usage = include_usage(req);
    let chunks = ChunkPrefix::new(&id, "text_completion", created, model, with_usage);
    let mut events: Vec<Bytes> = stream_pieces(&text)
        .map(|piece| chunks.text(piece, None))
        .collect();
    events.push(chunks.text("", Some("stop")));
    if with_usage {
        events.push(chunks.usage(&usage));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    ctx.sse_ok(events)
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

/// `POST /v1/embeddings`.
pub(crate) fn embeddings(ctx: &Ctx, req: &Value) -> Resp {
    let Some(model) = model_of(req) else {
        return missing_model(ctx);
    };
    let Some(input) = req.get("input") else {
        return missing_param(ctx, "input");
    };
    // One (text, token count) per input.
    let inputs: Vec<(String, usize)> = match input {
        Value::String(s) => vec![(s.clone(), words_in(s))],
        Value::Array(items) if !items.is_empty() => {
            if items.iter().all(Value::is_string) {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| (s.to_owned(), words_in(s)))
                    .collect()
            } else if items.iter().all(Value::is_number) {
                vec![(prompt_text(input), items.len())]
            } else if items.iter().all(Value::is_array) {
                items
                    .iter()
                    .map(|t| (prompt_text(t), t.as_array().map_or(0, Vec::len)))
                    .collect()
            } else {
                return invalid_param(
                    ctx,
                    "input",
                    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                );
            }
        }
        _ => {
            return invalid_param(
                ctx,
                "input",
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            );
        }
    };
    if inputs.iter().any(|(text, _)| text.is_empty()) {
        return invalid_param(
            ctx,
            "input",
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        );
    }
    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => 8,
        Some(v) => match v.as_u64() {
            Some(d) if (1..=16_384).contains(&d) => d as usize,
            _ => {
                return invalid_param(
                    ctx,
                    "dimensions",
                    "Invalid value for 'dimensions': must be an integer between 1 and 16384.",
                );
            }
        },
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return invalid_param(
                ctx,
                "encoding_format",
                &format!(
                    "Invalid value for 'encoding_format': '{other}' is not one of 'float', 'base64'."
                ),
            );
        }
    };
    let prompt_tokens = inputs.iter().map(|(_, n)| n).sum::<usize>().max(1);
    let data: Vec<EmbeddingItem> = inputs
        .iter()
        .enumerate()
        .map(|(index, (text, _))| {
            let v = embedding(text, dims);
            let embedding = if base64 {
                let mut raw = Vec::with_capacity(v.len() * 4);
                for x in &v {
                    raw.extend_from_slice(&x.to_le_bytes());
                }
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(raw))
            } else {
                Vector::Float(v)
            };
            EmbeddingItem {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    #[derive(Serialize)]
    struct Usage {
        prompt_tokens: usize,
        total_tokens: usize,
    }
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<EmbeddingItem>,
        model: &'a str,
        usage: Usage,
    }
    ctx.json_ok(to_json(&List {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

/// `GET /v1/models`.
pub(crate) fn models(ctx: &Ctx) -> Resp {
    let body = json!({
        "object": "list",
        "data": [
            {"id": "gpt-4o-mini", "object": "model", "created": 1_721_172_741, "owned_by": "system"},
            {"id": "gpt-4o", "object": "model", "created": 1_715_367_049, "owned_by": "system"},
            {"id": "text-embedding-3-small", "object": "model", "created": 1_705_948_997, "owned_by": "system"}
        ]
    });
    ctx.json_ok(to_json(&body))
}

/// Words in a Responses API `input` (string or item list).
fn responses_input_words(input: &Value) -> usize {
    match input {
        Value::String(s) => words_in(s),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => words_in(s),
                Value::Object(obj) => {
                    if let Some(content) = obj.get("content") {
                        count_words(content)
                    } else if let Some(output) = obj.get("output") {
                        count_words(output)
                    } else {
                        0
                    }
                }
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// The text of the last user message in a Responses API `input`.
fn responses_last_user(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|item| item.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|item| item.get("content"))
            .map(join_text)
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The name of the function a Responses request forces or its first
/// function tool.
fn responses_tool_name(req: &Value) -> Option<&str> {
    if let Some(name) = req.pointer("/tool_choice/name").and_then(Value::as_str) {
        return Some(name);
    }
    req.get("tools")?
        .as_array()?
        .iter()
        .find(|t| {
            matches!(
                t.get("type").and_then(Value::as_str),
                None | Some("function") | Some("custom")
            ) && t.get("name").is_some_and(Value::is_string)
        })
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str)
}

/// The `response` object, echoing the request's settings like the real API.
fn response_object(
    req: &Value,
    id: &str,
    created: u64,
    model: &str,
    completed: bool,
    output: Value,
    usage: Value,
) -> Value {
    let echo = |key: &str, default: Value| req.get(key).cloned().unwrap_or(default);
    let mut obj = Map::new();
    obj.insert("id".into(), json!(id));
    obj.insert("object".into(), json!("response"));
    obj.insert("created_at".into(), json!(created));
    obj.insert(
        "status".into(),
        json!(if completed {
            "completed"
        } else {
            "in_progress"
        }),
    );
    obj.insert("background".into(), json!(false));
    obj.insert(
        "completed_at".into(),
        if completed {
            json!(created)
        } else {
            Value::Null
        },
    );
    obj.insert("error".into(), Value::Null);
    obj.insert("incomplete_details".into(), Value::Null);
    obj.insert("instructions".into(), echo("instructions", Value::Null));
    obj.insert(
        "max_output_tokens".into(),
        echo("max_output_tokens", Value::Null),
    );
    obj.insert("max_tool_calls".into(), echo("max_tool_calls", Value::Null));
    obj.insert("model".into(), json!(model));
    obj.insert("output".into(), output);
    obj.insert(
        "parallel_tool_calls".into(),
        echo("parallel_tool_calls", json!(true)),
    );
    obj.insert(
        "previous_response_id".into(),
        echo("previous_response_id", Value::Null),
    );
    obj.insert(
        "reasoning".into(),
        echo("reasoning", json!({"effort": null, "summary": null})),
    );
    obj.insert("service_tier".into(), json!("default"));
    obj.insert("store".into(), echo("store", json!(true)));
    obj.insert("temperature".into(), echo("temperature", json!(1.0)));
    obj.insert(
        "text".into(),
        echo(
            "text",
            json!({"format": {"type": "text"}, "verbosity": "medium"}),
        ),
    );
    obj.insert("tool_choice".into(), echo("tool_choice", json!("auto")));
    obj.insert("tools".into(), echo("tools", json!([])));
    obj.insert("top_logprobs".into(), echo("top_logprobs", json!(0)));
    obj.insert("top_p".into(), echo("top_p", json!(1.0)));
    obj.insert("truncation".into(), echo("truncation", json!("disabled")));
    obj.insert("usage".into(), usage);
    obj.insert("user".into(), echo("user", Value::Null));
    obj.insert("metadata".into(), echo("metadata", json!({})));
    Value::Object(obj)
}

/// Builds a Responses API event stream with increasing sequence numbers.
struct ResponseEvents {
    seq: u64,
    events: Vec<Bytes>,
}

impl ResponseEvents {
    fn push(&mut self, kind: &str, fields: Value) {
        let mut obj = match fields {
            Value::Object(obj) => obj,
            _ => Map::new(),
        };
        obj.insert("type".into(), json!(kind));
        obj.insert("sequence_number".into(), json!(self.seq));
        self.push_raw(kind, &to_json(&Value::Object(obj)));
    }

    /// A delta event written by hand (the hot per-word path).
    fn push_delta(&mut self, kind: &str, item_id: &str, extra: &str, delta: &str) {
        let mut b = Vec::with_capacity(160 + delta.len());
        b.extend_from_slice(b"{\"type\":");
        write_json(&mut b, kind);
        b.extend_from_slice(b",\"sequence_number\":");
        write_json(&mut b, &self.seq);
        b.extend_from_slice(b",\"item_id\":");
        write_json(&mut b, item_id);
        b.extend_from_slice(b",\"output_index\":0");
        b.extend_from_slice(extra.as_bytes());
        b.extend_from_slice(b",\"delta\":");
        write_json(&mut b, delta);
        b.push(b'}');
        self.push_raw(kind, &b);
    }

    fn push_raw(&mut self, kind: &str, data: &[u8]) {
        let mut b = Vec::with_capacity(data.len() + kind.len() + 16);
        b.extend_from_slice(b"event: ");
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(b"\ndata: ");
        b.extend_from_slice(data);
        b.extend_from_slice(b"\n\n");
        self.events.push(Bytes::from(b));
        self.seq += 1;
    }
}

/// `POST /v1/responses`.
pub(crate) fn responses(ctx: &Ctx, req: &Value) -> Resp {
    let Some(model) = model_of(req) else {
        return missing_model(ctx);
    };
    let input = req.get("input").unwrap_or(&Value::Null);
    let instructions_words = req.get("instructions").map_or(0, |i| {
        if i.is_string() {
            count_words(i)
        } else {
            responses_input_words(i)
        }
    });
    let input_tokens = (instructions_words + responses_input_words(input)).max(1);
    let last_user = responses_last_user(input);
    let has_tools = req
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let after_tool_result = input
        .as_array()
        .and_then(|items| items.last())
        .and_then(|item| item.get("type"))
        .and_then(Value::as_str)
        == Some("function_call_output");
    let tool = if has_tools && !tool_choice_is_none(req) && !after_tool_result {
        responses_tool_name(req)
    } else {
        None
    };
    let answer = match tool {
        Some(name) => Answer::Tool {
            name: name.to_owned(),
            arguments: echo_arguments(&last_user),
        },
        None => Answer::Text(reply_text(model, &last_user, ctx.scenario.words)),
    };
    let output_tokens = answer.words();
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens
    });
    let id = ids::hex("resp_", 48);
    let created = ids::now_secs();
    let (item_id, done_item) = match &answer {
        Answer::Text(text) => {
            let item_id = ids::hex("msg_", 48);
            let item = json!({
                "id": item_id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]
            });
            (item_id, item)
        }
        Answer::Tool { name, arguments } => {
            let item_id = ids::hex("fc_", 48);
            let item = json!({
                "id": item_id,
                "type": "function_call",
                "status": "completed",
                "arguments": arguments,
                "call_id": ids::alnum("call_", 24),
                "name": name
            });
            (item_id, item)
        }
    };

    if !is_stream(req) {
        let body = response_object(req, &id, created, model, true, json!([done_item]), usage);
        return ctx.json_ok(to_json(&body));
    }

    let mut ev = ResponseEvents {
        seq: 0,
        events: Vec::new(),
    };
    let pending = response_object(req, &id, created, model, false, json!([]), Value::Null);
    ev.push("response.created", json!({"response": pending}));
    ev.push("response.in_progress", json!({"response": pending}));
    match &answer {
        Answer::Text(text) => {
            let added = json!({
                "id": item_id, "type": "message", "status": "in_progress",
                "role": "assistant", "content": []
            });
            ev.push(
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            );
            let empty_part =
                json!({"type": "output_text", "annotations": [], "logprobs": [], "text": ""});
            ev.push(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": empty_part}),
            );
            for piece in stream_pieces(text) {
                ev.push_delta(
                    "response.output_text.delta",
                    &item_id,
                    ",\"content_index\":0,\"logprobs\":[]",
                    piece,
                );
            }
            ev.push(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            );
            let part =
                json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
            ev.push(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
            );
        }
        Answer::Tool { arguments, .. } => {
            let mut added = done_item.clone();
            if let Some(obj) = added.as_object_mut() {
                obj.insert("status".into(), json!("in_progress"));
                obj.insert("arguments".into(), json!(""));
            }
            ev.push(
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            );
            for piece in argument_pieces(arguments) {
                ev.push_delta(
                    "response.function_call_arguments.delta",
                    &item_id,
                    "",
                    piece,
                );
            }
            ev.push(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": 0, "arguments": arguments}),
            );
        }
    }
    ev.push(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_item}),
    );
    let done = response_object(req, &id, created, model, true, json!([done_item]), usage);
    ev.push("response.completed", json!({"response": done}));
    ctx.sse_ok(ev.events)
}

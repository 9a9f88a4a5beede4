//! Wire formats of every endpoint, credentials and recording.

mod common;

use base64::Engine;
use common::*;
use http::StatusCode;
use serde_json::{Value, json};

use apx_mock_upstream::{MockOptions, MockUpstream};

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":"there"}]}]}"#;

#[tokio::test]
async fn chat_completion() {
    let mock = MockUpstream::start().await.unwrap();
    let r = openai(mock.addr(), "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
    let v = r.json().await;
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "Hello from gpt-4o! You said: hi there"
    );
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 11);
}

#[tokio::test]
async fn chat_stream_arrives_as_one_frame_per_event() {
    let mock = MockUpstream::start().await.unwrap();
    let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"one two"}]}"#;
    let r = openai(mock.addr(), "/v1/chat/completions", &[], body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let frames = r.frames().await;
    // role, 7 words, finish, usage, [DONE]
    assert_eq!(frames.len(), 11, "{frames:?}");
    for f in &frames {
        let s = std::str::from_utf8(f).unwrap();
        assert!(s.starts_with("data: ") && s.ends_with("\n\n"), "{s:?}");
        assert_eq!(s.matches("\n\n").count(), 1, "one event per frame: {s:?}");
    }
    assert_eq!(&frames[10][..], b"data: [DONE]\n\n");
    let text: String = frames
        .iter()
        .map(|f| std::str::from_utf8(f).unwrap())
        .collect();
    let events = sse_data(&text);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["usage"], Value::Null);
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from m! You said: one two");
    assert_eq!(events[1]["choices"][0]["delta"]["content"], "Hello ");
    assert_eq!(events[8]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[9]["choices"], json!([]));
    assert_eq!(events[9]["usage"]["completion_tokens"], 7);
    assert_eq!(events[9]["usage"]["prompt_tokens"], 2);
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.len(), 1);
    assert!(mock.stats().completed_streams == 1);
}

#[tokio::test]
async fn chat_tool_calls() {
    let mock = MockUpstream::start().await.unwrap();
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "weather in Paris"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    });
    let r = openai(mock.addr(), "/v1/chat/completions", &[], &body.to_string()).await;
    let v = r.json().await;
    let msg = &v["choices"][0]["message"];
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(msg["content"], Value::Null);
    let call = &msg["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        call["function"]["arguments"],
        r#"{"echo":"weather in Paris"}"#
    );

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[],
        &stream_body.to_string(),
    )
    .await;
    let events = sse_data(&r.text().await);
    let first = &events[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["index"], 0);
    assert!(first["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(first["function"]["name"], "get_weather");
    assert_eq!(first["function"]["arguments"], "");
    let pieces: Vec<&str> = events[1..]
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert!((2..=3).contains(&pieces.len()), "{pieces:?}");
    assert_eq!(pieces.concat(), r#"{"echo":"weather in Paris"}"#);
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // Answering the tool call gets a text reply.
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather in Paris"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}]
    });
    let v = openai(mock.addr(), "/v1/chat/completions", &[], &body.to_string())
        .await
        .json()
        .await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn legacy_completions() {
    let mock = MockUpstream::start().await.unwrap();
    let v = openai(
        mock.addr(),
        "/v1/completions",
        &[],
        r#"{"model":"inst","prompt":"say hi"}"#,
    )
    .await
    .json()
    .await;
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], "Hello from inst! You said: say hi");
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    let text = openai(
        mock.addr(),
        "/v1/completions",
        &[],
        r#"{"model":"inst","prompt":"say hi","stream":true}"#,
    )
    .await
    .text()
    .await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    let events = sse_data(&text);
    let joined: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, "Hello from inst! You said: say hi");
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(events.iter().all(|e| e["object"] == "text_completion"));
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let mock = MockUpstream::start().await.unwrap();
    let v = openai(
        mock.addr(),
        "/v1/embeddings",
        &[],
        r#"{"model":"emb","input":["hello world","bye"]}"#,
    )
    .await
    .json()
    .await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "emb");
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "embedding");
    let floats: Vec<f32> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats.len(), 8);

    let v = openai(
        mock.addr(),
        "/v1/embeddings",
        &[],
        r#"{"model":"emb","input":"hello world","encoding_format":"base64","dimensions":8}"#,
    )
    .await
    .json()
    .await;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, floats);

    let v = openai(
        mock.addr(),
        "/v1/embeddings",
        &[],
        r#"{"model":"emb","input":[1,2,3],"dimensions":3}"#,
    )
    .await
    .json()
    .await;
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 3);
    assert_eq!(v["usage"]["prompt_tokens"], 3);

    let r = openai(
        mock.addr(),
        "/v1/embeddings",
        &[],
        r#"{"model":"emb","input":""}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn responses_api() {
    let mock = MockUpstream::start().await.unwrap();
    let v = openai(
        mock.addr(),
        "/v1/responses",
        &[],
        r#"{"model":"gpt-4o","instructions":"be brief","input":"hi there"}"#,
    )
    .await
    .json()
    .await;
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["instructions"], "be brief");
    let item = &v["output"][0];
    assert_eq!(item["type"], "message");
    assert!(item["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(item["status"], "completed");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(
        item["content"][0]["text"],
        "Hello from gpt-4o! You said: hi there"
    );
    assert_eq!(item["content"][0]["annotations"], json!([]));
    assert_eq!(v["usage"]["input_tokens"], 4);
    assert_eq!(v["usage"]["output_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 11);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(v["parallel_tool_calls"], true);
    assert_eq!(v["tools"], json!([]));

    let body = r#"{"model":"m","stream":true,"input":[{"role":"user","content":[{"type":"input_text","text":"a b"}]}]}"#;
    let text = openai(mock.addr(), "/v1/responses", &[], body)
        .await
        .text()
        .await;
    let names = sse_names(&text);
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", 7));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);
    let events = sse_data(&text);
    for (i, (e, name)) in events.iter().zip(&names).enumerate() {
        assert_eq!(e["sequence_number"], i);
        assert_eq!(&e["type"], name.as_str());
    }
    assert_eq!(events[0]["response"]["status"], "in_progress");
    let deltas: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(deltas, "Hello from m! You said: a b");
    let done = &events.last().unwrap()["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], deltas);
}

#[tokio::test]
async fn anthropic_messages() {
    let mock = MockUpstream::start().await.unwrap();
    let body = r#"{"model":"claude-x","max_tokens":64,"system":[{"type":"text","text":"be brief"}],"messages":[{"role":"user","content":"hi there"}]}"#;
    let r = anthropic(mock.addr(), "/v1/messages", &[], body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("request-id").unwrap().starts_with("req_"));
    let v = r.json().await;
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-x");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Hello from claude-x! You said: hi there"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(v["usage"]["input_tokens"], 4);
    assert_eq!(v["usage"]["output_tokens"], 7);

    let body = r#"{"model":"c","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let text = anthropic(mock.addr(), "/v1/messages", &[], body)
        .await
        .text()
        .await;
    let names = sse_names(&text);
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let events = sse_data(&text);
    assert_eq!(events[0]["message"]["content"], json!([]));
    assert_eq!(events[0]["message"]["usage"]["input_tokens"], 1);
    let text_out: String = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text_out, "Hello from c! You said: hi");
    assert_eq!(events[10]["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[10]["usage"]["output_tokens"], 6);
}

#[tokio::test]
async fn anthropic_tool_use() {
    let mock = MockUpstream::start().await.unwrap();
    let body = json!({
        "model": "c",
        "max_tokens": 64,
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "find it"}]}]
    });
    let v = anthropic(mock.addr(), "/v1/messages", &[], &body.to_string())
        .await
        .json()
        .await;
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"][0],
        json!({"type": "text", "text": "Calling tool"})
    );
    assert_eq!(v["content"][1]["type"], "tool_use");
    assert!(
        v["content"][1]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_")
    );
    assert_eq!(v["content"][1]["name"], "lookup");
    assert_eq!(v["content"][1]["input"], json!({"echo": "find it"}));

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let text = anthropic(mock.addr(), "/v1/messages", &[], &stream_body.to_string())
        .await
        .text()
        .await;
    let events = sse_data(&text);
    let partial: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .map(|e| e["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(partial, r#"{"echo":"find it"}"#);
    let start = events
        .iter()
        .find(|e| e["type"] == "content_block_start" && e["index"] == 1)
        .unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["input"], json!({}));
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn count_tokens_and_models() {
    let mock = MockUpstream::start().await.unwrap();
    let v = anthropic(
        mock.addr(),
        "/v1/messages/count_tokens",
        &[],
        r#"{"model":"c","system":"a b","messages":[{"role":"user","content":"one two three"}]}"#,
    )
    .await
    .json()
    .await;
    assert_eq!(v, json!({"input_tokens": 5}));

    let auth = format!("Bearer {OPENAI_KEY}");
    let v = send(
        mock.addr(),
        "GET",
        "/v1/models",
        &[("authorization", &auth)],
        "",
    )
    .await
    .json()
    .await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");

    let v = send(
        mock.addr(),
        "GET",
        "/v1/models",
        &[
            ("x-api-key", ANTHROPIC_KEY),
            ("anthropic-version", "2023-06-01"),
        ],
        "",
    )
    .await
    .json()
    .await;
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["has_more"], false);
}

#[tokio::test]
async fn credentials_are_checked_and_failures_recorded() {
    let mock = MockUpstream::start_with(MockOptions {
        openai_key: "sk-custom-openai-key".into(),
        anthropic_key: "sk-ant-custom".into(),
    })
    .await
    .unwrap();
    let addr = mock.addr();
    // Default key is now wrong.
    let r = openai(addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let v = r.json().await;
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], Value::Null);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Incorrect API key provided: sk-up***test"),
        "{v}"
    );
    let r = send(addr, "POST", "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-custom-openai-key")],
        CHAT,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let msg = r#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#;
    let r = anthropic(addr, "/v1/messages", &[], msg).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("request-id").is_some());
    let v = r.json().await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["error"]["message"], "invalid x-api-key");
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
    // Right key but no anthropic-version.
    let r = send(
        addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", "sk-ant-custom")],
        msg,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        addr,
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", "sk-ant-custom"),
            ("anthropic-version", "2023-06-01"),
        ],
        msg,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // The anthropic Python SDK sends the key as a bearer token.
    let r = send(
        addr,
        "POST",
        "/v1/messages",
        &[
            ("authorization", "Bearer sk-ant-custom"),
            ("anthropic-version", "2023-06-01"),
        ],
        msg,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 7);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(
        recorded[0].header("authorization"),
        Some("Bearer sk-upstream-openai-test")
    );
    assert_eq!(recorded[0].body, CHAT.as_bytes());
}

#[tokio::test]
async fn bad_bodies_get_400_in_each_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let r = openai(mock.addr(), "/v1/chat/completions", &[], "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v = r.json().await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let r = openai(mock.addr(), "/v1/chat/completions", &[], "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = openai(mock.addr(), "/v1/chat/completions", &[], r#"{"model":"m"}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json().await["error"]["param"], "messages");
    let r = anthropic(mock.addr(), "/v1/messages", &[], "[1,2]").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v = r.json().await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let r = anthropic(
        mock.addr(),
        "/v1/messages",
        &[],
        r#"{"model":"c","messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json().await["error"]["message"],
        "max_tokens: Field required"
    );
    let r = openai(mock.addr(), "/v1/nope", &[], "{}").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn recording_control_endpoints_and_clear() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    let auth = format!("Bearer {OPENAI_KEY}");
    send(
        addr,
        "POST",
        "/v1/chat/completions?api-version=1",
        &[("authorization", &auth), ("x-dup", "a"), ("X-Dup", "b")],
        CHAT,
    )
    .await
    .bytes()
    .await;
    let recorded = send(addr, "GET", "/_mock/requests", &[], "")
        .await
        .json()
        .await;
    let recorded = recorded.as_array().unwrap();
    assert_eq!(recorded.len(), 1, "control calls are not recorded");
    assert_eq!(recorded[0]["path"], "/v1/chat/completions?api-version=1");
    assert_eq!(recorded[0]["body"], CHAT);
    let dups: Vec<&Value> = recorded[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "x-dup")
        .map(|h| &h[1])
        .collect();
    assert_eq!(dups, [&json!("a"), &json!("b")]);

    let stats = send(addr, "GET", "/_mock/stats", &[], "")
        .await
        .json()
        .await;
    assert_eq!(stats["completed_streams"], 0);
    assert_eq!(stats["cancelled_streams"], 0);
    assert!(stats["open_connections"].as_u64().unwrap() >= 1);

    let r = send(addr, "POST", "/_mock/reset", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(mock.requests().is_empty());
    openai(addr, "/v1/chat/completions", &[], CHAT)
        .await
        .bytes()
        .await;
    assert_eq!(mock.requests().len(), 1);
    mock.clear();
    assert!(mock.requests().is_empty());
    assert_eq!(
        mock.openai_base_url(),
        format!("http://127.0.0.1:{}/v1", addr.port())
    );
    assert_eq!(
        mock.anthropic_base_url(),
        format!("http://127.0.0.1:{}", addr.port())
    );
}

#[tokio::test]
async fn serves_h2c() {
    let mock = MockUpstream::start().await.unwrap();
    let stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/v1/chat/completions", mock.addr()))
        .header("authorization", format!("Bearer {OPENAI_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(CHAT)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(mock.requests()[0].path, "/v1/chat/completions");
}

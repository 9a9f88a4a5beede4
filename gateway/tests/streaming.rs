//! Streams are relayed frame by frame as they arrive, failures before the
//! first byte are HTTP errors, failures after it are in-band error events,
//! and a client that leaves cancels the upstream request at once.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn chat_stream_is_relayed_incrementally() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", true),
        &[("x-mock-scenario", "chunk-delay:150,words:4")],
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "text/event-stream");
    assert!(
        response.text().ends_with("data: [DONE]\n\n"),
        "{}",
        response.text()
    );
    // Events spaced 150 ms apart upstream must reach the client one by one,
    // not gathered at the end. Judged on the frames themselves, not on wall
    // time, so a loaded CI machine that stalls the test for a moment cannot
    // fail it: the first frame holds the first event only, and most gaps
    // between frames follow the upstream's pacing.
    assert!(
        response.frames.len() >= 6,
        "{} frames",
        response.frames.len()
    );
    let first_frame = &response.frames[0].1;
    assert_eq!(
        first_frame.windows(2).filter(|w| w == b"\n\n").count(),
        1,
        "first frame carries more than one event: {:?}",
        String::from_utf8_lossy(first_frame)
    );
    let paced_gaps = response
        .frames
        .windows(2)
        .filter(|pair| pair[1].0 - pair[0].0 >= Duration::from_millis(75))
        .count();
    assert!(
        paced_gaps * 2 >= response.frames.len() - 1,
        "only {paced_gaps} of {} gaps follow the upstream's pacing",
        response.frames.len() - 1
    );
}

#[tokio::test]
async fn anthropic_stream_arrives_complete() {
    let gw = TestGateway::start("").await;
    let response = post(&gw, "/v1/messages", &message("claude-test", true), &[]).await;
    assert_eq!(response.status, 200);
    let text = response.text();
    for event in [
        "message_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    ] {
        assert!(
            text.contains(&format!("event: {event}\n")),
            "{event} missing: {text}"
        );
    }
}

#[tokio::test]
async fn upstream_error_before_the_stream_is_an_http_error() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", true),
        &[("x-mock-scenario", "status:500")],
    )
    .await;
    assert_eq!(response.status, 500);
    assert!(response.json()["error"]["message"].is_string());
}

#[tokio::test]
async fn empty_upstream_stream_is_a_502_not_an_empty_200() {
    let gw = TestGateway::start("").await;
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", true),
        &[("x-mock-scenario", "empty-stream")],
    )
    .await;
    assert_eq!(response.status, 502);
    assert_eq!(response.json()["error"]["code"], "upstream_error");
}

#[tokio::test]
async fn slow_first_byte_is_a_504() {
    let gw = TestGateway::start("[limits]\nfirst_byte_timeout = \"300ms\"").await;
    let started = std::time::Instant::now();
    let response = post(
        &gw,
        "/v1/messages",
        &message("claude-test", true),
        &[("x-mock-scenario", "slow-first-byte:2000")],
    )
    .await;
    assert_eq!(response.status, 504);
    assert_eq!(response.json()["error"]["type"], "timeout_error");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn upstream_dropping_mid_stream_ends_with_an_error_event() {
    let gw = TestGateway::start("").await;
    let openai = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", true),
        &[("x-mock-scenario", "drop-after:2")],
    )
    .await;
    assert_eq!(openai.status, 200);
    let text = openai.text();
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("data: {\"error\":"), "{text}");
    assert!(!text.contains("[DONE]"));

    let anthropic = post(
        &gw,
        "/v1/messages",
        &message("claude-test", true),
        &[("x-mock-scenario", "drop-after:2")],
    )
    .await;
    let text = anthropic.text();
    assert!(
        text.contains("event: error\ndata: {\"error\":{\"message\""),
        "{text}"
    );
    assert!(!text.contains("message_stop"));
}

#[tokio::test]
async fn stalled_stream_ends_after_the_idle_timeout() {
    let gw = TestGateway::start("[limits]\nidle_timeout = \"400ms\"").await;
    let started = std::time::Instant::now();
    let response = post(
        &gw,
        "/v1/chat/completions",
        &chat("gpt-test", true),
        &[("x-mock-scenario", "stall-after:2")],
    )
    .await;
    assert_eq!(response.status, 200);
    assert!(
        response.text().contains("idle timeout"),
        "{}",
        response.text()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream_at_once() {
    use http_body_util::BodyExt;
    let gw = TestGateway::start("").await;
    let request = http::Request::post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("x-mock-scenario", "chunk-delay:100,words:100")
        .body(http_body_util::Full::new(bytes::Bytes::from(chat(
            "gpt-test", true,
        ))))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    assert_eq!(gw.mock.stats().cancelled_streams, 0);
    drop(body);
    let cancelled = eventually(Duration::from_secs(1), || {
        gw.mock.stats().cancelled_streams == 1
    })
    .await;
    assert!(cancelled, "stats: {:?}", gw.mock.stats());
    assert_eq!(gw.mock.stats().completed_streams, 0);
}

#[tokio::test]
async fn compressed_upstream_bodies_reach_the_client_intact() {
    let gw = TestGateway::start("").await;
    for encoding in ["gzip", "br"] {
        let response = post(
            &gw,
            "/v1/chat/completions",
            &chat("gpt-test", false),
            &[("x-mock-scenario", encoding), ("accept-encoding", encoding)],
        )
        .await;
        assert_eq!(response.status, 200);
        assert_eq!(response.headers["content-encoding"], encoding);
        let decoded = decode(encoding, &response.body());
        let value: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(value["object"], "chat.completion");
    }
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap(),
        _ => brotli_decompressor::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .unwrap(),
    };
    out
}

#[tokio::test]
async fn graceful_shutdown_lets_a_running_stream_finish() {
    let mut gw = TestGateway::start("").await;
    let addr = gw.addr;
    let body = chat("gpt-test", true);
    let request = http::Request::post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("x-mock-scenario", "chunk-delay:100,words:5")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = client().request(request).await.unwrap();
    gw.begin_shutdown();
    use http_body_util::BodyExt;
    let collected = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&collected).ends_with("data: [DONE]\n\n"));
    // After shutdown began, the listener is closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let task = gw.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// An OpenAI stream the client asked no usage for: the gateway asks the
/// upstream for it (so the call is logged with its tokens) and removes the
/// extra usage event, so the client gets exactly the stream it asked for.
#[tokio::test]
async fn openai_stream_usage_is_asked_for_logged_and_not_passed_on() {
    let mock = apx_mock_upstream::MockUpstream::start()
        .await
        .expect("mock upstream starts");
    let plain = format!(
        "[providers.no-stream-usage]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"{OPENAI_UPSTREAM_KEY}\"\nstream_usage = false\n\n[[models]]\nname = \"gpt-plain\"\nprovider = \"no-stream-usage\"\n",
        mock.openai_base_url()
    );
    let gw = TestGateway::start_with_mock(mock, &plain).await;
    let usage_event = "\"choices\":[]";

    // Not asked by the client: asked upstream, removed on the way back.
    let response = post(&gw, "/v1/chat/completions", &chat("gpt-test", true), &[]).await;
    assert_eq!(response.status, 200);
    let text = response.text();
    assert!(!text.contains(usage_event), "{text}");
    assert!(text.contains("\"content\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let sent = gw.mock.requests().pop().expect("upstream request");
    let sent: serde_json::Value = serde_json::from_slice(&sent.body).expect("JSON body");
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // Asked by the client: passed through untouched, usage event included.
    let mut own = serde_json::from_str::<serde_json::Value>(&chat("gpt-test", true)).unwrap();
    own["stream_options"] = serde_json::json!({"include_usage": true});
    let response = post(&gw, "/v1/chat/completions", &own.to_string(), &[]).await;
    assert!(response.text().contains(usage_event), "{}", response.text());
    assert_eq!(
        gw.mock.requests().pop().unwrap().body,
        own.to_string().as_bytes()
    );

    // Declined by the client, or by the provider's config: not asked.
    own["stream_options"] = serde_json::json!({"include_usage": false});
    let response = post(&gw, "/v1/chat/completions", &own.to_string(), &[]).await;
    assert!(!response.text().contains(usage_event));
    assert_eq!(
        gw.mock.requests().pop().unwrap().body,
        own.to_string().as_bytes()
    );
    let response = post(&gw, "/v1/chat/completions", &chat("gpt-plain", true), &[]).await;
    assert!(!response.text().contains(usage_event));
    assert_eq!(
        gw.mock.requests().pop().unwrap().body,
        chat("gpt-plain", true).as_bytes()
    );

    // The first call, the one the gateway asked usage for, has its tokens.
    let store = apx_gateway::store::logs::LogStore::open(&gw.state_dir.join("logs.db")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let records = loop {
        let records = store
            .query(&apx_gateway::store::logs::LogQuery::default())
            .unwrap();
        if records.len() >= 4 || std::time::Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(records.len(), 4);
    let tokens: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.model.clone().unwrap_or_default(),
                r.input_tokens,
                r.output_tokens,
            )
        })
        .collect();
    assert_eq!(
        tokens[0],
        ("gpt-test".to_string(), Some(2), Some(7)),
        "{tokens:?}"
    );
    assert_eq!(
        tokens[1],
        ("gpt-test".to_string(), Some(2), Some(7)),
        "{tokens:?}"
    );
    assert_eq!(
        tokens[2],
        ("gpt-test".to_string(), None, None),
        "{tokens:?}"
    );
    assert_eq!(
        tokens[3],
        ("gpt-plain".to_string(), None, None),
        "{tokens:?}"
    );
}

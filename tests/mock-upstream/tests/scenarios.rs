//! `x-mock-scenario` behaviours and the stream / connection counters.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use apx_mock_upstream::{MockStats, MockUpstream};

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
const MSG: &str = r#"{"model":"c","max_tokens":9,"messages":[{"role":"user","content":"hello"}]}"#;

#[tokio::test]
async fn status_errors_in_each_api_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "status:429")],
        CHAT,
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    let v = r.json().await;
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    let r = openai(
        mock.addr(),
        "/v1/embeddings",
        &[("x-mock-scenario", "status:503")],
        "{}",
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json().await["error"]["type"], "server_error");

    for (code, kind) in [
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ] {
        let sc = format!("status:{code}");
        let r = anthropic(
            mock.addr(),
            "/v1/messages",
            &[("x-mock-scenario", &sc)],
            MSG,
        )
        .await;
        assert_eq!(r.status.as_u16(), code);
        let v = r.json().await;
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind);
    }
}

#[tokio::test]
async fn html_error_and_unknown_scenarios() {
    let mock = MockUpstream::start().await.unwrap();
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "html-error:502")],
        CHAT,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.header("content-type"), Some("text/html"));
    let page = r.text().await;
    assert!(page.contains("<h1>502 Bad Gateway</h1>"));
    assert!(serde_json::from_str::<Value>(&page).is_err());

    let r = anthropic(
        mock.addr(),
        "/v1/messages",
        &[("x-mock-scenario", "gzip, stall-afer:3")],
        MSG,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v = r.json().await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stall-afer:3")
    );
}

#[tokio::test]
async fn slow_first_byte_and_chunk_delay() {
    let mock = MockUpstream::start().await.unwrap();
    let t = Instant::now();
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "slow-first-byte:150")],
        CHAT,
    )
    .await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(r.status, StatusCode::OK);

    let t = Instant::now();
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "chunk-delay:30,words:3")],
        CHAT_STREAM,
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "headers come at once"
    );
    let mut body = r.body;
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if frame.unwrap().is_data() {
            arrivals.push(t.elapsed());
        }
    }
    // role, w1, w2, w3, finish, [DONE] with 30 ms between each.
    assert_eq!(arrivals.len(), 6);
    assert!(arrivals[5] >= Duration::from_millis(150), "{arrivals:?}");
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(25),
            "{arrivals:?}"
        );
    }
}

#[tokio::test]
async fn words_scenario_makes_long_replies() {
    let mock = MockUpstream::start().await.unwrap();
    let v = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "words:5")],
        CHAT,
    )
    .await
    .json()
    .await;
    assert_eq!(v["choices"][0]["message"]["content"], "w1 w2 w3 w4 w5");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let text = anthropic(
        mock.addr(),
        "/v1/messages",
        &[("x-mock-scenario", "words:1000")],
        &MSG.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\""),
    )
    .await
    .text()
    .await;
    // message_start, block start, ping, 1000 deltas, block stop, delta, stop
    let events = sse_data(&text);
    assert_eq!(events.len(), 1006);
    let reply: String = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert!(reply.starts_with("w1 w2 ") && reply.ends_with(" w1000"));
    assert_eq!(events[1004]["usage"]["output_tokens"], 1000);
}

#[tokio::test]
async fn empty_stream() {
    let mock = MockUpstream::start().await.unwrap();
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "empty-stream")],
        CHAT_STREAM,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.bytes().await.is_empty());
}

fn gunzip(data: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(data)
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn gzip_and_brotli() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    // Non-stream gzip.
    let r = openai(
        addr,
        "/v1/chat/completions",
        &[("x-mock-scenario", "gzip"), ("accept-encoding", "gzip, br")],
        CHAT,
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let v: Value = serde_json::from_str(&gunzip(&r.bytes().await)).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from m! You said: hello"
    );

    // Streamed gzip: every frame is decodable on its own (sync flush).
    let r = openai(
        addr,
        "/v1/chat/completions",
        &[("x-mock-scenario", "gzip"), ("accept-encoding", "gzip")],
        CHAT_STREAM,
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let frames = r.frames().await;
    assert!(frames.len() > 3);
    let mut dec = flate2::write::GzDecoder::new(Vec::new());
    use std::io::Write;
    dec.write_all(&frames[0]).unwrap();
    dec.flush().unwrap();
    let first = String::from_utf8(dec.get_ref().clone()).unwrap();
    assert!(
        first.starts_with("data: ") && first.ends_with("\n\n"),
        "{first:?}"
    );
    let all: Vec<u8> = frames.concat();
    let text = gunzip(&all);
    assert!(text.ends_with("data: [DONE]\n\n"));

    // Brotli on Anthropic.
    let r = anthropic(
        addr,
        "/v1/messages",
        &[("x-mock-scenario", "br"), ("accept-encoding", "br")],
        MSG,
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    let raw = r.bytes().await;
    let mut out = Vec::new();
    brotli::Decompressor::new(&raw[..], 4096)
        .read_to_end(&mut out)
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["type"], "message");

    // Not compressed when the client does not accept it; errors never are.
    let r = openai(
        addr,
        "/v1/chat/completions",
        &[("x-mock-scenario", "gzip")],
        CHAT,
    )
    .await;
    assert_eq!(r.header("content-encoding"), None);
    r.json().await;
    let r = openai(
        addr,
        "/v1/chat/completions",
        &[
            ("x-mock-scenario", "gzip,status:500"),
            ("accept-encoding", "gzip"),
        ],
        CHAT,
    )
    .await;
    assert_eq!(r.header("content-encoding"), None);
    r.json().await;
}

/// Sends a raw HTTP/1.1 request and returns the socket after the head.
async fn raw_request(
    addr: std::net::SocketAddr,
    scenario: &str,
    body: &str,
) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {OPENAI_KEY}\r\n\
         content-type: application/json\r\nx-mock-scenario: {scenario}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads until `needle` has been seen `count` times (or panics after 2 s).
async fn read_until(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, needle: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let text = String::from_utf8_lossy(buf);
        if text.matches(needle).count() >= count {
            return;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("timed out")
            .unwrap();
        assert!(n > 0, "connection closed early: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn stall_after_hangs_and_counts_cancel_when_client_leaves() {
    let mock = MockUpstream::start().await.unwrap();
    let mut s = raw_request(mock.addr(), "stall-after:2", CHAT_STREAM).await;
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, "data: ", 2).await;
    // Nothing more arrives.
    let mut chunk = [0u8; 1024];
    let more = tokio::time::timeout(Duration::from_millis(150), s.read(&mut chunk)).await;
    assert!(more.is_err(), "stream should stall");
    assert_eq!(String::from_utf8_lossy(&buf).matches("data: ").count(), 2);
    assert_eq!(mock.stats().cancelled_streams, 0);
    assert_eq!(mock.stats().open_connections, 1);
    drop(s);
    assert!(
        eventually(Duration::from_secs(1), || mock.stats().cancelled_streams
            == 1)
        .await,
        "{:?}",
        mock.stats()
    );
    assert!(
        eventually(Duration::from_secs(1), || mock.stats().open_connections
            == 0)
        .await
    );
    assert_eq!(mock.stats().completed_streams, 0);
}

#[tokio::test]
async fn drop_after_cuts_the_body() {
    let mock = MockUpstream::start().await.unwrap();
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "drop-after:3")],
        CHAT_STREAM,
    )
    .await;
    let mut body = r.body;
    let mut events = 0;
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) if f.is_data() => events += 1,
            Ok(_) => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert_eq!(events, 3);
    assert!(failed, "the body must end with an error, not cleanly");
    assert_eq!(mock.stats().cancelled_streams, 0);
    assert_eq!(mock.stats().completed_streams, 0);

    // On the wire: no terminating zero-length chunk.
    let mut s = raw_request(mock.addr(), "drop-after:1", CHAT_STREAM).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(text.matches("data: ").count(), 1);
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
}

#[tokio::test]
async fn cancelled_and_completed_stream_counters() {
    let mock = MockUpstream::start().await.unwrap();
    // A complete stream.
    openai(mock.addr(), "/v1/chat/completions", &[], CHAT_STREAM)
        .await
        .bytes()
        .await;
    assert_eq!(
        mock.stats(),
        MockStats {
            completed_streams: 1,
            cancelled_streams: 0,
            open_connections: mock.stats().open_connections,
        }
    );
    // A slow stream the client abandons after the first event.
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "chunk-delay:200")],
        CHAT_STREAM,
    )
    .await;
    let mut body = r.body;
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    let t = Instant::now();
    drop(body);
    r.conn.abort();
    assert!(
        eventually(Duration::from_secs(1), || mock.stats().cancelled_streams
            == 1)
        .await,
        "{:?}",
        mock.stats()
    );
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(mock.stats().completed_streams, 1);
    mock.clear();
    assert_eq!(mock.stats().completed_streams, 0);
    assert_eq!(mock.stats().cancelled_streams, 0);
}

#[tokio::test]
async fn stall_and_drop_apply_to_plain_json_too() {
    let mock = MockUpstream::start().await.unwrap();
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "drop-after:0")],
        CHAT,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.collect().await.is_err());
    let r = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-scenario", "stall-after:0")],
        CHAT,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_millis(100), r.body.collect()).await;
    assert!(body.is_err(), "body should hang");
}

#[tokio::test]
async fn open_connections_and_keep_alive() {
    let mock = MockUpstream::start().await.unwrap();
    assert_eq!(mock.stats().open_connections, 0);
    let stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::builder()
            .method("POST")
            .uri("/v1/messages/count_tokens")
            .header("host", "x")
            .header("x-api-key", ANTHROPIC_KEY)
            .header("anthropic-version", "2023-06-01")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"model":"c","messages":[{"role":"user","content":"a b c"}]}"#,
            )))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"input_tokens": 3}));
    }
    assert_eq!(
        mock.stats().open_connections,
        1,
        "one kept-alive connection"
    );
    drop(sender);
    let _ = conn.await;
    assert!(
        eventually(Duration::from_secs(1), || mock.stats().open_connections
            == 0)
        .await
    );
}

#[test]
fn binary_prints_address_and_exits_on_sigterm() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_apx-mock-upstream"))
        .args(["--listen", "127.0.0.1:0", "--openai-key", "sk-bin"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = send(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-bin")],
            CHAT,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        r.bytes().await;
        let recorded = send(addr, "GET", "/_mock/requests", &[], "")
            .await
            .json()
            .await;
        assert_eq!(recorded.as_array().unwrap().len(), 1);
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

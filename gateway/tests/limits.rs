//! Limits: body size, header size, slow clients, concurrent streams.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SMALL_LIMITS: &str = r#"
[limits]
max_request_body = "1KiB"
max_header_bytes = "8KiB"
client_body_timeout = "500ms"
max_concurrent_streams = 2
"#;

/// Sends raw bytes and returns what the gateway answered before closing or
/// going quiet for `wait`.
async fn raw_exchange(
    gw: &TestGateway,
    parts: &[&[u8]],
    pause: Duration,
    wait: Duration,
) -> String {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    for part in parts {
        if stream.write_all(part).await.is_err() {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_bodies_get_413_declared_or_chunked() {
    let gw = TestGateway::start(SMALL_LIMITS).await;
    let big = format!(
        r#"{{"model":"gpt-test","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let declared = post(&gw, "/v1/chat/completions", &big, &[]).await;
    assert_eq!(declared.status, 413);
    assert_eq!(declared.json()["error"]["code"], "request_too_large");

    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let chunk = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let answer = raw_exchange(
        &gw,
        &[head.as_bytes(), chunk.as_bytes()],
        Duration::ZERO,
        Duration::from_millis(500),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"type\":\"request_too_large\""),
        "{answer}"
    );
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let gw = TestGateway::start(SMALL_LIMITS).await;
    let huge = "y".repeat(16 * 1024);
    let head = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {huge}\r\n\r\n");
    let answer = raw_exchange(
        &gw,
        &[head.as_bytes()],
        Duration::ZERO,
        Duration::from_millis(500),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408_and_frees_the_slot() {
    let gw = TestGateway::start(SMALL_LIMITS).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: 200\r\n\r\n{{\"model\":"
    );
    let started = Instant::now();
    let answer = raw_exchange(
        &gw,
        &[head.as_bytes()],
        Duration::ZERO,
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test]
async fn streams_beyond_the_limit_get_503_then_capacity_returns() {
    let gw = TestGateway::start(SMALL_LIMITS).await;
    let slow = [("x-mock-scenario", "chunk-delay:150,words:4")];
    let body = chat("gpt-test", true);
    let (a, b) = tokio::join!(post(&gw, "/v1/chat/completions", &body, &slow), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = post(&gw, "/v1/chat/completions", &body, &slow);
        let third = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            post(&gw, "/v1/chat/completions", &body, &[]).await
        };
        tokio::join!(second, third)
    });
    let (b, c) = b;
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 200);
    assert_eq!(c.status, 503, "{}", c.text());
    assert_eq!(c.headers["retry-after"], "1");
    assert_eq!(c.json()["error"]["code"], "too_many_concurrent_streams");
    // Non-streaming calls are not limited by the stream cap, and capacity is back.
    let after = post(&gw, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(after.status, 200);
}

#[tokio::test]
async fn garbage_on_the_port_does_not_hurt_the_gateway() {
    let gw = TestGateway::start(SMALL_LIMITS).await;
    let answer = raw_exchange(
        &gw,
        &[b"\x16\x03\x01\x02\x00garbage\r\n\r\n"],
        Duration::ZERO,
        Duration::from_millis(300),
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    let ok = post(&gw, "/v1/chat/completions", &chat("gpt-test", false), &[]).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn an_early_error_before_the_body_says_connection_close() {
    let gw = TestGateway::start(SMALL_LIMITS).await;
    let body = chat("gpt-test", false);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer apx-wrong\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let answer = raw_exchange(
        &gw,
        &[head.as_bytes()],
        Duration::ZERO,
        Duration::from_millis(300),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // A request answered after its body was read keeps the connection.
    let ok = raw_exchange(
        &gw,
        &[b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"],
        Duration::ZERO,
        Duration::from_millis(300),
    )
    .await;
    assert!(
        !ok.to_ascii_lowercase().contains("connection: close"),
        "{ok}"
    );
}

//! A tiny hyper client for the mock's tests: one connection per request so
//! a test can cut it whenever it likes.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub const OPENAI_KEY: &str = "sk-upstream-openai-test";
pub const ANTHROPIC_KEY: &str = "sk-ant-upstream-test";

/// A response plus the task driving its connection (abort it to cut the
/// connection).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
    pub conn: JoinHandle<()>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every data frame of the body, in order.
    pub async fn frames(mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = self.body.frame().await {
            let frame = frame.expect("body frame");
            if let Ok(data) = frame.into_data() {
                out.push(data);
            }
        }
        out
    }

    pub async fn bytes(self) -> Bytes {
        self.body.collect().await.expect("body").to_bytes()
    }

    pub async fn text(self) -> String {
        String::from_utf8(self.bytes().await.to_vec()).expect("utf-8 body")
    }

    pub async fn json(self) -> serde_json::Value {
        let bytes = self.bytes().await;
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    }
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp: Response<Incoming> = sender.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        conn,
    }
}

/// POST to an OpenAI endpoint with the right key plus `extra` headers.
pub async fn openai(addr: SocketAddr, path: &str, extra: &[(&str, &str)], body: &str) -> Reply {
    let auth = format!("Bearer {OPENAI_KEY}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(addr, "POST", path, &headers, body).await
}

/// POST to an Anthropic endpoint with the right key plus `extra` headers.
pub async fn anthropic(addr: SocketAddr, path: &str, extra: &[(&str, &str)], body: &str) -> Reply {
    let mut headers = vec![
        ("x-api-key", ANTHROPIC_KEY),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(addr, "POST", path, &headers, body).await
}

/// The JSON payloads of `data:` lines in an SSE text (without `[DONE]`).
pub fn sse_data(text: &str) -> Vec<serde_json::Value> {
    text.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).expect("event JSON"))
        })
        .collect()
}

/// The `event:` names in an SSE text.
pub fn sse_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(str::to_owned)
        .collect()
}

/// Polls `cond` every few milliseconds until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

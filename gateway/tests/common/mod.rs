//! Test harness: a mock upstream and a gateway started in-process on
//! ephemeral ports, and a small HTTP client that records frame timings.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apx_gateway::auth::KeyHash;
use apx_mock_upstream::MockUpstream;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod ebpf_gate;

pub const CLIENT_KEY: &str = "apx-test-client-key-0123456789";
pub const OPENAI_UPSTREAM_KEY: &str = "sk-upstream-openai-test";
pub const ANTHROPIC_UPSTREAM_KEY: &str = "sk-ant-upstream-test";

pub struct TestGateway {
    pub addr: SocketAddr,
    pub mock: MockUpstream,
    pub state_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a mock upstream and a gateway in front of it. `extra` is
    /// appended to the config (e.g. a `[limits]` table).
    pub async fn start(extra: &str) -> TestGateway {
        let mock = MockUpstream::start().await.expect("mock upstream starts");
        Self::start_with_mock(mock, extra).await
    }

    pub async fn start_with_mock(mock: MockUpstream, extra: &str) -> TestGateway {
        let state_dir = unique_dir("gw");
        let text = config_text(&mock, &state_dir, extra);
        let config = apx_gateway::config::parse(Path::new("test.toml"), &text, &|_| None)
            .unwrap_or_else(|err| panic!("test config is valid: {err}\n{text}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            apx_gateway::serve(config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("gateway runs");
        });
        TestGateway {
            addr,
            mock,
            state_dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown (like SIGTERM).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_shutdown();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

pub fn unique_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("apx-it-{tag}-{}-{n}", std::process::id()))
}

pub fn config_text(mock: &MockUpstream, state_dir: &Path, extra: &str) -> String {
    // Tests that are not about capture use user space: loading the eBPF
    // programs for every test gateway would cost a second each.
    let logging = if extra.contains("[logging]") {
        ""
    } else {
        "[logging]\ncapture = \"userspace\""
    };
    format!(
        r#"
listen = "127.0.0.1:0"

[storage]
dir = "{state}"

[providers.mock-openai]
kind = "openai"
base_url = "{openai}"
api_key = "{OPENAI_UPSTREAM_KEY}"

[providers.mock-anthropic]
kind = "anthropic"
base_url = "{anthropic}"
api_key = "{ANTHROPIC_UPSTREAM_KEY}"

[providers.wrong-key]
kind = "openai"
base_url = "{openai}"
api_key = "sk-wrong-upstream-key-for-tests"

[providers.unreachable]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-x"

[[models]]
name = "gpt-test"
provider = "mock-openai"

[[models]]
name = "gpt-alias"
provider = "mock-openai"
upstream_model = "gpt-upstream-name"

[[models]]
name = "claude-test"
provider = "mock-anthropic"

[[models]]
name = "gpt-wrong-key"
provider = "wrong-key"

[[models]]
name = "gpt-unreachable"
provider = "unreachable"

[[keys]]
name = "test"
hash = "{hash}"

{logging}

{extra}
"#,
        state = state_dir.display(),
        openai = mock.openai_base_url(),
        anthropic = mock.anthropic_base_url(),
        hash = KeyHash::of(CLIENT_KEY),
    )
}

/// A response with the arrival time of each body frame.
pub struct Recorded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub frames: Vec<(Duration, Bytes)>,
    pub body_error: Option<String>,
}

impl Recorded {
    pub fn body(&self) -> Vec<u8> {
        self.frames.iter().flat_map(|(_, b)| b.to_vec()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body()).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body())
            .unwrap_or_else(|err| panic!("body is JSON ({err}): {}", self.text()))
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends a POST with the test client key in `Authorization: Bearer`.
pub async fn post(
    gateway: &TestGateway,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Recorded {
    let mut all = vec![("authorization", format!("Bearer {CLIENT_KEY}"))];
    all.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
    send(gateway, "POST", path, body, &all).await
}

pub async fn send(
    gateway: &TestGateway,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, String)],
) -> Recorded {
    let mut builder = Request::builder().method(method).uri(gateway.url(path));
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    if method == "POST" {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let started = Instant::now();
    let response = client().request(request).await.expect("gateway answers");
    let (parts, mut body) = response.into_parts();
    let mut frames = Vec::new();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    frames.push((started.elapsed(), data));
                }
            }
            Err(err) => {
                body_error = Some(err.to_string());
                break;
            }
        }
    }
    Recorded {
        status: parts.status,
        headers: parts.headers,
        frames,
        body_error,
    }
}

pub fn chat(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello gateway"}],
    })
    .to_string()
}

pub fn message(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello gateway"}],
    })
    .to_string()
}

/// Waits until `check` holds, polling for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

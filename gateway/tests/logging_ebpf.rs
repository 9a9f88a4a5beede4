//! eBPF capture end to end. Gateways started in this process with
//! `[logging] capture = "ebpf"` load the real kernel programs, which then
//! watch this test process's own sockets (only each gateway's registered
//! listener is tracked). Requests go over raw TCP, so the test knows each
//! client port and every byte the gateway wrote, and each stored record is
//! checked field by field against that, and against user-space capture of
//! the same requests.
//!
//! Loading the programs needs root (CAP_BPF, CAP_PERFMON, tracefs). Without
//! root the tests are skipped with a message, unless `CI` is set: there they
//! run, and fail if the programs cannot be loaded.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

// How long the collector holds one half of a call for the other;
// kernel-only records are written after it.
use apx_gateway::logging::collector::JOIN_WINDOW;
use apx_gateway::logging::fingerprint::FingerprintKey;
use apx_gateway::logging::record::{CallRecord, Capture};
use apx_gateway::store::logs::{LogQuery, LogStore};
use common::ebpf_gate::ebpf_tests_run;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EBPF: &str = "[logging]\ncapture = \"ebpf\"\nheaders = [\"x-tenant\"]";
const USERSPACE: &str = "[logging]\ncapture = \"userspace\"\nheaders = [\"x-tenant\"]";
/// Set in the child process of `ring_buffer_drops_are_counted`.
const CHILD: &str = "APX_EBPF_TEST_CHILD";

// ---- a raw HTTP/1.1 client ---------------------------------------------------

/// One request on its own connection.
struct Call {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Call {
    fn post(path: &'static str, body: String, request_id: &str) -> Call {
        Call {
            method: "POST",
            path,
            headers: vec![
                ("user-agent", "apx-ebpf-test/1.0".to_string()),
                ("content-type", "application/json".to_string()),
                ("x-request-id", request_id.to_string()),
                ("x-tenant", "acme".to_string()),
            ],
            body,
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Call {
        self.headers.push((name, value.to_string()));
        self
    }

    fn bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nhost: {addr}\r\n", self.method, self.path);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.method == "POST" {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("connection: close\r\n\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// What came back, and from where it was sent.
#[derive(Debug)]
struct Reply {
    client_port: u16,
    status: u16,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// Every byte the gateway wrote on the connection (head, framing, body).
    wire_bytes: u64,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn io_error(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

/// Sends `bytes` on a new connection and reads until the gateway closes it.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let client_port = stream.local_addr()?.port();
    stream.write_all(bytes).await?;
    let mut wire = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut wire))
        .await
        .map_err(|_| io_error("no answer within 10 s"))??;
    parse_reply(client_port, &wire)
}

fn parse_reply(client_port: u16, wire: &[u8]) -> std::io::Result<Reply> {
    let end = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io_error(format!("no response head in {} bytes", wire.len())))?;
    let head = String::from_utf8_lossy(&wire[..end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io_error(format!("bad status line: {head}")))?;
    let rest = &wire[end + 4..];
    let body = if head.contains("\r\ntransfer-encoding: chunked") {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        client_port,
        status,
        body,
        wire_bytes: wire.len() as u64,
    })
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| io_error("chunk size line not terminated"))?;
        let line = std::str::from_utf8(&data[..line_end]).map_err(io_error)?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| io_error(format!("chunk size {line:?}: {e}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(io_error("chunk cut short"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Sends a call; if the gateway is not there, says why it stopped.
async fn call(gw: &mut TestGateway, call: &Call) -> Reply {
    match exchange(gw.addr, &call.bytes(gw.addr)).await {
        Ok(reply) => reply,
        Err(err) => panic!(
            "{} {}: {err}; gateway: {}",
            call.method,
            call.path,
            gateway_failure(gw).await
        ),
    }
}

/// The gateway task's panic, if it ended (e.g. eBPF capture failed to start).
async fn gateway_failure(gw: &mut TestGateway) -> String {
    let Some(task) = gw.task.take() else {
        return "no task".into();
    };
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(())) => "the gateway stopped".into(),
        Ok(Err(err)) if err.is_panic() => {
            let payload = err.into_panic();
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into())
        }
        Ok(Err(err)) => err.to_string(),
        Err(_) => "still running".into(),
    }
}

/// A gateway with eBPF capture, checked to answer (the readiness call,
/// `GET /healthz`, gets a record of its own, which tests leave out).
async fn start_ebpf() -> TestGateway {
    let mut gw = TestGateway::start(EBPF).await;
    let health = Call {
        method: "GET",
        path: "/healthz",
        headers: Vec::new(),
        body: String::new(),
    };
    let reply = call(&mut gw, &health).await;
    assert_eq!(reply.status, 200);
    gw
}

// ---- reading the store -------------------------------------------------------

fn store(gw: &TestGateway) -> LogStore {
    LogStore::open(&gw.state_dir.join("logs.db")).expect("log store opens")
}

fn all_records(gw: &TestGateway) -> Vec<CallRecord> {
    store(gw)
        .query(&LogQuery {
            limit: Some(100_000),
            ..LogQuery::default()
        })
        .expect("log query")
}

/// Records of API calls (not the readiness check), once at least `n` are
/// stored or after `limit`.
async fn wait_records(gw: &TestGateway, n: usize, limit: Duration) -> Vec<CallRecord> {
    let deadline = Instant::now() + limit;
    loop {
        let records: Vec<CallRecord> = all_records(gw)
            .into_iter()
            .filter(|r| r.path != "/healthz")
            .collect();
        if records.len() >= n || Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn counter(gw: &TestGateway, name: &str) -> Option<u64> {
    store(gw)
        .counters()
        .ok()?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// The fingerprint this gateway gives `token`.
fn fingerprint(gw: &TestGateway, token: &str) -> String {
    FingerprintKey::load_or_create(&gw.state_dir.join("fingerprint.key"))
        .expect("fingerprint key")
        .fingerprint(token.as_bytes())
}

fn by_request_id<'a>(records: &'a [CallRecord], id: &str) -> &'a CallRecord {
    let found: Vec<&CallRecord> = records
        .iter()
        .filter(|r| r.header("x-request-id") == Some(id))
        .collect();
    assert_eq!(found.len(), 1, "records with x-request-id {id}: {found:#?}");
    found[0]
}

/// Every byte under `dir`, recursively (the store, its WAL, the key file…).
fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("state dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(bytes_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

fn assert_no_secret(dir: &Path, secrets: &[&str]) {
    let bytes = bytes_under(dir);
    for secret in secrets {
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{secret} found in {}", dir.display());
    }
}

// ---- requests ----------------------------------------------------------------

fn openai_body(model: &str, stream: bool) -> String {
    let mut body = serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello gateway"}],
    });
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body.to_string()
}

/// What a call should produce, besides what every call has.
struct Expect {
    status: u16,
    key: bool,
    model: &'static str,
    upstream_model: &'static str,
    provider: &'static str,
    kind: &'static str,
    stream: bool,
    tokens: Option<(u64, u64)>,
    error: Option<&'static str>,
    /// The credential header and scheme, and the token fingerprinted.
    credential: (&'static str, &'static str, String),
}

/// A mix of OpenAI and Anthropic calls, JSON and streamed, one refused key;
/// `prefix` makes the request ids unique.
fn mixed_calls(prefix: &str) -> Vec<(Call, Expect)> {
    let bearer = format!("Bearer {CLIENT_KEY}");
    let openai = |model: &'static str, upstream: &'static str, stream: bool| Expect {
        status: 200,
        key: true,
        model,
        upstream_model: upstream,
        provider: "mock-openai",
        kind: "openai",
        stream,
        tokens: Some((2, 7)),
        error: None,
        credential: ("authorization", "bearer", CLIENT_KEY.to_string()),
    };
    let anthropic = |stream: bool| Expect {
        status: 200,
        key: true,
        model: "claude-test",
        upstream_model: "claude-test",
        provider: "mock-anthropic",
        kind: "anthropic",
        stream,
        tokens: Some((2, 7)),
        error: None,
        credential: ("x-api-key", "none", CLIENT_KEY.to_string()),
    };
    let id = |n: usize| format!("{prefix}-{n}");
    vec![
        (
            Call::post(
                "/v1/chat/completions",
                openai_body("gpt-alias", false),
                &id(0),
            )
            .header("authorization", &bearer),
            openai("gpt-alias", "gpt-upstream-name", false),
        ),
        (
            Call::post(
                "/v1/chat/completions",
                openai_body("gpt-test", true),
                &id(1),
            )
            .header("authorization", &bearer)
            .header("cookie", "session=cookie-secret-ebpf-value"),
            openai("gpt-test", "gpt-test", true),
        ),
        (
            Call::post("/v1/messages", message("claude-test", false), &id(2))
                .header("x-api-key", CLIENT_KEY)
                .header("anthropic-version", "2023-06-01"),
            anthropic(false),
        ),
        (
            Call::post("/v1/messages", message("claude-test", true), &id(3))
                .header("x-api-key", CLIENT_KEY)
                .header("anthropic-version", "2023-06-01")
                .header("api-key", "apx-other-secret-ebpf-key"),
            anthropic(true),
        ),
        // A long stream relayed in bursts: many small chunks per writev (the
        // kernel parser once stopped after 16 iovecs and flagged it partial).
        (
            Call::post(
                "/v1/chat/completions",
                openai_body("gpt-test", true),
                &id(4),
            )
            .header("authorization", &bearer)
            .header("x-mock-scenario", "words:400"),
            Expect {
                tokens: Some((2, 400)),
                ..openai("gpt-test", "gpt-test", true)
            },
        ),
        (
            Call::post("/v1/messages", message("claude-test", true), &id(5))
                .header("x-api-key", CLIENT_KEY)
                .header("anthropic-version", "2023-06-01")
                .header("x-mock-scenario", "words:300,chunk-delay:1"),
            Expect {
                tokens: Some((2, 300)),
                ..anthropic(true)
            },
        ),
        (
            Call::post(
                "/v1/chat/completions",
                openai_body("gpt-test", false),
                &id(6),
            )
            .header("authorization", "Bearer apx-wrong-but-secret-ebpf"),
            Expect {
                status: 401,
                key: false,
                model: "",
                upstream_model: "",
                provider: "",
                kind: "",
                stream: false,
                tokens: None,
                error: Some("invalid_api_key"),
                credential: (
                    "authorization",
                    "bearer",
                    "apx-wrong-but-secret-ebpf".to_string(),
                ),
            },
        ),
        (
            Call::post("/v1/chat/completions", openai_body("nope", false), &id(7))
                .header("authorization", &bearer),
            Expect {
                status: 404,
                model: "",
                upstream_model: "",
                provider: "",
                kind: "",
                tokens: None,
                error: Some("model_not_found"),
                ..openai("nope", "", false)
            },
        ),
    ]
}

fn opt(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// The gateway's facts of a record, as `expect` says.
fn check_facts(record: &CallRecord, expect: &Expect, what: &str) {
    assert_eq!(record.status, Some(expect.status), "{what}: status");
    if expect.key {
        assert_eq!(record.key_name.as_deref(), Some("test"), "{what}: key name");
        assert_eq!(
            record.key_id.as_deref(),
            Some("config:test"),
            "{what}: key id"
        );
    } else {
        assert_eq!(record.key_name, None, "{what}: key name");
    }
    assert_eq!(record.model.as_deref(), opt(expect.model), "{what}: model");
    assert_eq!(
        record.upstream_model.as_deref(),
        opt(expect.upstream_model),
        "{what}: upstream model"
    );
    assert_eq!(
        record.provider.as_deref(),
        opt(expect.provider),
        "{what}: provider"
    );
    assert_eq!(
        record.provider_kind.as_deref(),
        opt(expect.kind),
        "{what}: provider kind"
    );
    let upstream = (!expect.provider.is_empty()).then_some(expect.status);
    assert_eq!(record.upstream_status, upstream, "{what}: upstream status");
    assert_eq!(record.stream, expect.stream, "{what}: stream");
    assert_eq!(
        record.input_tokens.zip(record.output_tokens),
        expect.tokens,
        "{what}: tokens"
    );
    assert_eq!(record.error.as_deref(), expect.error, "{what}: error");
}

/// The header elements of a record against the call that was sent.
fn check_header_elements(
    gw: &TestGateway,
    record: &CallRecord,
    call: &Call,
    reply: &Reply,
    what: &str,
) {
    assert_eq!(record.method, call.method, "{what}: method");
    assert_eq!(record.path, call.path, "{what}: path");
    assert_eq!(record.http_version, "HTTP/1.1", "{what}: version");
    assert_eq!(
        record.client_address.as_deref(),
        Some("127.0.0.1"),
        "{what}: client address"
    );
    assert_eq!(
        record.client_port,
        Some(reply.client_port),
        "{what}: client port"
    );
    assert_eq!(
        record.server_port,
        Some(gw.addr.port()),
        "{what}: server port"
    );
    assert_eq!(
        record.request_bytes,
        Some(call.body.len() as u64),
        "{what}: request body size"
    );
    // Every captured header, with the value sent; nothing else.
    let host = gw.addr.to_string();
    let content_length = call.body.len().to_string();
    let mut expected: Vec<(&str, &str)> = vec![("host", host.as_str())];
    for name in [
        "user-agent",
        "content-type",
        "content-length",
        "x-request-id",
        "anthropic-version",
        "x-tenant",
    ] {
        if name == "content-length" {
            expected.push((name, content_length.as_str()));
        } else if let Some((_, value)) = call.headers.iter().find(|(n, _)| *n == name) {
            expected.push((name, value.as_str()));
        }
    }
    let mut got: Vec<(&str, &str)> = record
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "{what}: captured headers");
}

fn check_credential(gw: &TestGateway, record: &CallRecord, expect: &Expect, what: &str) {
    let (header, scheme, token) = &expect.credential;
    let credential = record
        .credentials
        .iter()
        .find(|c| c.header == *header)
        .unwrap_or_else(|| panic!("{what}: no {header} credential in {record:#?}"));
    assert_eq!(credential.scheme, *scheme, "{what}: scheme");
    assert_eq!(
        credential.fingerprint,
        fingerprint(gw, token),
        "{what}: fingerprint"
    );
}

fn check_reply(reply: &Reply, expect: &Expect, what: &str) {
    assert_eq!(reply.status, expect.status, "{what}: {}", reply.text());
    if expect.stream && expect.status == 200 {
        let text = reply.text();
        assert!(text.contains("data: "), "{what}: not a stream: {text}");
    }
}

// ---- tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_gives_one_complete_kernel_record() {
    if !ebpf_tests_run("every_call_gives_one_complete_kernel_record") {
        return;
    }
    let mut gw = start_ebpf().await;
    // Kernel times are CLOCK_MONOTONIC moved to the wall clock with an
    // offset measured once: allow for a little drift.
    let slack = 50_000_000;
    let started_ns = apx_gateway::time::unix_nanos(std::time::SystemTime::now()) - slack;
    let calls = mixed_calls("k1");
    let mut replies = Vec::new();
    for (call_, expect) in &calls {
        let reply = call(&mut gw, call_).await;
        check_reply(&reply, expect, call_.path);
        replies.push(reply);
    }
    let last_call = Instant::now();
    let records = wait_records(&gw, calls.len(), Duration::from_secs(5)).await;
    assert_eq!(records.len(), calls.len(), "{records:#?}");
    let ended_ns = apx_gateway::time::unix_nanos(std::time::SystemTime::now()) + slack;
    for (i, ((call_, expect), reply)) in calls.iter().zip(&replies).enumerate() {
        let what = format!("call {i} ({} {})", call_.method, call_.path);
        let record = by_request_id(&records, &format!("k1-{i}"));
        assert_eq!(record.capture, Some(Capture::Ebpf), "{what}");
        assert!(!record.partial, "{what}: partial: {:?}", record.notes);
        assert!(record.notes.is_empty(), "{what}: notes {:?}", record.notes);
        check_header_elements(&gw, record, call_, reply, &what);
        check_credential(&gw, record, expect, &what);
        check_facts(record, expect, &what);
        // The kernel counts every byte the gateway wrote on the connection.
        assert_eq!(
            record.response_bytes,
            Some(reply.wire_bytes),
            "{what}: response bytes"
        );
        let duration = record.duration_ms.expect("duration");
        let first = record.response_start_ms.expect("response start");
        assert!(
            0.0 < first && first <= duration,
            "{what}: {first} / {duration}"
        );
        assert!(
            (started_ns..=ended_ns).contains(&record.time_unix_ns),
            "{what}: time {} not in [{started_ns}, {ended_ns}]",
            record.time_unix_ns
        );
    }
    // Slow streams take longer than their first byte.
    let slow = by_request_id(&records, "k1-5");
    assert!(slow.duration_ms.unwrap() > slow.response_start_ms.unwrap() + 100.0);
    assert_no_secret(
        &gw.state_dir,
        &[
            CLIENT_KEY,
            OPENAI_UPSTREAM_KEY,
            ANTHROPIC_UPSTREAM_KEY,
            "cookie-secret-ebpf-value",
            "apx-other-secret-ebpf-key",
            "apx-wrong-but-secret-ebpf",
        ],
    );
    // Nothing else turns up once unmatched halves would have been written.
    tokio::time::sleep(
        (JOIN_WINDOW + Duration::from_millis(400)).saturating_sub(last_call.elapsed()),
    )
    .await;
    let later = wait_records(&gw, 0, Duration::ZERO).await;
    assert_eq!(later.len(), calls.len(), "{later:#?}");
    assert_eq!(counter(&gw, "kernel.ringbuf_drops"), Some(0));
    assert!(counter(&gw, "kernel.records").is_some_and(|n| n > 0));
}

/// Raises this process's limit on open files to at least `want` (the
/// client sockets and the in-process gateway's share it): the soft limit
/// to the hard one, and the hard one too where allowed (root); the limit
/// reached.
fn raise_open_files(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer / in-pointer for the duration of each call.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_max = limit.rlim_max.max(want);
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            // Not allowed to raise the hard limit: up to it, then.
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Reads one Content-Length-framed response from a kept-alive connection;
/// its status.
async fn read_one_response(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut wire = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = wire.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&wire[..end]).to_ascii_lowercase();
            let status = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io_error(format!("no status in {head:?}")))?;
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io_error(format!("no content-length in {head:?}")))?;
            if wire.len() >= end + 4 + length {
                return Ok(status);
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io_error("connection closed before the response ended"));
        }
        wire.extend_from_slice(&chunk[..n]);
    }
}

/// More connections open at once than the syscall layer's preallocated map
/// holds (2 048): with the socket layer's map, which grows with the
/// connections, every call still gets its kernel record, none is counted
/// as untracked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_open_connections_all_get_kernel_records() {
    if !ebpf_tests_run("thousands_of_open_connections_all_get_kernel_records") {
        return;
    }
    const OPEN: usize = 2100;
    let want = 2 * OPEN as u64 + 200;
    let files = raise_open_files(want);
    assert!(
        files >= want,
        "this test needs {want} open files and could raise its limit only to {files}"
    );
    let gw = start_ebpf().await;
    // Every connection stays open until all have had their call, so all
    // are tracked at once.
    let mut streams = Vec::with_capacity(OPEN);
    for i in 0..OPEN {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let request =
            format!("GET /healthz HTTP/1.1\r\nHost: many.local\r\nX-Request-Id: many-{i}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let status = tokio::time::timeout(Duration::from_secs(10), read_one_response(&mut stream))
            .await
            .expect("answer within 10 s")
            .expect("response");
        assert_eq!(status, 200, "call {i}");
        streams.push(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mine = |records: &[CallRecord]| -> usize {
        records
            .iter()
            .filter(|r| {
                r.headers
                    .iter()
                    .any(|(n, v)| n == "x-request-id" && v.starts_with("many-"))
            })
            .count()
    };
    let mut records = all_records(&gw);
    while mine(&records) < OPEN && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        records = all_records(&gw);
    }
    let many: Vec<&CallRecord> = records
        .iter()
        .filter(|r| {
            r.headers
                .iter()
                .any(|(n, v)| n == "x-request-id" && v.starts_with("many-"))
        })
        .collect();
    assert_eq!(many.len(), OPEN, "records of the calls");
    for record in &many {
        assert_eq!(record.capture, Some(Capture::Ebpf), "{record:?}");
        assert!(!record.partial, "{record:?}");
        assert_eq!(record.status, Some(200), "{record:?}");
    }
    let mut ports: Vec<u16> = many.iter().filter_map(|r| r.client_port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), OPEN, "one client port per connection");
    assert_eq!(counter(&gw, "kernel.conn_map_full"), Some(0));
    drop(streams);
}

/// HTTP/2 (h2c prior knowledge) on the same port: the kernel programs parse
/// HTTP/1.x only, so these calls are captured in user space, each record
/// says so, nothing waits for a kernel half, and the kernel's view of the
/// HTTP/2 connection does not turn into a record of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_calls_under_ebpf_are_captured_in_user_space() {
    if !ebpf_tests_run("h2c_calls_under_ebpf_are_captured_in_user_space") {
        return;
    }
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mut gw = start_ebpf().await;
    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    let driver = tokio::spawn(connection);
    let calls = 3;
    for n in 0..calls {
        let request = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("content-type", "application/json")
            .header("user-agent", "apx-h2c-test/1.0")
            .header("x-request-id", format!("h2c-{n}"))
            .body(Full::new(bytes::Bytes::from(openai_body(
                "gpt-alias",
                false,
            ))))
            .expect("request");
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(err) => panic!(
                "h2c call: {err}; gateway: {}",
                gateway_failure(&mut gw).await
            ),
        };
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.expect("body");
        assert!(!body.to_bytes().is_empty());
    }
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    // No join window to wait out: the records come at the next batch.
    let records = wait_records(&gw, calls, Duration::from_secs(1)).await;
    assert_eq!(records.len(), calls, "{records:#?}");
    let key_fp = fingerprint(&gw, CLIENT_KEY);
    for n in 0..calls {
        let what = format!("h2c-{n}");
        let record = by_request_id(&records, &what);
        assert_eq!(record.capture, Some(Capture::Userspace), "{what}: capture");
        assert!(
            record.notes.iter().any(|note| note.contains("HTTP/2")),
            "{what}: notes {:?}",
            record.notes
        );
        assert!(!record.partial, "{what}: partial");
        assert_eq!(record.method, "POST", "{what}: method");
        assert_eq!(record.path, "/v1/chat/completions", "{what}: path");
        assert_eq!(record.http_version, "HTTP/2.0", "{what}: version");
        assert_eq!(record.status, Some(200), "{what}: status");
        assert_eq!(record.header("user-agent"), Some("apx-h2c-test/1.0"));
        assert_eq!(record.model.as_deref(), Some("gpt-alias"), "{what}: model");
        assert_eq!(record.input_tokens, Some(2), "{what}: input tokens");
        assert_eq!(record.credentials.len(), 1, "{what}: credentials");
        assert_eq!(
            record.credentials[0].fingerprint, key_fp,
            "{what}: fingerprint"
        );
    }
    tokio::time::sleep(JOIN_WINDOW + Duration::from_millis(400)).await;
    let later = wait_records(&gw, 0, Duration::ZERO).await;
    assert_eq!(later.len(), calls, "{later:#?}");
    assert_no_secret(&gw.state_dir, &[CLIENT_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_and_userspace_capture_agree() {
    if !ebpf_tests_run("kernel_and_userspace_capture_agree") {
        return;
    }
    let (mut kernel, mut user) = tokio::join!(start_ebpf(), TestGateway::start(USERSPACE));
    let calls = mixed_calls("cmp");
    let mut replies = Vec::new();
    for (call_, expect) in &calls {
        let k = call(&mut kernel, call_).await;
        let u = call(&mut user, call_).await;
        check_reply(&k, expect, call_.path);
        check_reply(&u, expect, call_.path);
        replies.push((k, u));
    }
    let k_records = wait_records(&kernel, calls.len(), Duration::from_secs(5)).await;
    let u_records = wait_records(&user, calls.len(), Duration::from_secs(5)).await;
    assert_eq!(k_records.len(), calls.len());
    assert_eq!(u_records.len(), calls.len());
    for (i, ((call_, expect), (k_reply, u_reply))) in calls.iter().zip(&replies).enumerate() {
        let id = format!("cmp-{i}");
        let what = format!("{id} ({})", call_.path);
        let k = by_request_id(&k_records, &id);
        let u = by_request_id(&u_records, &id);
        assert_eq!(k.capture, Some(Capture::Ebpf));
        assert_eq!(u.capture, Some(Capture::Userspace));
        // Each against what was sent, then against each other.
        check_header_elements(&kernel, k, call_, k_reply, &format!("{what} kernel"));
        check_header_elements(&user, u, call_, u_reply, &format!("{what} user space"));
        check_facts(k, expect, &format!("{what} kernel"));
        check_facts(u, expect, &format!("{what} user space"));
        check_credential(&kernel, k, expect, &format!("{what} kernel"));
        check_credential(&user, u, expect, &format!("{what} user space"));
        let same = |r: &CallRecord| {
            (
                r.partial,
                r.notes.clone(),
                r.method.clone(),
                r.path.clone(),
                r.http_version.clone(),
                r.status,
                r.client_address.clone(),
                r.request_bytes,
            )
        };
        assert_eq!(same(k), same(u), "{what}: header elements");
        let facts = |r: &CallRecord| {
            (
                r.key_id.clone(),
                r.key_name.clone(),
                r.model.clone(),
                r.upstream_model.clone(),
                r.provider.clone(),
                r.provider_kind.clone(),
                r.upstream_status,
                r.stream,
                (r.input_tokens, r.output_tokens),
                r.error.clone(),
                r.first_chunk_ms.is_some(),
            )
        };
        assert_eq!(facts(k), facts(u), "{what}: gateway facts");
        // Headers: the same names and values, but for the port in Host.
        let headers = |r: &CallRecord, gw: &TestGateway| {
            let mut h: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.replace(&gw.addr.to_string(), "GATEWAY")))
                .collect();
            h.sort();
            h
        };
        assert_eq!(headers(k, &kernel), headers(u, &user), "{what}: headers");
        let credentials = |r: &CallRecord| {
            let mut c: Vec<(String, String)> = r
                .credentials
                .iter()
                .map(|c| (c.header.clone(), c.scheme.clone()))
                .collect();
            c.sort();
            c
        };
        assert_eq!(credentials(k), credentials(u), "{what}: credentials");
        // Where the two differ by definition: the kernel counts the bytes
        // written on the wire (head and chunk framing included), the
        // gateway the body it relayed; timings are taken at different points.
        assert_eq!(k.response_bytes, Some(k_reply.wire_bytes), "{what}");
        assert_eq!(u.response_bytes, Some(u_reply.body.len() as u64), "{what}");
        assert!(k.duration_ms.is_some() && u.duration_ms.is_some(), "{what}");
        assert!(k.response_start_ms.is_some() && u.response_start_ms.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_and_garbage_are_flagged() {
    if !ebpf_tests_run("vanished_clients_and_garbage_are_flagged") {
        return;
    }
    let mut gw = start_ebpf().await;
    let half = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nx-request-id: vanish-fin\r\n\
         authorization: Bearer apx-half-sent-secret",
        gw.addr
    );
    // Half a header block, then FIN.
    let mut fin = TcpStream::connect(gw.addr).await.unwrap();
    let fin_port = fin.local_addr().unwrap().port();
    fin.write_all(half.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    fin.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), fin.read_to_end(&mut rest)).await;
    drop(fin);
    // The same, then RST.
    let rst = TcpStream::connect(gw.addr).await.unwrap();
    let rst_port = rst.local_addr().unwrap().port();
    let mut rst = rst;
    rst.write_all(half.replace("vanish-fin", "vanish-rst").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    rst.set_zero_linger().unwrap();
    drop(rst);
    // Not HTTP at all: a TLS ClientHello's first bytes, then noise.
    let mut garbage = TcpStream::connect(gw.addr).await.unwrap();
    let garbage_port = garbage.local_addr().unwrap().port();
    let mut noise = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    noise.extend((0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(11)));
    garbage.write_all(&noise).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut answer)).await;
    drop(garbage);
    // The gateway still serves.
    let (after, expect) = mixed_calls("after").swap_remove(2);
    let reply = call(&mut gw, &after).await;
    check_reply(&reply, &expect, "after");

    // Kernel-only records are written once the join window is over.
    let records = wait_records(&gw, 4, JOIN_WINDOW + Duration::from_secs(3)).await;
    assert_eq!(records.len(), 4, "{records:#?}");
    let port = |p: u16| {
        records
            .iter()
            .find(|r| r.client_port == Some(p))
            .unwrap_or_else(|| panic!("no record from client port {p}: {records:#?}"))
    };
    for (p, id, why) in [
        (fin_port, "vanish-fin", "client closed early"),
        (rst_port, "vanish-rst", "read error"),
    ] {
        let r = port(p);
        assert_eq!(r.capture, Some(Capture::Ebpf));
        assert!(r.partial, "{id}: {r:#?}");
        for note in ["message incomplete", why, "seen by the kernel only"] {
            assert!(
                r.notes.iter().any(|n| n.starts_with(note)),
                "{id}: {note}: {r:#?}"
            );
        }
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(r.header("x-request-id"), Some(id));
        assert_eq!(r.server_port, Some(gw.addr.port()));
        assert_eq!(r.status, None, "{id}: no response");
        assert_eq!(r.key_name, None);
        let credential = &r.credentials[0];
        assert_eq!(
            (credential.header.as_str(), credential.scheme.as_str()),
            ("authorization", "bearer")
        );
        assert_eq!(
            credential.fingerprint,
            fingerprint(&gw, "apx-half-sent-secret")
        );
    }
    let g = port(garbage_port);
    assert!(g.partial, "{g:#?}");
    assert!(g.notes.iter().any(|n| n == "not HTTP/1.x"), "{g:#?}");
    assert_eq!(g.method, "");
    // hyper answers a request it cannot parse with 400.
    if !answer.is_empty() {
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
        assert_eq!(g.status, Some(400));
    }
    let ok = port(reply.client_port);
    assert!(!ok.partial && ok.notes.is_empty(), "{ok:#?}");
    check_header_elements(&gw, ok, &after, &reply, "after");
    check_facts(ok, &expect, "after");
    assert_no_secret(&gw.state_dir, &["apx-half-sent-secret", CLIENT_KEY]);
}

/// The gateway attaches the socket hook layer where the kernel has it; the
/// syscall layer (older kernels) must give the same records: the main
/// record test again, in a child process with the layer forced.
#[test]
fn syscall_hook_layer_gives_the_same_records() {
    if !ebpf_tests_run("syscall_hook_layer_gives_the_same_records") {
        return;
    }
    let text = run_child(
        "every_call_gives_one_complete_kernel_record",
        &[(apx_gateway::logging::ebpf::HOOKS_ENV, "syscalls")],
    );
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

/// Runs one test of this binary in a child process with `env` set, and
/// returns its output; panics if it failed.
fn run_child(test: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    text
}

/// A 4 KiB ring buffer that wakes the collector only when full holds
/// about three of this test's exchange records (each call fills eight
/// capture slots with long values: ≈ 1.3 KiB packed), so bursts of
/// concurrent calls lose records. Every loss is counted, and every call
/// still has its record, marked partial where the kernel half was lost.
/// Runs in a child process: the ring size comes from the environment.
#[test]
fn ring_buffer_drops_are_counted() {
    if std::env::var_os(CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        return runtime.block_on(tiny_ring_child());
    }
    if !ebpf_tests_run("ring_buffer_drops_are_counted") {
        return;
    }
    let text = run_child(
        "ring_buffer_drops_are_counted",
        &[
            (CHILD, "1"),
            (apx_gateway::logging::ebpf::RING_BYTES_ENV, "4096"),
            // No early wake-up: the collector drains on its 50 ms timer,
            // and each burst of calls overflows the ring.
            (apx_gateway::logging::ebpf::WAKEUP_BYTES_ENV, "4096"),
        ],
    );
    let summary = text
        .lines()
        .find_map(|l| l.find("tiny ring:").map(|at| &l[at..]));
    println!("{}", summary.expect("the child ran the test"));
}

async fn tiny_ring_child() {
    const CALLS: usize = 48;
    const AT_ONCE: usize = 24;
    let mut gw = start_ebpf().await;
    let body = openai_body("gpt-test", false);
    for round in 0..CALLS / AT_ONCE {
        let tasks: Vec<_> = (0..AT_ONCE)
            .map(|i| {
                let call_ = Call::post(
                    "/v1/chat/completions",
                    body.clone(),
                    &format!("ring-{}", round * AT_ONCE + i),
                )
                .header("authorization", &format!("Bearer {CLIENT_KEY}"));
                // Long values in every capture slot that takes one: big
                // records (≈ 1.3 KiB), so that the tiny ring overflows
                // whatever the collector's timing.
                let long = "v".repeat(apx_capture::common::VALUE_CAP);
                let call_ = apx_capture::common::FIELD_NAMES
                    .iter()
                    .filter(|name| !matches!(**name, "host" | "content-type" | "content-length"))
                    .fold(call_, |call_, name| call_.header(name, &long));
                let addr = gw.addr;
                tokio::spawn(async move { exchange(addr, &call_.bytes(addr)).await })
            })
            .collect();
        for task in tasks {
            match task.await.unwrap() {
                Ok(reply) => assert_eq!(reply.status, 200),
                Err(err) => panic!("{err}; gateway: {}", gateway_failure(&mut gw).await),
            }
        }
    }
    // The readiness call's connection counts too: an exchange record
    // (request and response together) and a close record for each
    // connection.
    let expected_records = 2 * (CALLS as u64 + 1);
    let deadline = Instant::now() + JOIN_WINDOW + Duration::from_secs(6);
    let (records, delivered, dropped) = loop {
        let records = wait_records(&gw, 0, Duration::ZERO).await;
        let delivered = counter(&gw, "kernel.records").unwrap_or(0);
        let dropped = counter(&gw, "kernel.ringbuf_drops").unwrap_or(0);
        let gateway_halves = records.iter().filter(|r| r.key_name.is_some()).count();
        let settled = gateway_halves == CALLS && delivered + dropped == expected_records;
        if settled || Instant::now() >= deadline {
            break (records, delivered, dropped);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let calls: Vec<&CallRecord> = records.iter().filter(|r| r.key_name.is_some()).collect();
    let joined = calls.iter().filter(|r| r.method == "POST").count();
    let no_kernel = calls
        .iter()
        .filter(|r| {
            r.notes
                .iter()
                .any(|n| n.starts_with("no kernel record arrived"))
        })
        .count();
    let kernel_only = records.iter().filter(|r| r.key_name.is_none()).count();
    println!(
        "tiny ring: {CALLS} calls, {} rows: {joined} joined with a kernel record, \
         {no_kernel} without (partial), {kernel_only} kernel-only; \
         kernel records delivered {delivered} + dropped {dropped} = {} (expected {expected_records})",
        records.len(),
        delivered + dropped,
    );
    // Nothing is lost silently: each record the kernel made was delivered
    // or counted as dropped.
    assert_eq!(delivered + dropped, expected_records);
    assert!(dropped > 0, "the tiny ring buffer dropped nothing");
    // Each call has exactly one record carrying the gateway's facts: joined
    // with its kernel half, or marked partial because that half was lost.
    assert_eq!(calls.len(), CALLS);
    assert_eq!(joined + no_kernel, CALLS);
    for record in calls.iter().filter(|r| r.method.is_empty()) {
        assert!(record.partial, "{record:#?}");
    }
    // Each call without its kernel record cost at least one counted drop.
    assert!(no_kernel as u64 <= dropped);
    assert!(kernel_only as u64 <= dropped);
}

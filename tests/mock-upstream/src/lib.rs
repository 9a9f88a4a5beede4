//! A fake OpenAI + Anthropic upstream that speaks the real wire formats.
//!
//! It is used by the gateway's Rust integration tests (in-process, through
//! [`MockUpstream::start`]), by the Python SDK tests and by the benchmark
//! (through the `apx-mock-upstream` binary).
//!
//! Every reply is deterministic: the assistant says
//! `Hello from <model>! You said: <text of the last user message>`, token
//! counts are whitespace-separated word counts, and the `x-mock-scenario`
//! request header selects failure modes (error statuses, slow or stalled
//! streams, dropped connections, compression, long replies). See
//! [`MockUpstream`] for the endpoint and scenario lists.

mod anthropic;
mod body;
mod control;
mod ids;
mod openai;
mod reply;
mod scenario;
mod server;
mod text;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Serialize, Serializer};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Credentials the mock accepts.
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Expected `Authorization: Bearer <openai_key>` on OpenAI endpoints.
    pub openai_key: String,
    /// Expected `x-api-key: <anthropic_key>` on Anthropic endpoints.
    pub anthropic_key: String,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            openai_key: "sk-upstream-openai-test".to_owned(),
            anthropic_key: "sk-ant-upstream-test".to_owned(),
        }
    }
}

/// One request as the mock received it (control calls under `/_mock/` are
/// not recorded).
#[derive(Clone, Debug, Serialize)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path plus `?query` when there is one.
    pub path: String,
    /// Lower-case header names, in received order, duplicates kept.
    pub headers: Vec<(String, String)>,
    /// The raw request body (serialized as a lossy UTF-8 string).
    #[serde(serialize_with = "serialize_lossy")]
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

fn serialize_lossy<S: Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}

/// Counters the tests read through [`MockUpstream::stats`] or `GET /_mock/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MockStats {
    /// Streaming responses whose last event was handed to the connection.
    pub completed_streams: u64,
    /// Streaming responses dropped (client went away) before the last event
    /// was sent. `drop-after` aborts do not count.
    pub cancelled_streams: u64,
    /// TCP connections open right now.
    pub open_connections: u64,
}

/// State shared by the server tasks and the [`MockUpstream`] handle.
pub(crate) struct Shared {
    pub(crate) openai_key: String,
    pub(crate) anthropic_key: String,
    records: Mutex<Vec<RecordedRequest>>,
    recording: AtomicBool,
    pub(crate) completed_streams: AtomicU64,
    pub(crate) cancelled_streams: AtomicU64,
    pub(crate) open_connections: AtomicU64,
}

impl Shared {
    fn new(opts: MockOptions) -> Shared {
        Shared {
            openai_key: opts.openai_key,
            anthropic_key: opts.anthropic_key,
            records: Mutex::new(Vec::new()),
            recording: AtomicBool::new(true),
            completed_streams: AtomicU64::new(0),
            cancelled_streams: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
        }
    }

    fn records(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        // A panic while holding this lock cannot leave the Vec inconsistent
        // (we only push or clone), so a poisoned lock is still usable.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn record(&self, req: RecordedRequest) {
        if self.recording.load(Ordering::Relaxed) {
            self.records().push(req);
        }
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.records().clone()
    }

    pub(crate) fn reset(&self) {
        self.records().clear();
        self.completed_streams.store(0, Ordering::Relaxed);
        self.cancelled_streams.store(0, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> MockStats {
        MockStats {
            completed_streams: self.completed_streams.load(Ordering::SeqCst),
            cancelled_streams: self.cancelled_streams.load(Ordering::SeqCst),
            open_connections: self.open_connections.load(Ordering::SeqCst),
        }
    }
}

/// A running mock upstream. Dropping it stops the listener and closes every
/// connection it serves.
///
/// Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`,
/// `POST /v1/embeddings`, `POST /v1/responses`, `GET /v1/models` (OpenAI
/// shape, or Anthropic shape when the request carries `anthropic-version`),
/// `POST /v1/messages`, `POST /v1/messages/count_tokens`; control endpoints
/// `GET /_mock/requests`, `POST /_mock/reset`, `GET /_mock/stats`.
///
/// Scenarios (request header `x-mock-scenario`, comma-separated):
/// `status:<code>`, `html-error:<code>`, `slow-first-byte:<ms>`,
/// `chunk-delay:<ms>`, `stall-after:<n>`, `drop-after:<n>`, `empty-stream`,
/// `gzip`, `br`, `words:<n>`. Unknown entries get a 400.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    // Dropping the sender tells the accept loop and every connection to stop.
    _shutdown: watch::Sender<()>,
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` with the default keys and serves on the current
    /// tokio runtime.
    pub async fn start() -> std::io::Result<MockUpstream> {
        Self::start_with(MockOptions::default()).await
    }

    /// Binds `127.0.0.1:0` with the given keys and serves on the current
    /// tokio runtime.
    pub async fn start_with(opts: MockOptions) -> std::io::Result<MockUpstream> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Binds `addr` and serves on the current tokio runtime.
    pub async fn bind(addr: SocketAddr, opts: MockOptions) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(opts));
        let (tx, rx) = watch::channel(());
        tokio::spawn(server::serve(listener, shared.clone(), rx));
        Ok(MockUpstream {
            addr,
            shared,
            _shutdown: tx,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, what the OpenAI SDKs take as base URL.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`, what the Anthropic SDKs take as base URL.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Forgets the recorded requests and zeroes the stream counters.
    pub fn clear(&self) {
        self.shared.reset();
    }

    /// Current counters.
    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Turns request recording on or off (on by default). Benchmarks turn it
    /// off so memory stays flat.
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

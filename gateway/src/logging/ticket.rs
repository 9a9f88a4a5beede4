//! The per-request half of logging: a ticket opened when a request arrives,
//! filled as the gateway learns things, and sent to the collector when the
//! response body is done (or dropped because the client left).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, header};

use super::collector::{JoinKey, LogSink};
pub use super::record::GatewayFacts;
use super::record::{CallEntry, Capture};
use super::usage::{TapMode, UsageTap};

/// Where a request came from, for joining with kernel records.
#[derive(Clone, Copy, Debug)]
pub struct ConnContext {
    pub peer: SocketAddr,
    pub local_port: u16,
    /// Number of this request on its connection, from 0.
    pub seq: u32,
}

pub struct LogTicket {
    sink: LogSink,
    started: Instant,
    /// Boxed from the start and sent as is: a call entry is ~0.5 KB, and
    /// moving it between stack, ticket and channel showed in profiles.
    /// `None` only once sent.
    record: Option<Box<CallEntry>>,
    join: Option<JoinKey>,
    tap: UsageTap,
    first_chunk: Option<Duration>,
    response_start: Option<Duration>,
    response_bytes: u64,
    completed: bool,
}

impl LogTicket {
    pub(super) fn new(
        sink: LogSink,
        capture: Capture,
        mut record: Box<CallEntry>,
        join: Option<JoinKey>,
        started: Instant,
    ) -> LogTicket {
        record.capture = Some(capture);
        LogTicket {
            sink,
            started,
            record: Some(record),
            join,
            tap: UsageTap::new(TapMode::Off),
            first_chunk: None,
            response_start: None,
            response_bytes: 0,
            completed: false,
        }
    }

    /// Takes in what the proxy learned.
    pub fn absorb(&mut self, facts: GatewayFacts) {
        if let Some(record) = self.record.as_deref_mut() {
            record.facts = facts;
        }
    }

    /// The response head is ready to go: note the status and decide whether
    /// the body can be read for token usage.
    pub fn on_response_head(&mut self, status: u16, headers: &HeaderMap) {
        let Some(record) = self.record.as_deref_mut() else {
            return;
        };
        record.status = Some(status);
        self.response_start = Some(self.started.elapsed());
        let plain = headers
            .get(header::CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let mode = if !plain || record.facts.upstream_status.is_none() {
            TapMode::Off
        } else if content_type.starts_with(b"text/event-stream") {
            TapMode::Sse
        } else if content_type.starts_with(b"application/json") {
            TapMode::Json
        } else {
            TapMode::Off
        };
        self.tap = UsageTap::new(mode);
    }

    pub fn on_data(&mut self, data: &bytes::Bytes) {
        if self.first_chunk.is_none() {
            self.first_chunk = Some(self.started.elapsed());
        }
        self.response_bytes += data.len() as u64;
        self.tap.observe(data);
    }

    pub fn on_end(&mut self) {
        self.completed = true;
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Drop for LogTicket {
    fn drop(&mut self) {
        self.tap.finish();
        let Some(mut record) = self.record.take() else {
            return;
        };
        record.duration_ns = Some(nanos(self.started.elapsed()));
        record.response_start_ns = self.response_start.map(nanos);
        record.first_chunk_ns = self
            .first_chunk
            .filter(|_| record.facts.upstream_status.is_some())
            .map(nanos);
        record.response_bytes = Some(self.response_bytes);
        record.input_tokens = self.tap.input_tokens;
        record.output_tokens = self.tap.output_tokens;
        if !self.completed {
            record.partial = true;
            record
                .notes
                .push("response not completed: the client went away or the upstream failed".into());
        }
        self.sink.send_call(record, self.join);
    }
}

/// Wall clock for the ticket's start, in ns since the Unix epoch.
pub(super) fn now_unix_ns() -> i64 {
    crate::time::unix_nanos(SystemTime::now())
}

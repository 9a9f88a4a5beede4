//! The per-request half of logging: a ticket opened when a request arrives,
//! filled as the gateway learns things, and sent to the collector when the
//! response body is done (or dropped because the client left).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, header};

use super::collector::{JoinKey, LogSink};
pub use super::record::GatewayFacts;
use super::record::{CallEntry, Capture, GatewayHalf};
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
    /// What the gateway learns, filled as the call goes.
    half: GatewayHalf,
    /// Where the half goes when the call is done; `None` once sent.
    target: Option<JoinTarget>,
    tap: UsageTap,
    completed: bool,
}

/// What a call's gateway half is joined with.
enum JoinTarget {
    /// The kernel's record of the call, found by its key in the collector.
    Kernel(JoinKey),
    /// The header elements captured in user space, boxed from the start:
    /// an entry is ~0.4 KB, and moving it between stack, ticket and
    /// channel showed in profiles.
    Userspace(Box<CallEntry>),
}

impl LogTicket {
    /// A ticket for a call captured in the kernel, joined by `join`.
    pub(super) fn kernel(sink: LogSink, join: JoinKey, started: Instant) -> LogTicket {
        LogTicket::with_target(sink, JoinTarget::Kernel(join), started)
    }

    /// A ticket for a call whose header elements `entry` holds.
    pub(super) fn userspace(
        sink: LogSink,
        mut entry: Box<CallEntry>,
        started: Instant,
    ) -> LogTicket {
        entry.capture = Some(Capture::Userspace);
        LogTicket::with_target(sink, JoinTarget::Userspace(entry), started)
    }

    fn with_target(sink: LogSink, target: JoinTarget, started: Instant) -> LogTicket {
        LogTicket {
            sink,
            half: GatewayHalf::new(started),
            target: Some(target),
            tap: UsageTap::new(TapMode::Off),
            completed: false,
        }
    }

    /// Takes in what the proxy learned.
    pub fn absorb(&mut self, facts: GatewayFacts) {
        self.half.facts = facts;
    }

    /// The response head is ready to go: note the status and decide whether
    /// the body can be read for token usage.
    pub fn on_response_head(&mut self, status: u16, headers: &HeaderMap) {
        let half = &mut self.half;
        half.status = Some(status);
        half.timings.response_start_ns = Some(nanos(half.timings.started.elapsed()));
        let plain = headers
            .get(header::CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let mode = if !plain || half.facts.upstream_status.is_none() {
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
        let half = &mut self.half;
        // Only an upstream's body has a first chunk worth timing.
        if half.first_chunk_ns.is_none() && half.facts.upstream_status.is_some() {
            half.first_chunk_ns = Some(nanos(half.timings.started.elapsed()));
        }
        half.timings.response_bytes += data.len() as u64;
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
        let Some(target) = self.target.take() else {
            return;
        };
        let mut half = self.half;
        half.timings.duration_ns = Some(nanos(half.timings.started.elapsed()));
        half.input_tokens = self.tap.input_tokens;
        half.output_tokens = self.tap.output_tokens;
        half.incomplete = !self.completed;
        match target {
            JoinTarget::Kernel(join) => self.sink.send_half(join, half),
            JoinTarget::Userspace(mut entry) => {
                entry.absorb_gateway_half_timed(&half);
                self.sink.send_call(entry);
            }
        }
    }
}

/// Wall clock for the ticket's start, in ns since the Unix epoch.
pub(super) fn now_unix_ns() -> i64 {
    crate::time::unix_nanos(SystemTime::now())
}

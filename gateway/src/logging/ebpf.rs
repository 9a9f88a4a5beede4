//! eBPF capture: loads the kernel programs (embedded in the binary), points
//! them at this process's listening socket, and turns the records they send
//! through the ring buffer into the header half of each call record. A
//! thread drains the ring buffer every `POLL_EVERY`; the programs wake it
//! early when a lot is pending. Kernel timestamps (CLOCK_MONOTONIC) are
//! turned into wall-clock time with an offset measured at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use apx_capture::common::{self as common, RequestRecord, ResponseRecord};
use apx_capture::{Capture, Exchange, Joiner};

use super::capture::scheme_name;
use super::collector::{Event, JoinKey, KernelCall, LogSink};
use super::fingerprint::FingerprintKey;
use super::record::{CallRecord, Capture as CaptureKind, CredentialSeen};

const POLL_EVERY: Duration = Duration::from_millis(50);
/// Kernel half-exchanges waiting for their other half at most: the programs
/// track 2048 connections and HTTP/1.1 answers one request at a time, so
/// beyond this the oldest belong to connections whose close record was lost
/// (ring buffer full) and are dropped, counted in `kernel.unjoined_evicted`.
const MAX_PENDING: usize = 8192;
const COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// Ring buffer size in bytes, instead of the programs' 2 MiB: a power of two,
/// at least one page. For tests (a tiny ring to provoke drops) and tuning;
/// the config has no setting for it.
pub const RING_BYTES_ENV: &str = "APX_EBPF_RING_BYTES";

/// What the kernel side needs to know about this process.
pub struct EbpfSettings {
    pub listener_fd: u32,
    pub listener_port: u16,
    pub fingerprint_key: FingerprintKey,
    pub extra_headers: Vec<String>,
}

/// A running capture; dropping it detaches the programs.
pub struct EbpfCapture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub load_time: Duration,
}

impl EbpfCapture {
    /// Loads and attaches the programs, then starts the drain thread.
    pub fn start(settings: &EbpfSettings, sink: LogSink) -> Result<EbpfCapture, String> {
        let config = apx_capture::Config {
            fingerprint_key: settings.fingerprint_key.bytes(),
            extra_headers: settings.extra_headers.clone(),
            listeners: vec![(settings.listener_fd, settings.listener_port)],
            // Only the gateway's own listener: not the built-in echo
            // provider's, not upstream connections.
            require_listener: true,
            ringbuf_bytes: ring_bytes_from_env()?,
            ..apx_capture::Config::for_pid(std::process::id())
        };
        let capture = Capture::start(&config).map_err(|err| err.0)?;
        let load_time = capture.attach_time;
        let stop = Arc::new(AtomicBool::new(false));
        let names = slot_names(&settings.extra_headers);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("apx-ebpf-drain".into())
                .spawn(move || drain(capture, sink, names, stop))
                .map_err(|err| format!("cannot start the drain thread: {err}"))?
        };
        Ok(EbpfCapture {
            stop,
            thread: Some(thread),
            load_time,
        })
    }

    /// Drains what is left and stops the thread (the programs detach).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EbpfCapture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The ring buffer size asked for in `RING_BYTES_ENV`, if any.
fn ring_bytes_from_env() -> Result<Option<u32>, String> {
    let Ok(text) = std::env::var(RING_BYTES_ENV) else {
        return Ok(None);
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u32::try_from(page).unwrap_or(4096);
    match text.trim().parse::<u32>() {
        Ok(bytes) if bytes.is_power_of_two() && bytes >= page => Ok(Some(bytes)),
        _ => Err(format!(
            "{RING_BYTES_ENV}={text}: wants a power of two of at least {page} bytes"
        )),
    }
}

/// Header names of the capture slots, in slot order.
fn slot_names(extra: &[String]) -> Vec<String> {
    common::FIELD_NAMES
        .iter()
        .map(|n| n.to_string())
        .chain(extra.iter().map(|n| n.to_ascii_lowercase()))
        .collect()
}

fn drain(mut capture: Capture, sink: LogSink, names: Vec<String>, stop: Arc<AtomicBool>) {
    let clock = WallClock::measure();
    let mut joiner = Joiner::new();
    let mut last_counters = Instant::now();
    let mut evicted = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let delivered = capture.poll(|record| {
            for exchange in joiner.push(record) {
                sink.send(Event::Kernel(Box::new(to_call(&exchange, &names, &clock))));
            }
        });
        evicted += joiner.evict_over(MAX_PENDING) as u64;
        // The collector stores the counters with each batch it writes: send
        // them after every delivery, so the stored values account for at
        // least the records stored with them.
        if delivered > 0 || stopping || last_counters.elapsed() >= COUNTERS_EVERY {
            last_counters = Instant::now();
            if let Ok(stats) = capture.stats() {
                sink.send(Event::KernelCounters(vec![
                    ("kernel.ringbuf_drops".into(), stats.ringbuf_drops),
                    ("kernel.conn_map_full".into(), stats.conn_map_full),
                    ("kernel.args_map_full".into(), stats.args_map_full),
                    ("kernel.records".into(), stats.records),
                    ("kernel.unjoined_evicted".into(), evicted),
                ]));
            }
        }
        if stopping {
            return;
        }
        wait_readable(capture.ring_fd(), POLL_EVERY);
    }
}

/// Sleeps until the ring buffer has data or `timeout` passes.
fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(100);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut pollfd, 1, millis);
    }
}

/// Converts CLOCK_MONOTONIC nanoseconds (the kernel's `bpf_ktime_get_ns`)
/// to nanoseconds since the Unix epoch.
struct WallClock {
    offset_ns: i64,
}

impl WallClock {
    fn measure() -> WallClock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        }
        let monotonic = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
        let wall = crate::time::unix_nanos(std::time::SystemTime::now());
        WallClock {
            offset_ns: wall - monotonic,
        }
    }

    fn wall(&self, monotonic_ns: u64) -> i64 {
        i64::try_from(monotonic_ns)
            .unwrap_or(i64::MAX)
            .saturating_add(self.offset_ns)
    }
}

fn ms_between(from: u64, to: u64) -> Option<f64> {
    (from != 0 && to >= from).then(|| (to - from) as f64 / 1e6)
}

/// Flag bits worth a note in the record.
const FLAG_NOTES: [(u32, &str); 12] = [
    (common::F_PARTIAL, "message incomplete"),
    (common::F_PATH_TRUNC, "path truncated"),
    (common::F_VALUE_TRUNC, "a header value was truncated"),
    (common::F_MALFORMED, "malformed HTTP"),
    (common::F_NOT_HTTP, "not HTTP/1.x"),
    (common::F_PEER_EOF, "client closed early"),
    (
        common::F_BUDGET,
        "the kernel parser ran out of its per-syscall budget and stopped",
    ),
    (common::F_ADDR_UNKNOWN, "peer address unknown"),
    (common::F_UPGRADE, "protocol upgrade"),
    (common::F_H2, "HTTP/2"),
    (common::F_READ_ERROR, "read error"),
    (common::F_DUP_HEADER, "a captured header appeared twice"),
];

const INCOMPLETE: u32 = common::F_PARTIAL
    | common::F_MALFORMED
    | common::F_NOT_HTTP
    | common::F_BUDGET
    | common::F_READ_ERROR;

fn to_call(exchange: &Exchange, names: &[String], clock: &WallClock) -> KernelCall {
    let mut record = CallRecord {
        capture: Some(CaptureKind::Ebpf),
        ..CallRecord::default()
    };
    let mut flags = 0;
    let mut key = None;
    if let Some(request) = exchange.request.as_deref() {
        flags |= request.hdr.flags;
        fill_request(&mut record, request, names, clock);
        key = record.client_address.as_ref().and_then(|_| {
            let ip = request.conn.peer_ip()?;
            Some(JoinKey {
                peer_ip: ip.to_canonical(),
                peer_port: request.conn.peer_port,
                seq: request.hdr.seq,
            })
        });
    } else {
        record.notes.push(
            "the request was not captured (connection opened before capture started?)".into(),
        );
        record.partial = true;
    }
    if let Some(response) = &exchange.response {
        flags |= response.hdr.flags;
        fill_response(&mut record, response, exchange.request.as_deref(), clock);
    } else {
        record.partial = true;
        record.notes.push("no response was sent".into());
    }
    if exchange.close.is_some() && exchange.response.is_none() {
        record.notes.push("connection closed".into());
    }
    for (bit, note) in FLAG_NOTES {
        if flags & bit != 0 {
            record.notes.push(note.into());
        }
    }
    record.partial |= flags & INCOMPLETE != 0;
    KernelCall { key, record }
}

fn fill_request(
    record: &mut CallRecord,
    request: &RequestRecord,
    names: &[String],
    clock: &WallClock,
) {
    record.time_unix_ns = clock.wall(request.ts_first_ns);
    if let Some(ip) = request.conn.peer_ip() {
        record.client_address = Some(ip.to_canonical().to_string());
        record.client_port = Some(request.conn.peer_port);
    }
    record.server_port = (request.conn.local_port != 0).then_some(request.conn.local_port);
    record.method = request.method();
    record.path = request.path();
    record.http_version = request.version();
    for (slot, name) in names.iter().enumerate() {
        if let Some(value) = request.field(slot) {
            record.headers.push((name.clone(), value));
        }
    }
    for (slot, credential) in request.creds.iter().enumerate() {
        if credential.count > 0 {
            record.credentials.push(CredentialSeen {
                header: common::CRED_NAMES[slot].to_string(),
                scheme: scheme_name(credential.scheme).to_string(),
                fingerprint: apx_capture::common::user::fp_hex(credential.fp),
            });
        }
    }
    record.request_bytes = Some(
        request
            .bytes
            .saturating_sub(u64::from(request.header_bytes)),
    );
}

fn fill_response(
    record: &mut CallRecord,
    response: &ResponseRecord,
    request: Option<&RequestRecord>,
    clock: &WallClock,
) {
    record.status = (response.status != 0).then_some(response.status);
    record.response_bytes = Some(response.bytes);
    match request {
        Some(request) => {
            record.duration_ms = ms_between(request.ts_first_ns, response.ts_end_ns);
            record.response_start_ms = ms_between(request.ts_first_ns, response.ts_first_ns);
        }
        None => record.time_unix_ns = clock.wall(response.ts_first_ns),
    }
}

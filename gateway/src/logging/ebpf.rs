//! eBPF capture: loads the kernel programs (embedded in the binary), points
//! them at this process's listening socket, and turns the records they send
//! through the ring buffer into the header half of each call. The collector
//! thread drains the ring buffer (see `collector::KernelFeed`) every batch
//! period; the programs make it readable early when a lot is pending.
//! Kernel timestamps (CLOCK_MONOTONIC) are turned into wall-clock time with
//! an offset measured at start.

use std::borrow::Cow;
use std::time::Duration;

use apx_capture::common::{self as common, RequestRecord, ResponseRecord};
use apx_capture::{Capture, Exchange, HookLayer, Joiner};

use super::capture::scheme_name;
use super::collector::{JoinKey, KernelFeed};
use super::fingerprint::FingerprintKey;
use super::record::{self, CallEntry, Capture as CaptureKind, CredentialEntry, SmallText};
use crate::intern::intern;

/// Kernel half-exchanges waiting for their other half at most. The join
/// rarely holds any: the kernel sends a request alone only when it is
/// pipelined, cut short or unanswered at close (a request waiting for a
/// slow upstream stays in the kernel). Beyond this the oldest are taken to
/// belong to connections whose close record was lost (ring buffer full)
/// and are dropped, counted in `kernel.unjoined_evicted`. (Until session 6
/// the bound followed the 2 048 connections the programs tracked; the
/// socket layer now tracks up to 65 536, and this bound stayed.)
const MAX_PENDING: usize = 8192;
/// Ring buffer size in bytes, instead of the programs' 1 MiB: a power of two,
/// at least one page. For tests (a tiny ring to provoke drops) and tuning;
/// the config has no setting for it.
pub const RING_BYTES_ENV: &str = "APX_EBPF_RING_BYTES";
/// Pending bytes at which the programs wake the collector, instead of a
/// quarter of the ring. For tests (at the ring's size the collector drains
/// only on its timer, so a burst overflows a tiny ring whatever the thread
/// timing) and tuning; the config has no setting for it.
pub const WAKEUP_BYTES_ENV: &str = "APX_EBPF_WAKEUP_BYTES";
/// Which kernel hooks to attach: `auto` (default: socket tracepoints where
/// the kernel has them, else syscall tracepoints), `sockets` or
/// `syscalls`. For tests (each layer end to end) and for falling back by
/// hand; the config has no setting for it.
pub const HOOKS_ENV: &str = "APX_EBPF_HOOKS";
/// The programs' own ring buffer size (`EVENTS` in the kernel crate).
const DEFAULT_RING_BYTES: u32 = 1024 * 1024;

/// Oldest kernel the programs load on: they parse with `bpf_loop` (5.17)
/// and read syscall arguments with `bpf_task_pt_regs` (5.15) from
/// `bpf_get_current_task_btf` (5.11); ring buffers and CAP_BPF are 5.8.
pub const MIN_KERNEL: (u32, u32) = (5, 17);

/// `major.minor` of a kernel release string (`6.1.0-18-amd64` → (6, 1)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given; its fields are
    // NUL-terminated C strings within the struct.
    unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(uts.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// Why the programs cannot load on this kernel, when its version says so
/// (a clearer reason than the verifier's "unknown function").
fn kernel_too_old() -> Option<String> {
    let release = kernel_release();
    match kernel_version(&release) {
        Some(version) if version < MIN_KERNEL => Some(format!(
            "kernel {release} is older than {}.{} (the capture programs need bpf_loop)",
            MIN_KERNEL.0, MIN_KERNEL.1
        )),
        _ => None,
    }
}

/// What the kernel side needs to know about this process.
pub struct EbpfSettings {
    pub listener_fd: u32,
    pub listener_port: u16,
    pub fingerprint_key: FingerprintKey,
    pub extra_headers: Vec<String>,
}

/// Loaded and attached programs with their ring buffer; dropping it
/// detaches the programs.
pub struct EbpfCapture {
    capture: Capture,
    joiner: Joiner,
    /// Header name of each capture slot, shared by every record.
    names: Vec<&'static str>,
    clock: WallClock,
    evicted: u64,
    pub load_time: Duration,
    /// The programs were loaded by a loader process (see `ebpf_loader`).
    pub loaded_by_helper: bool,
}

impl EbpfCapture {
    /// Loads and attaches the programs: in a loader process when the
    /// binary registered one (its memory for the kernel's BTF is then not
    /// this process's), else here.
    pub fn start(settings: &EbpfSettings) -> Result<EbpfCapture, String> {
        if let Some(reason) = kernel_too_old() {
            return Err(reason);
        }
        let (capture, loaded_by_helper) = match super::ebpf_loader::load(settings) {
            Some(Ok(capture)) => (capture, true),
            Some(Err(super::ebpf_loader::LoaderError::Refused(reason))) => return Err(reason),
            Some(Err(super::ebpf_loader::LoaderError::Unavailable(why))) => {
                tracing::warn!("the eBPF loader process did not answer ({why}); loading here");
                (load_here(settings)?, false)
            }
            None => (load_here(settings)?, false),
        };
        let load_time = capture.attach_time;
        Ok(EbpfCapture {
            capture,
            joiner: Joiner::new(),
            names: slot_names(&settings.extra_headers),
            clock: WallClock::measure(),
            evicted: 0,
            load_time,
            loaded_by_helper,
        })
    }
}

/// Loads and attaches the programs in this process.
fn load_here(settings: &EbpfSettings) -> Result<Capture, String> {
    Capture::start(&capture_config(settings, std::process::id())?).map_err(|err| err.0)
}

/// The loader's configuration for capturing process `tgid`'s connections.
pub(super) fn capture_config(
    settings: &EbpfSettings,
    tgid: u32,
) -> Result<apx_capture::Config, String> {
    let ring_bytes = ring_bytes_from_env()?;
    let layer = hooks_from_env()?;
    let config = apx_capture::Config {
        layer,
        fingerprint_key: settings.fingerprint_key.bytes(),
        extra_headers: settings.extra_headers.clone(),
        listeners: vec![(settings.listener_fd, settings.listener_port)],
        // Only the gateway's own listener: not the built-in echo
        // provider's, not upstream connections.
        require_listener: true,
        // tokio/mio move socket bytes with recvfrom/sendto/readv/writev
        // only; plain read/write in this process are eventfd wake-ups,
        // so their tracepoints would only cost.
        plain_read_write: false,
        ringbuf_bytes: ring_bytes,
        // The collector polls every batch period anyway; a wake-up is a
        // self-IPI (a VM exit under virtualisation), so the kernel wakes
        // it only when a quarter of the ring is pending: measured ~2–4
        // µs per request less than at 64 KiB, still leaving 3/4 of the
        // ring for the time the collector takes to come round.
        wakeup_bytes: Some(
            wakeup_bytes_from_env()?
                .unwrap_or(u64::from(ring_bytes.unwrap_or(DEFAULT_RING_BYTES)) / 4),
        ),
        ..apx_capture::Config::for_pid(tgid)
    };
    Ok(config)
}

impl EbpfCapture {
    /// The hooks that were attached.
    pub fn layer(&self) -> HookLayer {
        self.capture.layer()
    }
}

impl KernelFeed for EbpfCapture {
    fn wait_fd(&self) -> std::os::fd::RawFd {
        self.capture.ring_fd()
    }

    fn drain(&mut self, deliver: &mut dyn FnMut(CallEntry, Option<JoinKey>)) {
        let EbpfCapture {
            capture,
            joiner,
            names,
            clock,
            ..
        } = self;
        capture.poll_recycling(|record| {
            let mut done_with = None;
            joiner.push_each(record, |exchange| {
                if !is_http2(&exchange) {
                    let (entry, key) = to_entry(&exchange, names, clock);
                    deliver(entry, key);
                }
                // HTTP/2 calls are recorded from user space (see `Logging::begin`).
                done_with = exchange.request;
            });
            done_with
        });
        self.evicted += self.joiner.evict_over(MAX_PENDING) as u64;
    }

    fn counters(&mut self) -> Vec<(String, u64)> {
        let Ok(stats) = self.capture.stats() else {
            return Vec::new();
        };
        vec![
            ("kernel.ringbuf_drops".into(), stats.ringbuf_drops),
            ("kernel.conn_map_full".into(), stats.conn_map_full),
            ("kernel.args_map_full".into(), stats.args_map_full),
            ("kernel.records".into(), stats.records),
            ("kernel.unjoined_evicted".into(), self.evicted),
        ]
    }
}

/// The hook layer asked for in `HOOKS_ENV` (`Auto` when unset).
fn hooks_from_env() -> Result<HookLayer, String> {
    match std::env::var(HOOKS_ENV).as_deref() {
        Err(_) | Ok("auto") => Ok(HookLayer::Auto),
        Ok("sockets") => Ok(HookLayer::Sockets),
        Ok("syscalls") => Ok(HookLayer::Syscalls),
        Ok(other) => Err(format!(
            "{HOOKS_ENV}={other}: wants auto, sockets or syscalls"
        )),
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

/// The wake-up threshold asked for in `WAKEUP_BYTES_ENV`, if any.
fn wakeup_bytes_from_env() -> Result<Option<u64>, String> {
    let Ok(text) = std::env::var(WAKEUP_BYTES_ENV) else {
        return Ok(None);
    };
    match text.trim().parse::<u64>() {
        Ok(bytes) => Ok(Some(bytes)),
        Err(_) => Err(format!(
            "{WAKEUP_BYTES_ENV}={text}: wants a number of bytes"
        )),
    }
}

/// Header names of the capture slots, in slot order.
fn slot_names(extra: &[String]) -> Vec<&'static str> {
    common::FIELD_NAMES
        .iter()
        .copied()
        .chain(extra.iter().map(|n| intern(&n.to_ascii_lowercase())))
        .collect()
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

fn ns_between(from: u64, to: u64) -> Option<u64> {
    (from != 0 && to >= from).then(|| to - from)
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

/// The connection began with the HTTP/2 preface: the kernel parsed nothing.
fn is_http2(exchange: &Exchange) -> bool {
    let request = exchange.request.as_ref().map_or(0, |r| r.hdr.flags);
    let response = exchange.response.as_ref().map_or(0, |r| r.hdr.flags);
    (request | response) & common::F_H2 != 0
}

fn to_entry(
    exchange: &Exchange,
    names: &[&'static str],
    clock: &WallClock,
) -> (CallEntry, Option<JoinKey>) {
    let mut record = CallEntry {
        capture: Some(CaptureKind::Ebpf),
        ..CallEntry::default()
    };
    let mut flags = 0;
    let mut key = None;
    if let Some(request) = exchange.request.as_deref() {
        flags |= request.hdr.flags;
        fill_request(&mut record, request, names, clock);
        key = record.client.map(|(ip, port)| JoinKey {
            peer_ip: ip,
            peer_port: port,
            seq: request.hdr.seq,
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
            record.notes.push(Cow::Borrowed(note));
        }
    }
    record.partial |= flags & INCOMPLETE != 0;
    (record, key)
}

fn fill_request(
    record: &mut CallEntry,
    request: &RequestRecord,
    names: &[&'static str],
    clock: &WallClock,
) {
    record.time_unix_ns = clock.wall(request.ts_first_ns);
    if let Some(ip) = request.conn.peer_ip() {
        record.client = Some((ip.to_canonical(), request.conn.peer_port));
    }
    record.server_port = (request.conn.local_port != 0).then_some(request.conn.local_port);
    // The method and version from their bytes: `request.method()` and
    // `version()` would each allocate a String only to find a static name.
    record.method = record::method_name_bytes(request.method_bytes());
    // Text straight from the record's bytes: short paths and values stay
    // in place (`SmallText`), no allocation for them.
    record.path = SmallText::from_utf8_lossy(request.path_bytes());
    record.http_version = record::version_name_bytes(request.version_bytes());
    record
        .headers
        .reserve_exact(request.slot_mask.count_ones() as usize);
    for (slot, name) in names.iter().enumerate() {
        if let Some(value) = request.field_bytes(slot) {
            record
                .headers
                .push((name, SmallText::from_utf8_lossy(value)));
        }
    }
    for (slot, credential) in request.creds.iter().enumerate() {
        if credential.count > 0 {
            record.credentials.push(CredentialEntry {
                header: common::CRED_NAMES[slot],
                scheme: scheme_name(credential.scheme),
                fingerprint: credential.fp,
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
    record: &mut CallEntry,
    response: &ResponseRecord,
    request: Option<&RequestRecord>,
    clock: &WallClock,
) {
    record.status = (response.status != 0).then_some(response.status);
    record.response_bytes = Some(response.bytes);
    match request {
        Some(request) => {
            record.duration_ns = ns_between(request.ts_first_ns, response.ts_end_ns);
            record.response_start_ns = ns_between(request.ts_first_ns, response.ts_first_ns);
        }
        None => record.time_unix_ns = clock.wall(response.ts_first_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse_and_compare() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(Some((5, 15)) < Some(MIN_KERNEL));
        assert!(Some((6, 1)) >= Some(MIN_KERNEL));
        assert!(
            kernel_too_old().is_none(),
            "this test machine runs a recent kernel"
        );
    }
}

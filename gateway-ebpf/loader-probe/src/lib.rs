//! User side of apx-capture: load the prebuilt eBPF object, point it at a
//! process, attach one hook layer (socket tracepoints where the kernel has
//! them, else syscall tracepoints), drain the ring buffer.
//!
//! ```no_run
//! use apx_capture::{Capture, Config};
//! let mut cap = Capture::start(&Config::for_pid(std::process::id())).unwrap();
//! cap.poll(|rec| { /* Record::Exchange / Request / Response / Close */ let _ = rec; });
//! let s = cap.stats().unwrap(); // s.ringbuf_drops: records the kernel could not deliver
//! ```
//!
//! The gateway embeds this: `Config::for_pid(std::process::id())`, register its
//! listening sockets (`Config::listeners` or `Capture::register_listener`),
//! then wait on `Capture::ring_fd()` (e.g. tokio `AsyncFd`) and call `poll`.

pub mod handoff;

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};

pub use apx_capture_common as common;
pub use apx_capture_common::user::{Exchange, Joiner, Record};
use apx_capture_common::{name_hash, stats, RequestRecord, EXTRA_SLOTS};

/// The compiled programs, committed (see gateway-ebpf/build.sh, check.sh).
pub static PREBUILT: &[u8] = include_bytes!("../../prebuilt/apx-capture.bpf.o");

/// Where the kernel programs hook in (docs/ebpf-design.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookLayer {
    /// The socket layer where the kernel has it, else the syscall layer.
    Auto,
    /// `sock_recv_length` / `sock_send_length` (BTF tracepoints, Linux 6.4+)
    /// and `inet_sock_set_state`: no syscall tracepoint, so no task on the
    /// machine is put on the syscall tracing slow path. Needs the
    /// listening ports (`Config::listeners`).
    Sockets,
    /// Syscall tracepoints (accept, recvfrom/readv, sendto/writev, close…):
    /// any kernel the object loads on.
    Syscalls,
}

impl HookLayer {
    pub fn name(self) -> &'static str {
        match self {
            HookLayer::Auto => "auto",
            HookLayer::Sockets => "socket tracepoints",
            HookLayer::Syscalls => "syscall tracepoints",
        }
    }
}

/// Socket layer: (program, BTF tracepoint).
pub const SOCKET_BTF_HOOKS: &[(&str, &str)] = &[
    ("sock_recv", "sock_recv_length"),
    ("sock_send", "sock_send_length"),
    ("sock_closing", "inet_sock_set_state"),
    ("sock_reset", "tcp_receive_reset"),
];
/// Socket layer: (program, tracepoint category, tracepoint name).
pub const SOCKET_HOOKS: &[(&str, &str, &str)] = &[("sock_state", "sock", "inet_sock_set_state")];

/// Syscall layer: (program, tracepoint category, tracepoint name)
pub const HOOKS: &[(&str, &str, &str)] = &[
    ("enter_accept4", "syscalls", "sys_enter_accept4"),
    ("exit_accept4", "syscalls", "sys_exit_accept4"),
    ("enter_accept", "syscalls", "sys_enter_accept"),
    ("exit_accept", "syscalls", "sys_exit_accept"),
    ("enter_read", "syscalls", "sys_enter_read"),
    ("exit_read", "syscalls", "sys_exit_read"),
    ("enter_recvfrom", "syscalls", "sys_enter_recvfrom"),
    ("exit_recvfrom", "syscalls", "sys_exit_recvfrom"),
    ("enter_readv", "syscalls", "sys_enter_readv"),
    ("exit_readv", "syscalls", "sys_exit_readv"),
    ("enter_write", "syscalls", "sys_enter_write"),
    ("exit_write", "syscalls", "sys_exit_write"),
    ("enter_sendto", "syscalls", "sys_enter_sendto"),
    ("exit_sendto", "syscalls", "sys_exit_sendto"),
    ("enter_writev", "syscalls", "sys_enter_writev"),
    ("exit_writev", "syscalls", "sys_exit_writev"),
    ("enter_close", "syscalls", "sys_enter_close"),
    ("exit_socket", "syscalls", "sys_exit_socket"),
];

/// Enter programs of reads and writes: only needed where the exit programs
/// cannot read the syscall arguments from the saved registers (see
/// [`REGS_ARG_OFFSETS`]); not attached otherwise.
const STASH_ONLY: &[&str] = &[
    "enter_read",
    "enter_recvfrom",
    "enter_readv",
    "enter_write",
    "enter_sendto",
    "enter_writev",
];

/// Offsets in the kernel's `struct pt_regs` of the first three syscall
/// arguments at syscall exit, for this architecture (the kernel programs'
/// `REGS_ARG0..2`): x86_64 di, si, dx; arm64 orig_x0 (x0 holds the result
/// by then), x1, x2. `None`: the arguments are stashed by enter programs.
pub const REGS_ARG_OFFSETS: Option<[u32; 3]> = if cfg!(target_arch = "x86_64") {
    Some([112, 104, 96])
} else if cfg!(target_arch = "aarch64") {
    Some([272, 8, 16])
} else {
    None
};

/// Offset of the syscall number in `struct pt_regs` and the numbers of
/// read, recvfrom, readv, recvmsg, write, sendto, writev, sendmsg, for the
/// socket layer (which reads the buffers of the syscall it fires in).
/// `None`: no socket layer on this architecture.
pub const SYSCALL_NUMBERS: Option<(u32, [u32; 8])> = if cfg!(target_arch = "x86_64") {
    Some((120, [0, 45, 19, 47, 1, 44, 20, 46]))
} else if cfg!(target_arch = "aarch64") {
    Some((280, [63, 207, 65, 212, 64, 206, 66, 211]))
} else {
    None
};

#[derive(Clone, Debug)]
pub struct Config {
    /// Which hooks to attach (default `Auto`).
    pub layer: HookLayer,
    /// Process (tgid) whose accepted sockets are captured.
    pub tgid: u32,
    /// 16-byte key of the credential fingerprint (SipHash-2-4).
    pub fingerprint_key: [u8; 16],
    /// Up to 4 more header names to capture in clear (slots 10..13).
    pub extra_headers: Vec<String>,
    /// Listening sockets of `tgid`: (fd, local port). Empty: discover from /proc.
    pub listeners: Vec<(u32, u16)>,
    /// Only track connections accepted on a listener in `listeners`.
    pub require_listener: bool,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ringbuf_bytes: Option<u32>,
    /// Connections tracked at once (default: 65 536 with the socket layer,
    /// whose map grows with the connections open; 2 048 with the syscall
    /// layer, whose map is preallocated, ≈ 2.6 KiB each).
    pub max_conns: Option<u32>,
    /// Wake the reader only when this many bytes are pending (default 65536;
    /// 0 = on every record, which costs a self-IPI per record). The reader
    /// must then also poll on a timer (`poll` every ~50-100 ms).
    pub wakeup_bytes: Option<u64>,
    /// Use this object instead of `PREBUILT`.
    pub object: Option<Vec<u8>>,
    /// Attach the `read`/`write` tracepoints (default true). A server that
    /// does its socket I/O through Rust's std/mio/tokio never uses them on
    /// a socket: `recv`/`send` (recvfrom/sendto) and `readv`/`writev`.
    /// Its read/write calls are eventfd and pipe wake-ups (≈ 2.3 per
    /// proxied request in the gateway), and every enabled syscall event
    /// costs each call, of every process on the machine, the perf
    /// tracepoint path plus a program run. false: not attached.
    pub plain_read_write: bool,
}

/// Hooks left out with `Config::plain_read_write` false.
const PLAIN_READ_WRITE: &[&str] = &["enter_read", "exit_read", "enter_write", "exit_write"];

impl Config {
    pub fn for_pid(tgid: u32) -> Config {
        Config {
            layer: HookLayer::Auto,
            tgid,
            fingerprint_key: apx_capture_common::TEST_KEY,
            extra_headers: Vec::new(),
            listeners: Vec::new(),
            require_listener: false,
            ringbuf_bytes: None,
            max_conns: None,
            wakeup_bytes: None,
            object: None,
            plain_read_write: true,
        }
    }
}

#[derive(Debug)]
pub struct Error(pub String);
impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Error {}
fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error(format!("{what}: {e}"))
}

/// Sum over CPUs of the `STATS` counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Records lost because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Connections not tracked because `CONNS` was full.
    pub conn_map_full: u64,
    pub records: u64,
    pub conns: u64,
    pub parsed_syscalls: u64,
    pub args_map_full: u64,
}

/// Per-program numbers from /proc/self/fdinfo (run time needs `enable_run_stats`).
#[derive(Clone, Debug, Default)]
pub struct ProgStat {
    pub name: &'static str,
    /// Time `load()` (the verifier) took for this program.
    pub load_time: Duration,
    pub verified_insns: u64,
    pub run_count: u64,
    pub run_time_ns: u64,
}

pub struct Capture {
    /// The loaded object; `None` in a capture received from the process
    /// that loaded it (see [`handoff`]), which holds only fds.
    ebpf: Option<Ebpf>,
    layer: HookLayer,
    prog_load: Vec<(&'static str, Duration)>,
    ring: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    /// `stats`'s fd number (aya's array does not lend its fd), for [`handoff`].
    stats_fd: RawFd,
    /// A received capture's fds (programs, links, maps) that keep it
    /// attached; closed, and so detached, when the capture is dropped.
    _kept: Vec<OwnedFd>,
    /// A request box to decode the next request record into.
    spare: Option<Box<RequestRecord>>,
    /// Time spent in `EbpfLoader::load` (includes verification of all programs).
    pub load_time: Duration,
    /// Time spent loading + attaching the tracepoints.
    pub attach_time: Duration,
}

/// Make sure tracefs is mounted (syscall tracepoints need it).
pub fn ensure_tracefs() -> Result<(), Error> {
    for p in [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ] {
        if Path::new(p).is_dir() {
            return Ok(());
        }
    }
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error(format!(
            "tracefs is not mounted and mounting it on /sys/kernel/tracing failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Listening TCP sockets of `pid`: (fd, port), from /proc/PID/fd and /proc/net/tcp{,6}.
pub fn discover_listeners(pid: u32) -> Vec<(u32, u16)> {
    let mut inode_port = std::collections::HashMap::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{}", &f[10..]))
            .or_else(|_| std::fs::read_to_string(f))
        else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue; // not LISTEN
            }
            let Some(port) = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            inode_port.insert(cols[9].to_string(), port);
        }
    }
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let Ok(fd) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                if let Some(port) = inode_port.get(inode) {
                    out.push((fd, *port));
                }
            }
        }
    }
    out.sort();
    out
}

fn aligned_copy(bytes: &[u8]) -> Vec<u8> {
    // The ELF reader wants the image 8-byte aligned; include_bytes! is not.
    let mut v = Vec::with_capacity(bytes.len() + 8);
    v.extend_from_slice(bytes);
    v
}

/// Registers a listening socket with both hook layers: its fd (`LISTENERS`,
/// the syscall layer's accept) and its port (`LISTEN_PORTS`, the socket
/// layer's connection state changes).
fn add_listener(ebpf: &mut Ebpf, fd: u32, port: u16) -> Result<(), Error> {
    let mut fds: BpfHashMap<_, u32, u16> = BpfHashMap::try_from(
        ebpf.map_mut("LISTENERS")
            .ok_or(Error("no LISTENERS map".into()))?,
    )
    .map_err(err("LISTENERS"))?;
    fds.insert(fd, port, 0).map_err(err("LISTENERS insert"))?;
    // One byte per port (see the kernel's `listening`).
    let mut ports: Array<_, [u8; 65536]> = Array::try_from(
        ebpf.map_mut("LISTEN_PORTS")
            .ok_or(Error("no LISTEN_PORTS map".into()))?,
    )
    .map_err(err("LISTEN_PORTS"))?;
    let mut set = ports.get(&0, 0).map_err(err("LISTEN_PORTS read"))?;
    set[usize::from(port)] = 1;
    ports.set(0, set, 0).map_err(err("LISTEN_PORTS write"))
}

/// Unloads whatever part of the socket layer was loaded (its links go
/// with the programs), so a failed attempt leaves nothing attached.
fn detach_socket_layer(ebpf: &mut Ebpf) {
    for (prog, _) in SOCKET_BTF_HOOKS {
        let tp: Option<&mut BtfTracePoint> = ebpf.program_mut(prog).and_then(|p| p.try_into().ok());
        if let Some(tp) = tp {
            let _ = tp.unload();
        }
    }
    for (prog, _, _) in SOCKET_HOOKS {
        let tp: Option<&mut TracePoint> = ebpf.program_mut(prog).and_then(|p| p.try_into().ok());
        if let Some(tp) = tp {
            let _ = tp.unload();
        }
    }
}

/// Loads (verifies) the classic tracepoint program `prog` and attaches it
/// to `cat/name`, noting how long the verifier took.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &'static str,
    cat: &str,
    name: &str,
    prog_load: &mut Vec<(&'static str, Duration)>,
) -> Result<(), Error> {
    let started = Instant::now();
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| Error(format!("program {prog} missing from the object")))?
        .try_into()
        .map_err(err(prog))?;
    p.load()
        .map_err(|e| Error(format!("verifying {prog}: {e:?}")))?;
    prog_load.push((prog, started.elapsed()));
    p.attach(cat, name).map_err(err(name))?;
    Ok(())
}

fn attach_syscall_layer(
    ebpf: &mut Ebpf,
    cfg: &Config,
    prog_load: &mut Vec<(&'static str, Duration)>,
) -> Result<(), Error> {
    let regs_args = REGS_ARG_OFFSETS.is_some();
    for (prog, cat, name) in HOOKS {
        if regs_args && STASH_ONLY.contains(prog) {
            continue;
        }
        if !cfg.plain_read_write && PLAIN_READ_WRITE.contains(prog) {
            continue;
        }
        attach_tracepoint(ebpf, prog, cat, name, prog_load)?;
    }
    Ok(())
}

fn attach_socket_layer(
    ebpf: &mut Ebpf,
    prog_load: &mut Vec<(&'static str, Duration)>,
) -> Result<(), Error> {
    if SYSCALL_NUMBERS.is_none() {
        return Err(Error(
            "the socket hook layer has no syscall numbers for this architecture".into(),
        ));
    }
    let btf = Btf::from_sys_fs().map_err(err("reading the kernel's BTF"))?;
    for (prog, name) in SOCKET_BTF_HOOKS {
        let tp = Instant::now();
        let p: &mut BtfTracePoint = ebpf
            .program_mut(prog)
            .ok_or_else(|| Error(format!("program {prog} missing from the object")))?
            .try_into()
            .map_err(err(prog))?;
        p.load(name, &btf)
            .map_err(|e| Error(format!("verifying {prog}: {e:?}")))?;
        prog_load.push((*prog, tp.elapsed()));
        p.attach().map_err(err(name))?;
    }
    for (prog, cat, name) in SOCKET_HOOKS {
        attach_tracepoint(ebpf, prog, cat, name, prog_load)?;
    }
    Ok(())
}

impl Capture {
    /// Mount tracefs if needed, load the programs with `cfg`, attach them.
    pub fn start(cfg: &Config) -> Result<Capture, Error> {
        if cfg.extra_headers.len() > EXTRA_SLOTS {
            return Err(Error(format!("at most {EXTRA_SLOTS} extra headers")));
        }
        ensure_tracefs()?;
        let (k0, k1) = apx_capture_common::key_from_bytes(&cfg.fingerprint_key);
        let mut extra = [0u64; EXTRA_SLOTS];
        for (i, h) in cfg.extra_headers.iter().enumerate() {
            extra[i] = name_hash(h.as_bytes());
        }
        let require: u32 = cfg.require_listener as u32;
        let wakeup: u64 = cfg.wakeup_bytes.unwrap_or(65536);
        let regs_args: u32 = REGS_ARG_OFFSETS.is_some() as u32;
        let [arg0, arg1, arg2] = REGS_ARG_OFFSETS.unwrap_or([112, 104, 96]);
        let image = aligned_copy(cfg.object.as_deref().unwrap_or(PREBUILT));
        let t0 = Instant::now();
        let mut loader = EbpfLoader::new();
        loader
            .override_global("TARGET_TGID", &cfg.tgid, true)
            .override_global("REQUIRE_LISTENER", &require, true)
            .override_global("FP_K0", &k0, true)
            .override_global("FP_K1", &k1, true)
            .override_global("EXTRA_H0", &extra[0], true)
            .override_global("EXTRA_H1", &extra[1], true)
            .override_global("EXTRA_H2", &extra[2], true)
            .override_global("EXTRA_H3", &extra[3], true)
            .override_global("WAKEUP_BYTES", &wakeup, true)
            .override_global("REGS_ARGS", &regs_args, true)
            .override_global("REGS_ARG0", &arg0, true)
            .override_global("REGS_ARG1", &arg1, true)
            .override_global("REGS_ARG2", &arg2, true);
        let (regs_nr, nrs) = SYSCALL_NUMBERS.unwrap_or((120, [u32::MAX; 8]));
        loader.override_global("REGS_NR", &regs_nr, true);
        for (name, nr) in [
            "NR_READ",
            "NR_RECVFROM",
            "NR_READV",
            "NR_RECVMSG",
            "NR_WRITE",
            "NR_SENDTO",
            "NR_WRITEV",
            "NR_SENDMSG",
        ]
        .iter()
        .zip(nrs.iter())
        {
            loader.override_global(name, nr, true);
        }
        if let Some(n) = cfg.ringbuf_bytes {
            loader.map_max_entries("EVENTS", n);
        }
        // Each layer has its own connection map (see the kernel's `CONNS`
        // and `SOCK_CONNS`); the other one shrinks to a single entry.
        let (syscall_conns, socket_conns) = match cfg.layer {
            HookLayer::Syscalls => (cfg.max_conns.unwrap_or(2048), 1),
            HookLayer::Sockets | HookLayer::Auto => (1, cfg.max_conns.unwrap_or(65536)),
        };
        loader.map_max_entries("CONNS", syscall_conns);
        loader.map_max_entries("SOCK_CONNS", socket_conns);
        let mut ebpf = loader
            .load(&image)
            .map_err(err("loading the eBPF object"))?;
        // The loader holds the kernel's BTF it parsed (≈ 13 MB of heap);
        // free it before the socket layer's attach parses its own, or
        // both are alive at once (≈ 15 MB more peak memory).
        drop(loader);
        let load_time = t0.elapsed();
        let listeners = if cfg.listeners.is_empty() {
            discover_listeners(cfg.tgid)
        } else {
            cfg.listeners.clone()
        };
        for &(fd, port) in &listeners {
            add_listener(&mut ebpf, fd, port)?;
        }
        if listeners.is_empty() && cfg.layer == HookLayer::Sockets {
            return Err(Error(
                "the socket hook layer tracks connections by listening port, and no \
                 listening socket was given or found"
                    .into(),
            ));
        }
        let mut prog_load = Vec::new();
        let layer = match cfg.layer {
            HookLayer::Syscalls => {
                attach_syscall_layer(&mut ebpf, cfg, &mut prog_load)?;
                HookLayer::Syscalls
            }
            HookLayer::Sockets => {
                attach_socket_layer(&mut ebpf, &mut prog_load)?;
                HookLayer::Sockets
            }
            HookLayer::Auto => match attach_socket_layer(&mut ebpf, &mut prog_load) {
                Ok(()) => HookLayer::Sockets,
                Err(_) => {
                    // Load again with the maps sized for the syscall layer.
                    detach_socket_layer(&mut ebpf);
                    drop(ebpf);
                    return Capture::start(&Config {
                        layer: HookLayer::Syscalls,
                        ..cfg.clone()
                    });
                }
            },
        };
        let attach_time = t0.elapsed();
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or(Error("no EVENTS map".into()))?,
        )
        .map_err(err("EVENTS"))?;
        let stats_map = ebpf.take_map("STATS").ok_or(Error("no STATS map".into()))?;
        let stats_fd = match &stats_map {
            aya::maps::Map::PerCpuArray(data) => data.fd().as_fd().as_raw_fd(),
            _ => return Err(Error("STATS is not a per-CPU array".into())),
        };
        let stats = PerCpuArray::try_from(stats_map).map_err(err("STATS"))?;
        Ok(Capture {
            ebpf: Some(ebpf),
            layer,
            prog_load,
            ring,
            stats,
            stats_fd,
            _kept: Vec::new(),
            spare: None,
            load_time,
            attach_time,
        })
    }

    /// Tell the kernel side that `fd` listens on `port` (listener opened after start).
    pub fn register_listener(&mut self, fd: u32, port: u16) -> Result<(), Error> {
        let ebpf = self.ebpf.as_mut().ok_or(Error(
            "listeners are registered by the process that loaded the programs".into(),
        ))?;
        add_listener(ebpf, fd, port)
    }

    /// The hook layer that was attached.
    pub fn layer(&self) -> HookLayer {
        self.layer
    }

    /// The ring buffer's fd: readable (epoll) when records are waiting.
    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Drain every record waiting in the ring buffer; returns how many.
    pub fn poll(&mut self, mut f: impl FnMut(Record)) -> usize {
        self.poll_recycling(|rec| {
            f(rec);
            None
        })
    }

    /// [`Capture::poll`] where `f` may hand back a request box it is done
    /// with: the next request record is decoded into it instead of a new
    /// allocation (see [`Record::parse_into`]).
    pub fn poll_recycling(
        &mut self,
        mut f: impl FnMut(Record) -> Option<Box<RequestRecord>>,
    ) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if let Some(rec) = Record::parse_into(&item, &mut self.spare) {
                if let Some(back) = f(rec) {
                    self.spare = Some(back);
                }
            }
            n += 1;
        }
        n
    }

    /// Turn on the kernel's per-program run-time accounting while the fd lives
    /// (costs two clock reads per program run; for measurements only).
    pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, Error> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(err("BPF_ENABLE_STATS"))
    }

    /// Verifier time, verified instructions, run count and run time of each program.
    pub fn program_stats(&self) -> Vec<ProgStat> {
        let mut out = Vec::new();
        for (name, load_time) in &self.prog_load {
            let mut st = ProgStat {
                name,
                load_time: *load_time,
                ..Default::default()
            };
            let program = self.ebpf.as_ref().and_then(|ebpf| ebpf.program(name));
            if let Some(fd) = program.and_then(|p| p.fd().ok()) {
                let raw = fd.as_fd().as_raw_fd();
                if let Ok(text) = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")) {
                    for line in text.lines() {
                        let mut it = line.split(':');
                        let (Some(k), Some(v)) = (it.next(), it.next()) else {
                            continue;
                        };
                        let v: u64 = v.trim().parse().unwrap_or(0);
                        match k {
                            "run_time_ns" => st.run_time_ns = v,
                            "run_cnt" => st.run_count = v,
                            "verified_insns" => st.verified_insns = v,
                            _ => {}
                        }
                    }
                }
            }
            out.push(st);
        }
        out
    }

    pub fn stats(&self) -> Result<Stats, Error> {
        let arr = &self.stats;
        let sum = |i: u32| -> u64 { arr.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        Ok(Stats {
            ringbuf_drops: sum(stats::RINGBUF_DROPS),
            conn_map_full: sum(stats::CONN_MAP_FULL),
            records: sum(stats::RECORDS),
            conns: sum(stats::CONNS),
            parsed_syscalls: sum(stats::PARSED_SYSCALLS),
            args_map_full: sum(stats::ARGS_MAP_FULL),
        })
    }
}

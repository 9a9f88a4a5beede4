//! apx-capture: kernel programs that turn the gateway's own socket I/O into
//! per-request HTTP/1.1 records (see docs/ebpf-design.md).
//!
//! Two hook layers feed the same parsers; the loader attaches one of them.
//!
//! Socket layer (kernels with the `sock_recv_length` tracepoint, 6.4+): no
//! syscall tracepoint at all, so no task on the machine is put on the
//! syscall tracing slow path. `SOCK_CONNS` is keyed by the socket's address.
//! * `sock/inet_sock_set_state`: a connection to a registered listening
//!   port becomes established → entry in `SOCK_CONNS`; the raw (tp_btf) one:
//!   it starts closing (our FIN, or a reset) → flush, close record, removed.
//! * `tp_btf/sock_recv_length`, `tp_btf/sock_send_length`: bytes the
//!   gateway read / wrote on a tracked socket → request / response parser;
//!   the buffers come from the registers its syscall saved.
//!
//! Syscall layer (older kernels): syscall tracepoints, filtered by the
//! gateway's tgid (`TARGET_TGID`); `CONNS` is keyed by fd.
//! * accept/accept4 exit: a new accepted socket → entry in `CONNS`.
//! * read/recvfrom/readv exit: request bytes → request parser.
//! * write/sendto/writev exit: response bytes → response parser.
//! * close enter: flush what is in progress, send a close record, forget the fd.
//! * socket exit: an fd number reused by a new (upstream) socket is forgotten.
//!
//! Only accepted connections are parsed, so the gateway's upstream (client)
//! sockets, files and pipes never produce records.
#![no_std]
#![no_main]
#![allow(static_mut_refs, clippy::missing_safety_doc)]

mod parse;

use core::ffi::c_void;
use core::mem::size_of;

use apx_capture_common::*;
use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, bpf_loop, bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
    Global,
};

use parse::{Conn, Scratch, WIN};

// ---- load-time configuration (EbpfLoader::override_global) -------------------

/// Process whose sockets are captured. 0 captures nothing.
#[no_mangle]
static TARGET_TGID: Global<u32> = Global::new(0);
/// 1: only connections accepted on a listener registered in `LISTENERS`.
#[no_mangle]
static REQUIRE_LISTENER: Global<u32> = Global::new(0);
/// Fingerprint key, first half (see apx_capture_common::Sip).
#[no_mangle]
pub static FP_K0: Global<u64> = Global::new(0);
/// Fingerprint key, second half.
#[no_mangle]
pub static FP_K1: Global<u64> = Global::new(0);
/// `name_hash` of the configurable capture slots 10..13 (0 = unused).
#[no_mangle]
pub static EXTRA_H0: Global<u64> = Global::new(0);
#[no_mangle]
pub static EXTRA_H1: Global<u64> = Global::new(0);
#[no_mangle]
pub static EXTRA_H2: Global<u64> = Global::new(0);
#[no_mangle]
pub static EXTRA_H3: Global<u64> = Global::new(0);

/// Offsets in the kernel's `struct pt_regs` of the first three syscall
/// arguments as the task's registers were saved at syscall entry, for the
/// architecture the loader runs on (x86_64: di, si, dx = 112, 104, 96;
/// arm64: orig_x0, x1, x2 = 272, 8, 16: x0 already holds the result).
/// `REGS_ARGS` 1: the read/write exit programs take fd, buffer and length
/// from there (`bpf_task_pt_regs`) and the matching enter programs are not
/// attached at all — half the tracepoints, no `ARGS` map churn per syscall.
/// 0 (an architecture the loader has no offsets for): enter programs stash
/// the arguments in `ARGS`, as before.
#[no_mangle]
static REGS_ARGS: Global<u32> = Global::new(0);
#[no_mangle]
static REGS_ARG0: Global<u32> = Global::new(112);
#[no_mangle]
static REGS_ARG1: Global<u32> = Global::new(104);
#[no_mangle]
static REGS_ARG2: Global<u32> = Global::new(96);
/// Offset of the syscall number in `struct pt_regs` (x86_64 orig_ax;
/// arm64 syscallno, a 32-bit field: only the low half is compared).
#[no_mangle]
static REGS_NR: Global<u32> = Global::new(120);
/// This architecture's numbers of the syscalls whose buffers the socket
/// layer reads (defaults: x86_64). Socket I/O reached any other way
/// (io_uring, sendfile, splice) is counted but not parsed.
#[no_mangle]
static NR_READ: Global<u32> = Global::new(0);
#[no_mangle]
static NR_RECVFROM: Global<u32> = Global::new(45);
#[no_mangle]
static NR_READV: Global<u32> = Global::new(19);
#[no_mangle]
static NR_RECVMSG: Global<u32> = Global::new(47);
#[no_mangle]
static NR_WRITE: Global<u32> = Global::new(1);
#[no_mangle]
static NR_SENDTO: Global<u32> = Global::new(44);
#[no_mangle]
static NR_WRITEV: Global<u32> = Global::new(20);
#[no_mangle]
static NR_SENDMSG: Global<u32> = Global::new(46);

// ---- maps -------------------------------------------------------------------

/// Records to user space. 1 MiB holds ≈ 2 800 packed exchange records of
/// a typical call (≈ 370 B), more than 2 MiB held before they were packed;
/// user space maps it twice, so every MiB here is 2 MiB of its RSS.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);
/// Connection state of each tracked connection of the syscall layer, keyed
/// by the accepted socket's fd. Preallocated: the kernels that need this
/// layer (before 6.4) include ones (before 6.1) that let tracing programs
/// use preallocated hash maps only. The loader shrinks it to one entry
/// when the socket layer runs.
#[map]
static CONNS: HashMap<u64, Conn> = HashMap::with_max_entries(2048, 0);
/// The same for the socket layer (kernels 6.4+), keyed by the socket's
/// `struct sock` address, allocated per connection (`BPF_F_NO_PREALLOC`):
/// its memory follows the connections open, so it can allow 65 536 of
/// them where a preallocated map held 2 048 in 5.2 MiB.
#[map]
static SOCK_CONNS: HashMap<u64, Conn> =
    HashMap::with_max_entries(65536, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
/// One byte per fd number below `TRACKED_FDS`: 1 = maybe in `CONNS`.
/// Every read/write of the gateway runs an exit program, and most are on
/// fds that are not accepted connections (upstream sockets, eventfds):
/// for them this inlined array load replaces a `CONNS` hash lookup (a
/// helper call, the hash, a bucket walk). A byte is set after its `CONNS`
/// insert at accept and cleared with the removal at close / socket reuse;
/// a stale 1 only costs the hash lookup, and a 0 cannot hide a connection
/// because the fd reaches user space only after the accept exit set it.
/// Larger fds always take the hash lookup.
#[map]
static TRACKED: Array<[u8; TRACKED_FDS]> = Array::with_max_entries(1, 0);
const TRACKED_FDS: usize = 65536;

/// Is `fd` possibly a tracked connection (see `TRACKED`)?
#[inline(always)]
fn maybe_tracked(fd: u32) -> bool {
    if fd as usize >= TRACKED_FDS {
        return true;
    }
    match TRACKED.get_ptr(0) {
        Some(t) => unsafe { *(t as *const u8).add(fd_index(fd)) != 0 },
        None => true,
    }
}

/// `fd` masked to the `TRACKED` array. The caller already checked the
/// bound, so LLVM would drop a plain mask as a no-op, and the verifier
/// (which does not connect that check to this register) would reject the
/// access: the value goes through a volatile stack slot first.
#[inline(always)]
fn fd_index(fd: u32) -> usize {
    let mut slot = fd as usize;
    unsafe { core::ptr::read_volatile(&mut slot) & (TRACKED_FDS - 1) }
}

#[inline(always)]
fn set_tracked(fd: u32, on: bool) {
    if (fd as usize) < TRACKED_FDS {
        if let Some(t) = TRACKED.get_ptr_mut(0) {
            unsafe { *(t as *mut u8).add(fd_index(fd)) = on as u8 };
        }
    }
}

/// Thread (pid_tgid) → arguments of the syscall it is in.
#[map]
static ARGS: HashMap<u64, Args> = HashMap::with_max_entries(1024, 0);
/// Listening fd → local port (host order), filled by the loader.
/// Listening fd → its port (syscall layer: accept's first argument).
#[map]
static LISTENERS: HashMap<u32, u16> = HashMap::with_max_entries(64, 0);
/// Listening ports of the gateway, one byte per port, 1 = registered
/// (socket layer: a connection is tracked when it is established on one
/// of them). An array, not a hash: the verifier inlines its lookup, and
/// the read path asks it for every read on an untracked socket of the
/// gateway (each upstream response).
#[map]
static LISTEN_PORTS: Array<[u8; PORTS]> = Array::with_max_entries(1, 0);
const PORTS: usize = 65536;

/// Is `port` (host order) one of the gateway's listening ports?
#[inline(always)]
fn listening(port: u16) -> bool {
    match LISTEN_PORTS.get_ptr(0) {
        // A u16 is below PORTS: the index is in bounds.
        Some(ports) => unsafe { *(ports as *const u8).add(port as usize) != 0 },
        None => false,
    }
}
/// Per-CPU parse scratch.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
/// One all-zero connection: the initial value of a new `CONNS` entry (never
/// written).
#[map]
static ZERO: Array<Conn> = Array::with_max_entries(1, 0);
/// Per-CPU scratch where a record's request is packed before it is sent
/// (`parse::emit_packed`): offsets below `PACK_MASK`, each piece at most a
/// whole request record long.
#[map]
pub(crate) static PACK: PerCpuArray<parse::Pack> = PerCpuArray::with_max_entries(1, 0);
/// Counters, see apx_capture_common::stats.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);
/// Per-CPU connection id counter.
#[map]
static CONN_IDS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const K_READ: u32 = 1;
const K_READV: u32 = 2;
const K_WRITE: u32 = 3;
const K_WRITEV: u32 = 4;
const K_ACCEPT: u32 = 5;

/// What sys_enter saw, for sys_exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Args {
    fd: u32,
    kind: u32,
    ptr: u64,
    cnt: u64,
}

// Syscall tracepoint layout: 8 bytes common header, __syscall_nr (+pad), then
// 8-byte argument slots; sys_exit_* has `long ret` at the same offset.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

#[inline(always)]
fn stat_add(idx: u32, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        unsafe { *p += n };
    }
}

#[inline(always)]
fn ours() -> Option<u64> {
    let id = unsafe { bpf_get_current_pid_tgid() };
    let tgid = TARGET_TGID.load();
    if tgid != 0 && (id >> 32) as u32 == tgid {
        Some(id)
    } else {
        None
    }
}

#[inline(always)]
fn arg<T>(ctx: &TracePointContext, off: usize) -> Option<T> {
    unsafe { ctx.read_at::<T>(off).ok() }
}

#[inline(always)]
fn stash(ctx: &TracePointContext, kind: u32) {
    let Some(id) = ours() else { return };
    let Some(fd) = arg::<u64>(ctx, ARG0) else {
        return;
    };
    let fd = fd as u32;
    if kind == K_ACCEPT {
        if REQUIRE_LISTENER.load() != 0 && unsafe { LISTENERS.get(&fd) }.is_none() {
            return;
        }
    } else if CONNS.get_ptr(&(fd as u64)).is_none() {
        return;
    }
    let ptr = arg::<u64>(ctx, ARG1).unwrap_or(0);
    let cnt = arg::<u64>(ctx, ARG2).unwrap_or(0);
    if ARGS.insert(&id, &Args { fd, kind, ptr, cnt }, 0).is_err() {
        stat_add(stats::ARGS_MAP_FULL, 1);
    }
}

/// The current syscall's fd, pointer and count, read from the registers
/// the task saved at syscall entry (see `REGS_ARGS`); `None` for another
/// process or an fd that is not a tracked connection (most calls: upstream
/// sockets, eventfds), which is decided on the fd alone before the rest is
/// read. The registers are read with plain loads through the BTF pointer
/// `bpf_task_pt_regs` returns (the verifier checks them against `struct
/// pt_regs`; the offsets are load-time constants in `.rodata`, which the
/// verifier sees as known values): no `bpf_probe_read_kernel` call per
/// argument.
#[inline(always)]
fn args_from_regs() -> Option<(Args, *mut Conn)> {
    ours()?;
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        let fd = reg(regs, REGS_ARG0.load()) as u32;
        if !maybe_tracked(fd) {
            return None;
        }
        let c = CONNS.get_ptr_mut(&(fd as u64))?;
        let ptr = reg(regs, REGS_ARG1.load());
        let cnt = reg(regs, REGS_ARG2.load());
        Some((
            Args {
                fd,
                kind: 0,
                ptr,
                cnt,
            },
            c,
        ))
    }
}

#[inline(always)]
unsafe fn reg(regs: *const u8, off: u32) -> u64 {
    core::ptr::read_volatile(regs.add((off & 0x1f8) as usize) as *const u64)
}

#[inline(always)]
fn take(_ctx: &TracePointContext) -> Option<Args> {
    let id = ours()?;
    let a = unsafe { *ARGS.get(&id)? };
    let _ = ARGS.remove(&id);
    Some(a)
}

// ---- accept -------------------------------------------------------------------

#[tracepoint]
pub fn enter_accept4(ctx: TracePointContext) -> u32 {
    stash(&ctx, K_ACCEPT);
    0
}

#[tracepoint]
pub fn enter_accept(ctx: TracePointContext) -> u32 {
    stash(&ctx, K_ACCEPT);
    0
}

#[tracepoint]
pub fn exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) {
    let Some(a) = take(ctx) else { return };
    if a.kind != K_ACCEPT {
        return;
    }
    let Some(ret) = arg::<i64>(ctx, RET) else {
        return;
    };
    if ret < 0 {
        return;
    }
    let fd = ret as u32;
    let Some(c) = new_conn(&CONNS, fd as u64) else {
        return;
    };
    set_tracked(fd, true);
    c.fd = fd;
    c.tgid = (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32;
    match unsafe { LISTENERS.get(&a.fd) } {
        Some(p) => c.info.local_port = *p,
        None => c.flags |= F_LOCAL_UNKNOWN,
    }
    read_peer(a.ptr, c);
}

/// A fresh entry under `key` in `conns` (`CONNS` or `SOCK_CONNS`,
/// replacing a stale one), with its connection id and accept time; `None`
/// (counted) when the map is full.
#[inline(always)]
fn new_conn(conns: &HashMap<u64, Conn>, key: u64) -> Option<&'static mut Conn> {
    let zero = ZERO.get_ptr(0)?;
    if conns.insert(&key, unsafe { &*zero }, 0).is_err() {
        stat_add(stats::CONN_MAP_FULL, 1);
        return None;
    }
    let c = unsafe { &mut *conns.get_ptr_mut(&key)? };
    c.conn_id = next_conn_id();
    c.info.ts_accept_ns = unsafe { bpf_ktime_get_ns() };
    stat_add(stats::CONNS, 1);
    Some(c)
}

#[inline(always)]
fn next_conn_id() -> u64 {
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let n = match CONN_IDS.get_ptr_mut(0) {
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    };
    (cpu << 56) | (n & 0x00ff_ffff_ffff_ffff)
}

/// Peer address from the sockaddr the gateway passed to accept.
#[inline(always)]
fn read_peer(ptr: u64, c: &mut Conn) {
    let sa = match ptr {
        0 => None,
        _ => unsafe { aya_ebpf::helpers::bpf_probe_read_user(ptr as *const [u8; 24]) }.ok(),
    };
    let Some(sa) = sa else {
        set_peer(c, 0, 0, &[0; 16]);
        return;
    };
    let family = u16::from_le_bytes([sa[0], sa[1]]);
    let mut addr = [0u8; 16];
    if family == 2 {
        addr[..4].copy_from_slice(&sa[4..8]);
    } else {
        addr.copy_from_slice(&sa[8..24]);
    }
    set_peer(c, family, u16::from_be_bytes([sa[2], sa[3]]), &addr);
}

/// The peer of a new connection: IPv4 (`family` 2, the first 4 bytes of
/// `addr`) or IPv6 (10, all 16), network order, port in host order; any
/// other family leaves it unknown (`F_ADDR_UNKNOWN`, port 0).
#[inline(always)]
fn set_peer(c: &mut Conn, family: u16, port: u16, addr: &[u8; 16]) {
    match family {
        2 => c.info.peer_addr[..4].copy_from_slice(&addr[..4]),
        10 => c.info.peer_addr = *addr,
        _ => {
            c.flags |= F_ADDR_UNKNOWN;
            return;
        }
    }
    c.info.family = family;
    c.info.peer_port = port;
}

// ---- reads and writes -------------------------------------------------------

#[tracepoint]
pub fn enter_read(ctx: TracePointContext) -> u32 {
    stash(&ctx, K_READ);
    0
}
#[tracepoint]
pub fn enter_recvfrom(ctx: TracePointContext) -> u32 {
    stash(&ctx, K_READ);
    0
}
#[tracepoint]
pub fn enter_readv(ctx: TracePointContext) -> u32 {
    stash(&ctx, K_READV);
    0
}
#[tracepoint]
pub fn enter_write(ctx: TracePointContext) -> u32 {
    stash(&ctx, K_WRITE);
    0
}
#[tracepoint]
pub fn enter_sendto(ctx: TracePointContext) -> u32 {
    stash(&ctx, K_WRITE);
    0
}
#[tracepoint]
pub fn enter_writev(ctx: TracePointContext) -> u32 {
    stash(&ctx, K_WRITEV);
    0
}

#[tracepoint]
pub fn exit_read(ctx: TracePointContext) -> u32 {
    on_io_exit::<false, false>(&ctx);
    0
}
#[tracepoint]
pub fn exit_recvfrom(ctx: TracePointContext) -> u32 {
    on_io_exit::<false, false>(&ctx);
    0
}
#[tracepoint]
pub fn exit_readv(ctx: TracePointContext) -> u32 {
    on_io_exit::<false, true>(&ctx);
    0
}
#[tracepoint]
pub fn exit_write(ctx: TracePointContext) -> u32 {
    on_io_exit::<true, false>(&ctx);
    0
}
#[tracepoint]
pub fn exit_sendto(ctx: TracePointContext) -> u32 {
    on_io_exit::<true, false>(&ctx);
    0
}
#[tracepoint]
pub fn exit_writev(ctx: TracePointContext) -> u32 {
    on_io_exit::<true, true>(&ctx);
    0
}

const EAGAIN: i64 = 11;
const EINTR: i64 = 4;

/// Exit of a read (`RESP` false) or write (`RESP` true) syscall. One
/// direction per program: `bpf_loop` then has a single, constant callback,
/// which the verifier inlines into a plain loop (a helper call with an
/// indirect call per step otherwise, a retpoline on this kernel).
#[inline(always)]
fn on_io_exit<const RESP: bool, const VEC: bool>(ctx: &TracePointContext) {
    let (a, c) = if REGS_ARGS.load() != 0 {
        let Some(ac) = args_from_regs() else { return };
        ac
    } else {
        let Some(a) = take(ctx) else { return };
        let want = match (RESP, VEC) {
            (false, false) => K_READ,
            (false, true) => K_READV,
            (true, false) => K_WRITE,
            (true, true) => K_WRITEV,
        };
        if a.kind != want {
            return;
        }
        let Some(c) = CONNS.get_ptr_mut(&(a.fd as u64)) else {
            return;
        };
        (a, c)
    };
    let Some(ret) = arg::<i64>(ctx, RET) else {
        return;
    };
    parse_io::<RESP>(c, a.ptr, a.cnt, VEC, ret);
}

/// Bytes a tracked connection just moved: `ret` from `ptr` (one buffer), or
/// from the `cnt` iovecs at `ptr` (`vec`); `ret` ≤ 0 is end of stream or an
/// error.
#[inline(always)]
fn parse_io<const RESP: bool>(c: *mut Conn, ptr: u64, cnt: u64, vec: bool, ret: i64) {
    if ret <= 0 {
        if !RESP {
            let cc = unsafe { &mut *c };
            if ret == 0 {
                cc.flags |= F_PEER_EOF;
            } else if ret != -EAGAIN && ret != -EINTR {
                cc.flags |= F_READ_ERROR;
            }
        }
        return;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        let sc = &mut *s;
        sc.now = now;
        zero(&mut sc.pos);
        zero(&mut sc.win_len);
        zero(&mut sc.win_start);
        sc.total_left = ret as u64;
        if vec {
            sc.iov_ptr = ptr;
            sc.iov_cnt = cnt;
            zero(&mut sc.iov_idx);
            zero(&mut sc.iov_n);
            zero(&mut sc.cur_ptr);
            zero(&mut sc.cur_len);
        } else {
            zero(&mut sc.iov_ptr);
            zero(&mut sc.iov_cnt);
            zero(&mut sc.iov_idx);
            sc.cur_ptr = ptr;
            sc.cur_len = ret as u64;
            zero(&mut sc.total_left);
        }
        let cc = &mut *c;
        if RESP {
            cc.bytes_out += ret as u64;
        } else {
            cc.bytes_in += ret as u64;
        }
        let mut lc = parse::LoopCtx {
            conn: c,
            scratch: s,
        };
        let cb: *mut c_void = if RESP {
            parse::resp_cb as *mut c_void
        } else {
            parse::req_cb as *mut c_void
        };
        bpf_loop(STEP_BUDGET, cb, &mut lc as *mut _ as *mut c_void, 0);
        // Bytes the loop did not get to (budget, too many iovecs).
        let mut unseen = (*s).total_left;
        if (*s).cur_len > (*s).pos {
            unseen += (*s).cur_len - (*s).pos;
        }
        if unseen > 0 {
            parse::skip_unseen(&mut *c, RESP, unseen, now);
        }
        if RESP {
            parse::after_write(&mut *c, now);
        }
    }
    stat_add(stats::PARSED_SYSCALLS, 1);
}

// ---- socket layer ---------------------------------------------------------------

const MSG_PEEK: i64 = 2;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const IPPROTO_TCP: u16 = 6;

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv(ctx: BtfTracePointContext) -> i32 {
    on_sock_io::<false>(&ctx);
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send(ctx: BtfTracePointContext) -> i32 {
    on_sock_io::<true>(&ctx);
    0
}

/// `sock_recv_length(sk, ret, flags)` / `sock_send_length(sk, ret, flags)`:
/// fired inside `sock_recvmsg` / `sock_sendmsg` for every socket of every
/// process; the tgid check and one `SOCK_CONNS` lookup stop all but the
/// gateway's accepted connections. The bytes are in the buffers the
/// gateway's syscall named, read through the registers it saved.
#[inline(always)]
fn on_sock_io<const RESP: bool>(ctx: &BtfTracePointContext) {
    if ours().is_none() {
        return;
    }
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if !RESP && i64::from(flags) & MSG_PEEK != 0 {
        // The same bytes come again with the read that consumes them.
        return;
    }
    // Only a socket on one of the gateway's listening ports can be tracked:
    // its upstream sockets (ephemeral local ports, one write and one read
    // per proxied call) stop here, before the map lookup.
    let local_port = local_port(sk);
    if !listening(local_port) {
        return;
    }
    let c = match SOCK_CONNS.get_ptr_mut(&sk) {
        Some(c) => c,
        None if !RESP => match learn_established(sk, local_port) {
            Some(c) => c,
            None => return,
        },
        None => return,
    };
    let ret = i64::from(ret);
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        let nr = reg(regs, REGS_NR.load()) as u32;
        let a1 = reg(regs, REGS_ARG1.load());
        let (plain, direct, vector, msg) = if RESP {
            (&NR_WRITE, &NR_SENDTO, &NR_WRITEV, &NR_SENDMSG)
        } else {
            (&NR_READ, &NR_RECVFROM, &NR_READV, &NR_RECVMSG)
        };
        // Where the bytes are: (pointer, iovec count, is a vector).
        let buffers = if nr == plain.load() || nr == direct.load() {
            Some((a1, 0, false))
        } else if nr == vector.load() {
            Some((a1, reg(regs, REGS_ARG2.load()), true))
        } else if nr == msg.load() {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
            let mut hdr = [0u64; 4];
            read_user(hdr.as_mut_ptr() as *mut u8, 32, a1).then_some((hdr[2], hdr[3], true))
        } else {
            // io_uring, sendfile, splice…: no user buffer to read here.
            None
        };
        match buffers {
            Some((ptr, cnt, vec)) => {
                // The fd the gateway used (records carry it); io_uring's or
                // sendfile's first argument is something else.
                (*c).fd = reg(regs, REGS_ARG0.load()) as u32;
                parse_io::<RESP>(c, ptr, cnt, vec, ret);
            }
            None if ret > 0 => parse::skip_unseen(&mut *c, RESP, ret as u64, bpf_ktime_get_ns()),
            // End of stream or an error: only flags, no buffer needed.
            None => parse_io::<RESP>(c, 0, 0, false, ret),
        }
    }
}

/// The socket's local port (`skc_num`, host order, at 14 in `struct
/// sock_common` on every kernel): a plain load through the tracepoint's
/// BTF-typed `struct sock *`, checked by the verifier against the
/// kernel's BTF.
#[inline(always)]
fn local_port(sk: u64) -> u16 {
    // SAFETY: see above; volatile keeps the load 2 bytes wide, the size of
    // the field, which is what the verifier accepts.
    unsafe { core::ptr::read_volatile((sk as *const u8).add(14) as *const u16) }
}

/// A read on a socket the state tracepoint did not announce: a connection
/// established before the programs were attached (the gateway listens
/// before it loads them, and a probe attaches to a running server) and
/// accepted on a registered port is tracked from this read on, which
/// starts a request unless the attach fell in the middle of one (then the
/// parser flags it `not_http`). The caller checked that `local_port` is a
/// registered listener's. The `struct sock_common` fields read here (peer
/// address at 0, peer port at 12, family at 16, state at 18) have had these
/// offsets on every kernel since the socket hash lookups were built on
/// them; a pure IPv6 peer address is elsewhere and is left unknown.
/// `sk` is the tracepoint's BTF-typed `struct sock *`: each field is a
/// plain load the verifier checks against the kernel's BTF (and the JIT
/// makes fault-safe), where a `bpf_probe_read_kernel` of the head was a
/// helper call on every upstream read.
#[inline(always)]
fn learn_established(sk: u64, local_port: u16) -> Option<*mut Conn> {
    let head = sk as *const u8;
    // SAFETY (all loads below): see above; each is volatile so LLVM keeps
    // them the size of their field, which is what the verifier accepts.
    let state = unsafe { core::ptr::read_volatile(head.add(18)) } as i32;
    if state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT {
        return None;
    }
    let family_raw = unsafe { core::ptr::read_volatile(head.add(16) as *const u16) };
    let peer_v4 = unsafe { core::ptr::read_volatile(head as *const u32) }.to_ne_bytes();
    let peer_port = u16::from_be(unsafe { core::ptr::read_volatile(head.add(12) as *const u16) });
    let c = new_conn(&SOCK_CONNS, sk)?;
    c.tgid = TARGET_TGID.load();
    c.info.local_port = local_port;
    let mut family = family_raw;
    let mut addr = [0u8; 16];
    if family == 2 {
        addr[..4].copy_from_slice(&peer_v4);
    } else if family == 10 && peer_v4 != [0; 4] {
        // A dual-stack socket with an IPv4 peer: ::ffff:a.b.c.d, as accept
        // would have reported it.
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&peer_v4);
    } else {
        family = 0;
    }
    set_peer(c, family, peer_port, &addr);
    Some(c as *mut Conn)
}

// Fields of the `sock/inet_sock_set_state` tracepoint (its format file; the
// layout has not changed since the event was added in 4.16).
const SS_SKADDR: usize = 8;
const SS_OLDSTATE: usize = 16;
const SS_NEWSTATE: usize = 20;
const SS_SPORT: usize = 24;
const SS_DPORT: usize = 26;
const SS_FAMILY: usize = 28;
const SS_PROTOCOL: usize = 30;
const SS_DADDR: usize = 36;
const SS_DADDR_V6: usize = 56;

/// TCP state changes, machine-wide (a few per connection): a connection
/// established on a registered listening port is tracked from here on.
/// Runs in softirq context as often as not, so it keys by socket, never
/// by task. A classic tracepoint, for the peer address it carries (IPv6
/// included); like every kprobe or classic-tracepoint program it is
/// skipped while another one runs on the same CPU (`bpf_prog_active`),
/// and then the connection's first read learns it (`learn_established`).
#[tracepoint]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    on_sock_state(&ctx);
    0
}

#[inline(always)]
fn on_sock_state(ctx: &TracePointContext) {
    let (Some(sk), Some(old), Some(new), Some(proto)) = (
        arg::<u64>(ctx, SS_SKADDR),
        arg::<i32>(ctx, SS_OLDSTATE),
        arg::<i32>(ctx, SS_NEWSTATE),
        arg::<u16>(ctx, SS_PROTOCOL),
    ) else {
        return;
    };
    if proto != IPPROTO_TCP {
        return;
    }
    if new == TCP_ESTABLISHED && old == TCP_SYN_RECV {
        let Some(sport) = arg::<u16>(ctx, SS_SPORT) else {
            return;
        };
        if !listening(sport) {
            return;
        }
        let Some(c) = new_conn(&SOCK_CONNS, sk) else {
            return;
        };
        c.tgid = TARGET_TGID.load();
        c.info.local_port = sport;
        let family = arg::<u16>(ctx, SS_FAMILY).unwrap_or(0);
        // The IPv4 address has its own field (`daddr_v6` holds it mapped).
        let addr = match family {
            2 => arg::<[u8; 4]>(ctx, SS_DADDR).map(|v4| {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4);
                a
            }),
            _ => arg::<[u8; 16]>(ctx, SS_DADDR_V6),
        };
        match (addr, arg::<u16>(ctx, SS_DPORT)) {
            (Some(addr), Some(port)) => set_peer(c, family, port, &addr),
            _ => set_peer(c, 0, 0, &[0; 16]),
        }
    }
}

/// The same state changes through the raw (BTF) tracepoint
/// `inet_sock_set_state(sk, oldstate, newstate)`: a tracked connection
/// that starts closing (our FIN at shutdown/close, the peer's FIN
/// answered, or a reset) is flushed — its request or response in
/// progress, its close record — and forgotten. A raw tracepoint program
/// is skipped only if it is itself running on the CPU, never because some
/// other tracing program is (as `sock_state` can be): a missed close would
/// lose those records without a count.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_closing(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let new: i32 = ctx.arg(2);
    if new != TCP_FIN_WAIT1 && new != TCP_LAST_ACK && new != TCP_CLOSE {
        return 0;
    }
    let Some(c) = SOCK_CONNS.get_ptr_mut(&sk) else {
        return 0;
    };
    let c = unsafe { &mut *c };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe { parse::on_close(c, now) };
    let _ = SOCK_CONNS.remove(&sk);
    0
}

/// `tcp_receive_reset(sk)` (raw tracepoint, for the reason given at
/// `sock_closing`): the peer reset a tracked connection; the gateway's
/// next read fails with ECONNRESET. Fires just before the state change
/// to CLOSE that flushes the connection, so its records carry the flag.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn sock_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if let Some(c) = SOCK_CONNS.get_ptr_mut(&sk) {
        unsafe { (*c).flags |= F_READ_ERROR };
    }
    0
}

// ---- close and fd reuse -------------------------------------------------------

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let Some(_) = ours() else { return 0 };
    let Some(fd) = arg::<u64>(&ctx, ARG0) else {
        return 0;
    };
    let fd = fd as u32;
    let Some(c) = CONNS.get_ptr_mut(&(fd as u64)) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe { parse::on_close(&mut *c, now) };
    let _ = CONNS.remove(&(fd as u64));
    set_tracked(fd, false);
    0
}

#[tracepoint]
pub fn exit_socket(ctx: TracePointContext) -> u32 {
    let Some(_) = ours() else { return 0 };
    let Some(ret) = arg::<i64>(&ctx, RET) else {
        return 0;
    };
    if ret >= 0 {
        let _ = CONNS.remove(&(ret as u64));
        set_tracked(ret as u32, false);
    }
    0
}

// ---- helpers used by parse ------------------------------------------------------

/// Store a zero that LLVM may not merge with its neighbours into a
/// `memset` call: bpf-linker turns that into a byte-at-a-time loop
/// subprogram (24 iterations for three u64 fields).
#[inline(always)]
pub(crate) fn zero(p: &mut u64) {
    unsafe { core::ptr::write_volatile(p, 0) };
}

/// Copy `len` bytes of user memory; false on fault.
#[inline(always)]
pub(crate) unsafe fn read_user(dst: *mut u8, len: u32, src: u64) -> bool {
    bpf_probe_read_user(dst as *mut c_void, len, src as *const c_void) == 0
}

/// Pending bytes in the ring buffer above which a record wakes the reader.
/// Below it no wakeup is sent (a wakeup is an irq_work, i.e. a self-IPI: a
/// VM exit under virtualisation, several microseconds); the reader polls on
/// a timer (WAKEUP_BYTES = 0: wake on every record).
#[no_mangle]
static WAKEUP_BYTES: Global<u64> = Global::new(65536);

/// Send a record; count it as dropped if the ring buffer is full.
#[inline(always)]
pub(crate) fn emit<T>(rec: &T) {
    counted(
        EVENTS
            .output::<T>(rec, wakeup_flags(size_of::<T>() as u64))
            .is_ok(),
    );
}

/// Send the first `len` bytes at `p` (map memory holding at least `max`
/// bytes there) as one record: records whose tail is unused (a request's
/// capture slots after the last one in use) are sent without it.
/// `bpf_ringbuf_output` takes a bounded variable size; the clamp gives the
/// verifier the bound.
#[inline(always)]
pub(crate) fn emit_bytes(p: *const u8, len: usize, max: usize) {
    let len = if len > max { max } else { len };
    let bytes = unsafe { core::slice::from_raw_parts(p, len) };
    counted(
        EVENTS
            .output::<[u8]>(bytes, wakeup_flags(len as u64))
            .is_ok(),
    );
}

/// Wake the reader once, with the record of `len` bytes that takes what
/// is pending to `WAKEUP_BYTES`. Not with every record past it: the
/// reader needs a while to wake and drain, and each wake-up meanwhile was
/// another self-IPI (a VM exit under virtualisation) for nothing — about
/// 1 µs per request at 35 k requests/s with a 1 MiB ring. A wake-up that
/// is somehow missed only delays the reader to its timer.
#[inline(always)]
fn wakeup_flags(len: u64) -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA);
    let threshold = WAKEUP_BYTES.load();
    if threshold == 0 || (pending < threshold && pending + len >= threshold) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn counted(sent: bool) {
    if sent {
        stat_add(stats::RECORDS, 1);
    } else {
        stat_add(stats::RINGBUF_DROPS, 1);
    }
}

#[inline(always)]
pub(crate) fn extra_hashes() -> [u64; 4] {
    [
        EXTRA_H0.load(),
        EXTRA_H1.load(),
        EXTRA_H2.load(),
        EXTRA_H3.load(),
    ]
}

#[inline(always)]
pub(crate) fn fp_key() -> (u64, u64) {
    (FP_K0.load(), FP_K1.load())
}

const _: () = assert!(WIN.is_power_of_two());
const _: () = assert!(size_of::<Args>() == 24);

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

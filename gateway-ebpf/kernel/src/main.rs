//! apx-capture: kernel programs that turn the gateway's own socket syscalls
//! into per-request HTTP/1.1 records (see docs/ebpf-design.md).
//!
//! Hooks: syscall tracepoints, filtered by the gateway's tgid (`TARGET_TGID`).
//! * accept/accept4 exit: a new accepted socket → entry in `CONNS` (fd → state).
//! * read/recvfrom/readv exit: request bytes → request parser.
//! * write/sendto/writev exit: response bytes → response parser.
//! * close enter: flush what is in progress, send a close record, forget the fd.
//! * socket exit: an fd number reused by a new (upstream) socket is forgotten.
//!
//! Only fds learnt from accept are parsed, so the gateway's upstream (client)
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
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
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

// ---- maps -------------------------------------------------------------------

/// Records to user space.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);
/// Accepted socket fd → connection state.
#[map]
static CONNS: HashMap<u32, Conn> = HashMap::with_max_entries(2048, 0);
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
        Some(t) => unsafe { *(t as *const u8).add(fd as usize & (TRACKED_FDS - 1)) != 0 },
        None => true,
    }
}

#[inline(always)]
fn set_tracked(fd: u32, on: bool) {
    if (fd as usize) < TRACKED_FDS {
        if let Some(t) = TRACKED.get_ptr_mut(0) {
            unsafe { *(t as *mut u8).add(fd as usize & (TRACKED_FDS - 1)) = on as u8 };
        }
    }
}

/// Thread (pid_tgid) → arguments of the syscall it is in.
#[map]
static ARGS: HashMap<u64, Args> = HashMap::with_max_entries(1024, 0);
/// Listening fd → local port (host order), filled by the loader.
#[map]
static LISTENERS: HashMap<u32, u16> = HashMap::with_max_entries(64, 0);
/// Per-CPU parse scratch.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
/// One all-zero connection: the initial value of a new `CONNS` entry (never
/// written).
#[map]
static ZERO: Array<Conn> = Array::with_max_entries(1, 0);
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
    } else if CONNS.get_ptr(&fd).is_none() {
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
        let c = CONNS.get_ptr_mut(&fd)?;
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
    let Some(zero) = ZERO.get_ptr(0) else { return };
    if CONNS.insert(&fd, unsafe { &*zero }, 0).is_err() {
        stat_add(stats::CONN_MAP_FULL, 1);
        return;
    }
    let Some(c) = CONNS.get_ptr_mut(&fd) else {
        return;
    };
    set_tracked(fd, true);
    let now = unsafe { bpf_ktime_get_ns() };
    let c = unsafe { &mut *c };
    c.fd = fd;
    c.tgid = (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32;
    c.conn_id = next_conn_id();
    c.info.ts_accept_ns = now;
    match unsafe { LISTENERS.get(&a.fd) } {
        Some(p) => c.info.local_port = *p,
        None => c.flags |= F_LOCAL_UNKNOWN,
    }
    if !read_peer(a.ptr, c) {
        c.flags |= F_ADDR_UNKNOWN;
    }
    stat_add(stats::CONNS, 1);
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
fn read_peer(ptr: u64, c: &mut Conn) -> bool {
    if ptr == 0 {
        return false;
    }
    let Ok(sa) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(ptr as *const [u8; 24]) }) else {
        return false;
    };
    let family = u16::from_le_bytes([sa[0], sa[1]]);
    c.info.peer_port = u16::from_be_bytes([sa[2], sa[3]]);
    if family == 2 {
        c.info.family = 2;
        c.info.peer_addr[0] = sa[4];
        c.info.peer_addr[1] = sa[5];
        c.info.peer_addr[2] = sa[6];
        c.info.peer_addr[3] = sa[7];
        true
    } else if family == 10 {
        c.info.family = 10;
        let mut i = 0;
        while i < 16 {
            c.info.peer_addr[i] = sa[8 + i];
            i += 1;
        }
        true
    } else {
        c.info.peer_port = 0;
        false
    }
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
        let Some(c) = CONNS.get_ptr_mut(&a.fd) else {
            return;
        };
        (a, c)
    };
    let Some(ret) = arg::<i64>(ctx, RET) else {
        return;
    };
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
        if VEC {
            sc.iov_ptr = a.ptr;
            sc.iov_cnt = a.cnt;
            zero(&mut sc.iov_idx);
            zero(&mut sc.iov_n);
            zero(&mut sc.cur_ptr);
            zero(&mut sc.cur_len);
        } else {
            zero(&mut sc.iov_ptr);
            zero(&mut sc.iov_cnt);
            zero(&mut sc.iov_idx);
            sc.cur_ptr = a.ptr;
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

// ---- close and fd reuse -------------------------------------------------------

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let Some(_) = ours() else { return 0 };
    let Some(fd) = arg::<u64>(&ctx, ARG0) else {
        return 0;
    };
    let fd = fd as u32;
    let Some(c) = CONNS.get_ptr_mut(&fd) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe { parse::on_close(&mut *c, now) };
    let _ = CONNS.remove(&fd);
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
        let _ = CONNS.remove(&(ret as u32));
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
    counted(EVENTS.output::<T>(rec, wakeup_flags()).is_ok());
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
    counted(EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_ok());
}

/// Wake the reader only when `WAKEUP_BYTES` are pending.
#[inline(always)]
fn wakeup_flags() -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES.load() {
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

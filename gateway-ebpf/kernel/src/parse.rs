//! Streaming HTTP/1.1 parser, one byte per `bpf_loop` step, with all state in
//! the connection's map value so a message may be split across any number of
//! syscalls. Bodies are skipped arithmetically (Content-Length, chunk sizes),
//! so only start lines, header lines and chunk-size lines cost per-byte steps.
//!
//! Everything the verifier could track precisely across loop iterations (the
//! cursor, lengths) lives in map memory (`Scratch`), so each callback is
//! verified once instead of once per iteration.

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

use apx_capture_common::*;

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;

use crate::{emit, emit_bytes, extra_hashes, fp_key, read_user, zero, PACK};

/// Window of user bytes copied at a time.
pub const WIN: usize = 512;

/// Per-CPU scratch of one syscall's parse.
#[repr(C)]
pub struct Scratch {
    pub buf: [u8; WIN],
    pub now: u64,
    /// Position in the current buffer.
    pub pos: u64,
    /// Start (in the current buffer) and size of the bytes in `buf`.
    pub win_start: u64,
    pub win_len: u64,
    /// Current buffer.
    pub cur_ptr: u64,
    pub cur_len: u64,
    /// readv/writev: iovec array, count, next index; bytes of the syscall
    /// result not yet assigned to a buffer.
    pub iov_ptr: u64,
    pub iov_cnt: u64,
    pub iov_idx: u64,
    pub total_left: u64,
    /// iovecs `iov_first .. iov_first + iov_n` (base, len pairs), read
    /// `IOV_BATCH` at a time: one user-memory read instead of one per buffer
    /// (a chunked response is 3 buffers per chunk).
    pub iov: [u64; 2 * IOV_BATCH],
    pub iov_first: u64,
    pub iov_n: u64,
}

/// iovecs read from user memory at once.
pub const IOV_BATCH: usize = 4;

/// Parser state of one direction.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Dir {
    pub st: u8,
    /// Authorization value phase: 0 scheme, 1 spaces after scheme, 2 token.
    pub sub: u8,
    /// Capture slot of the current header value (NONE if not captured).
    pub slot: u8,
    /// Credential slot of the current header value (NONE if none).
    pub cred: u8,
    /// SP_* special handling of the current header value.
    pub special: u8,
    /// A message is in progress (its record holds data not yet sent).
    pub open: u8,
    pub chunked: u8,
    pub has_cl: u8,
    /// F_* bits of the current message.
    pub flags: u32,
    /// Length of the current token (method, target, value, chunk size…).
    pub tok: u32,
    pub name_hash: u64,
    /// Last 8 lower-cased bytes of the current token.
    pub tail: u64,
    /// Number being parsed (Content-Length, chunk size, status).
    pub num: u64,
    /// Body bytes left in the current Content-Length body or chunk.
    pub remaining: u64,
    /// Content-Length of the current message.
    pub cl: u64,
    /// Index of the current (or next) message on the connection.
    pub seq: u32,
    /// Authorization: length of the scheme, then of the token.
    pub scheme_len: u32,
    pub token_len: u32,
    pub _pad: u32,
}

/// Value of `CONNS`.
#[repr(C)]
pub struct Conn {
    pub info: ConnInfo,
    pub conn_id: u64,
    pub fd: u32,
    pub tgid: u32,
    /// Connection-level F_* bits (PEER_EOF, READ_ERROR, ADDR/LOCAL_UNKNOWN).
    pub flags: u32,
    /// 1: `req` is a complete request, not sent yet: it waits for its
    /// response to go out with it in one exchange record.
    pub held: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bit `seq & 63` set: request `seq` was HEAD.
    pub head_mask: u64,
    pub rq: Dir,
    pub rs: Dir,
    /// Whole-value fingerprint state and token-after-scheme state.
    pub sip_a: Sip,
    pub sip_b: Sip,
    /// `resp` then `req`, adjacent: an exchange record is these bytes,
    /// sent in one piece from `resp` (see `KIND_EXCHANGE`).
    pub resp: ResponseRecord,
    pub req: RequestRecord,
}

const _: () =
    assert!(offset_of!(Conn, req) == offset_of!(Conn, resp) + size_of::<ResponseRecord>());

pub struct LoopCtx {
    pub conn: *mut Conn,
    pub scratch: *mut Scratch,
}

const NONE: u8 = 0xff;
const SP_CL: u8 = 1;
const SP_TE: u8 = 2;

// States.
const ST_START: u8 = 0;
const ST_L1A: u8 = 1; // method / response version
const ST_L1B: u8 = 2; // target / status code
const ST_L1C: u8 = 3; // version / reason phrase
const ST_L1_LF: u8 = 4;
const ST_HSTART: u8 = 5;
const ST_HNAME: u8 = 6;
const ST_HOWS: u8 = 7;
const ST_HVAL: u8 = 8;
const ST_HVAL_LF: u8 = 9;
const ST_HEND_LF: u8 = 10;
const ST_BODY_CL: u8 = 11;
const ST_CHUNK_SIZE: u8 = 12;
const ST_CHUNK_EXT: u8 = 13;
const ST_CHUNK_SIZE_LF: u8 = 14;
const ST_CHUNK_DATA: u8 = 15;
const ST_CHUNK_CR: u8 = 16;
const ST_CHUNK_LF: u8 = 17;
const ST_TRAILER_START: u8 = 18;
const ST_TRAILER_LINE: u8 = 19;
const ST_TRAILER_END_LF: u8 = 20;
const ST_BODY_CLOSE: u8 = 21;
const ST_DEAD: u8 = 22;

const LANE_HIGH8: u64 = 0x8080_8080_8080_8080;

const CR: u8 = b'\r';
const LF: u8 = b'\n';

const fn pack(s: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < s.len() {
        v = (v << 8) | s[i] as u64;
        i += 1;
    }
    v
}
const TAIL_CHUNKED: u64 = pack(b"chunked");
const TAIL_BEARER: u64 = pack(b"bearer");
const TAIL_BASIC: u64 = pack(b"basic");
const TAIL_HTTP11: u64 = pack(b"http/1.1");
const TAIL_HTTP10: u64 = pack(b"http/1.0");
const TAIL_HTTP20: u64 = pack(b"http/2.0");
/// `bearer ` as the low 7 lanes of a little-endian word.
const BEARER_SP: u64 = u64::from_le_bytes(*b"bearer \0");
const LOW7: u64 = 0x00ff_ffff_ffff_ffff;
const METHOD_HEAD: u64 = pack(b"head");
const METHOD_CONNECT: u64 = pack(b"connect");
const METHOD_PRI: u64 = pack(b"pri");

#[inline(always)]
fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() {
        b + 32
    } else {
        b
    }
}

#[inline(always)]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

#[inline(always)]
fn hexval(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0xff,
    }
}

pub extern "C" fn req_cb(_i: u64, ctx: *mut c_void) -> i64 {
    unsafe { step::<false>(ctx) }
}

pub extern "C" fn resp_cb(_i: u64, ctx: *mut c_void) -> i64 {
    unsafe { step::<true>(ctx) }
}

/// One loop iteration: returns 1 to stop.
#[inline(always)]
unsafe fn step<const RESP: bool>(ctx: *mut c_void) -> i64 {
    let lc = &*(ctx as *const LoopCtx);
    let s = &mut *lc.scratch;
    let c = &mut *lc.conn;

    // Next buffer (readv/writev) when this one is used up.
    if s.pos >= s.cur_len {
        if s.total_left == 0 || s.iov_idx >= s.iov_cnt || s.iov_idx >= MAX_IOV as u64 {
            return 1;
        }
        if s.iov_idx < s.iov_first || s.iov_idx >= s.iov_first + s.iov_n {
            let left = s.iov_cnt - s.iov_idx;
            let n = if left < IOV_BATCH as u64 {
                left
            } else {
                IOV_BATCH as u64
            };
            let bytes = ((n * 16 - 1) & (IOV_BATCH as u64 * 16 - 1)) + 1;
            if !read_user(
                s.iov.as_mut_ptr() as *mut u8,
                bytes as u32,
                s.iov_ptr + s.iov_idx * 16,
            ) {
                return 1;
            }
            s.iov_first = s.iov_idx;
            s.iov_n = n;
        }
        let k = ((s.iov_idx - s.iov_first) as usize) & (IOV_BATCH - 1);
        let base = *s.iov.as_ptr().add(2 * k);
        let len = *s.iov.as_ptr().add(2 * k + 1);
        s.iov_idx += 1;
        let n = if len < s.total_left {
            len
        } else {
            s.total_left
        };
        s.total_left -= n;
        s.cur_ptr = base;
        s.cur_len = n;
        zero(&mut s.pos);
        zero(&mut s.win_start);
        zero(&mut s.win_len);
        // A response goes on with the new buffer in this same step: a
        // chunked response is written as buffers of a chunk-size line, the
        // data and a CRLF, so a step per switch was half of a streamed
        // chunk's steps. (Requests come in one buffer from hyper; their
        // callback stays as it was, at the edge of the verifier's budget.)
        if !RESP || n == 0 {
            return 0;
        }
    }

    let d = if RESP { &mut c.rs } else { &mut c.rq };
    let st = d.st;
    // Arithmetic skips: no per-byte work.
    if st == ST_BODY_CL || st == ST_CHUNK_DATA {
        let avail = s.cur_len - s.pos;
        let k = if d.remaining < avail {
            d.remaining
        } else {
            avail
        };
        s.pos += k;
        d.remaining -= k;
        add_bytes::<RESP>(c, k);
        if c_dir::<RESP>(c).remaining == 0 {
            if st == ST_BODY_CL {
                message_done::<RESP>(c, s.now);
            } else {
                c_dir::<RESP>(c).st = ST_CHUNK_CR;
            }
        }
        return 0;
    }
    if st == ST_BODY_CLOSE || st == ST_DEAD {
        let k = s.cur_len - s.pos;
        s.pos = s.cur_len;
        if st == ST_BODY_CLOSE {
            add_bytes::<RESP>(c, k);
            c.resp.ts_end_ns = s.now;
        }
        return 0;
    }

    // Per-byte path: make sure the byte is in the window.
    if s.pos >= s.win_start + s.win_len {
        let left = s.cur_len - s.pos;
        let n = if left > WIN as u64 { WIN as u64 } else { left };
        let n = ((n - 1) & (WIN as u64 - 1)) + 1;
        if !read_user(s.buf.as_mut_ptr(), n as u32, s.cur_ptr + s.pos) {
            // Unreadable buffer: give up on this syscall, count as unseen.
            return 1;
        }
        s.win_start = s.pos;
        s.win_len = n;
    }
    let idx = ((s.pos - s.win_start) as usize) & (WIN - 1);
    // A whole chunk-size line (`1a3\r\n`) in one step, then the data.
    if RESP && st == ST_CHUNK_SIZE && d.tok == 0 && idx <= WIN - 8 {
        let avail = s.win_start + s.win_len - s.pos;
        let n = if avail < 8 { avail } else { 8 };
        let k = chunk_line::<RESP>(c, window_word(s, idx), n);
        if k > 0 {
            s.pos += k;
            return 0;
        }
    }
    // Word paths: the run of up to 8 bytes at the cursor that the byte path
    // would treat alike (header-name bytes, plain value or target bytes, a
    // whole `HTTP/1.x`) in one step; the byte that ends the run goes to the
    // byte path. Lanes are found with the word-at-a-time classes of common
    // (exact, unit-tested against byte checks).
    if idx <= WIN - 8
        && (st == ST_HSTART || st == ST_HNAME || st == ST_HOWS || st == ST_HVAL || st <= ST_L1C)
    {
        let avail = s.win_start + s.win_len - s.pos;
        let valid = first_lanes(avail);
        let n = if avail < 8 { avail } else { 8 };
        let w = window_word(s, idx);
        // The following 8 bytes too, for header names and values: a run
        // that fills the first word may go on into the second.
        let (w2, n2) = if avail > 8 && idx <= WIN - 16 {
            let a2 = avail - 8;
            (window_word(s, idx + 8), if a2 < 8 { a2 } else { 8 })
        } else {
            (0, 0)
        };
        let k = word_step::<RESP>(c, st, w, valid, n, w2, n2, s.now);
        if k > 0 {
            s.pos += k;
            // The byte that ended the run (or the next one after a full
            // word) goes to the byte path in this same step, if the window
            // has it: one loop iteration less per run.
            if k >= avail {
                return 0;
            }
        }
    }
    let idx = ((s.pos - s.win_start) as usize) & (WIN - 1);
    let b = *s.buf.as_ptr().add(idx);
    s.pos += 1;
    byte::<RESP>(c, b, s.now);
    // A second byte in the same step where the word path could not take
    // it anyway: the LF after a CR, the space after a colon, the bytes of
    // Content-Length values, Authorization schemes and chunk lines.
    if s.pos < s.win_start + s.win_len && byte_next::<RESP>(c_dir::<RESP>(c)) {
        let idx = ((s.pos - s.win_start) as usize) & (WIN - 1);
        let b = *s.buf.as_ptr().add(idx);
        s.pos += 1;
        byte::<RESP>(c, b, s.now);
    }
    0
}

/// After a byte-path byte: is the next byte one the word path would not
/// take (so the step may as well feed it to the byte path)?
#[inline(always)]
fn byte_next<const RESP: bool>(d: &Dir) -> bool {
    let st = d.st;
    st == ST_HOWS
        || st == ST_HVAL_LF
        || st == ST_L1_LF
        || st == ST_HEND_LF
        || (st >= ST_CHUNK_SIZE && st <= ST_TRAILER_END_LF && st != ST_CHUNK_DATA)
        || (st == ST_HVAL && (d.special != 0 || (!RESP && d.cred == 0 && d.sub != 2)))
}

/// The 8 window bytes at `idx` (≤ WIN − 8) as a little-endian word, from
/// two aligned loads: the BPF backend splits an unaligned 8-byte load into
/// 8 single-byte loads and 14 shifts/ors. `buf` starts the map value, so
/// it is 8-byte aligned; when `idx` is not, the second word ends at most at
/// WIN. Lanes past the window hold stale bytes, as before: the callers
/// mask them with the valid-lane mask.
#[inline(always)]
unsafe fn window_word(s: &Scratch, idx: usize) -> u64 {
    let base = s.buf.as_ptr() as *const u64;
    let i = (idx >> 3) & (WIN / 8 - 1);
    let lo = u64::from_le(*base.add(i));
    let sh = ((idx & 7) * 8) as u32;
    if sh == 0 {
        return lo;
    }
    let hi = u64::from_le(*base.add((i + 1) & (WIN / 8 - 1)));
    (lo >> sh) | (hi << (64 - sh))
}

#[inline(always)]
unsafe fn c_dir<const RESP: bool>(c: &mut Conn) -> &mut Dir {
    if RESP {
        &mut c.rs
    } else {
        &mut c.rq
    }
}

#[inline(always)]
fn add_bytes<const RESP: bool>(c: &mut Conn, k: u64) {
    if RESP {
        c.resp.bytes += k;
    } else {
        c.req.bytes += k;
    }
}

/// Feed one byte of a start line, header section, chunk line or trailer.
#[inline(always)]
unsafe fn byte<const RESP: bool>(c: &mut Conn, b: u8, now: u64) {
    let mut st = c_dir::<RESP>(c).st;
    if st == ST_START {
        if b == CR || b == LF {
            return;
        }
        begin::<RESP>(c, now);
        st = ST_L1A;
    }
    add_bytes::<RESP>(c, 1);
    if st <= ST_L1_LF {
        if RESP {
            status_line(c, st, b);
        } else {
            request_line(c, st, b);
        }
        return;
    }
    if st <= ST_HEND_LF {
        header_byte::<RESP>(c, st, b, now);
        return;
    }
    chunk_byte::<RESP>(c, st, b, now);
}

/// First byte of a message: reset its record.
#[inline(always)]
unsafe fn begin<const RESP: bool>(c: &mut Conn, now: u64) {
    if RESP {
        let d = &mut c.rs;
        if d.open == 0 {
            zero_words(
                &mut c.resp as *mut _ as *mut u64,
                0,
                size_of::<ResponseRecord>() / 8,
            );
            c.resp.ts_first_ns = now;
            c.resp.content_length = u64::MAX;
            d.open = 1;
            d.flags = 0;
        }
    } else {
        // Its response did not end before this request began (pipelining):
        // the held request goes alone.
        send_held(c);
        reset_request(&mut c.req);
        c.req.conn = c.info;
        c.req.ts_first_ns = now;
        c.req.content_length = u64::MAX;
        c.rq.open = 1;
        c.rq.flags = 0;
    }
    let d = c_dir::<RESP>(c);
    d.st = ST_L1A;
    d.tok = 0;
    zero(&mut d.tail);
    zero(&mut d.num);
    d.has_cl = 0;
    d.cl = 0;
    d.chunked = 0;
    d.slot = NONE;
    d.cred = NONE;
    d.special = 0;
}

/// `*s = Sip::new(k0, k1)` without the two adjacent zero stores becoming
/// a `memset` call (a 16-iteration byte loop after bpf-linker).
#[inline(always)]
fn sip_init(s: &mut Sip, k0: u64, k1: u64) {
    let n = Sip::new(k0, k1);
    s.v0 = n.v0;
    s.v1 = n.v1;
    s.v2 = n.v2;
    s.v3 = n.v3;
    zero(&mut s.m);
    zero(&mut s.len);
}

/// Zero `n` u64 words from word `at` of `p` with single stores (volatile,
/// so LLVM does not turn them into a `memset`, which bpf-linker would make
/// a byte loop).
#[inline(always)]
unsafe fn zero_words(p: *mut u64, at: usize, n: usize) {
    let mut i = 0;
    while i < n {
        core::ptr::write_volatile(p.add(at + i), 0);
        i += 1;
    }
}

/// Clear the request record for the next message on the connection.
/// Only what the previous message can have written: the slots it used
/// (`slot_mask`: a slot's bytes are written only after `value_begin`
/// marked it) and everything before the capture slots (header, scalars,
/// method, version, credential slots, the whole target; `slot_mask`
/// too, so after the slots). The record lives in the connection's map
/// value, which starts all zero; not copying the whole 2.3 KB from `ZERO`
/// (a helper call that reads 36 more cache lines) saves ≈ 1.3 KB of
/// stores and all the reads for a request with 4 captured headers, and
/// the mask spares reading the `count` of all 14 slots (a line each).
#[inline(always)]
unsafe fn reset_request(r: &mut RequestRecord) {
    const FIELDS: usize = offset_of!(RequestRecord, fields);
    const FIELD_WORDS: usize = size_of::<Field>() / 8;
    let p = r as *mut RequestRecord as *mut u64;
    let mask = r.slot_mask;
    let mut i = 0;
    while i < FIELD_SLOTS {
        if mask & (1 << i) != 0 {
            zero_words(p, FIELDS / 8 + i * FIELD_WORDS, FIELD_WORDS);
        }
        i += 1;
    }
    zero_words(p, 0, FIELDS / 8);
}

const _: () = assert!(offset_of!(RequestRecord, fields) % 8 == 0);
const _: () = assert!(offset_of!(RequestRecord, creds) % 8 == 0);
const _: () = assert!(size_of::<Field>() % 8 == 0);
const _: () = assert!(offset_of!(RequestRecord, creds) < offset_of!(RequestRecord, fields));
const _: () = assert!(
    size_of::<RequestRecord>()
        == offset_of!(RequestRecord, fields) + size_of::<[Field; FIELD_SLOTS]>()
);
const _: () = assert!(size_of::<ResponseRecord>() % 8 == 0);

#[inline(always)]
unsafe fn request_line(c: &mut Conn, st: u8, b: u8) {
    let d = &mut c.rq;
    match st {
        ST_L1A => {
            if b == b' ' {
                if d.tok == 0 {
                    return fail::<false>(c, F_NOT_HTTP);
                }
                c.req.method_len = d.tok as u8;
                c.head_mask &= !(1u64 << (d.seq & 63));
                if d.tail == METHOD_HEAD {
                    c.head_mask |= 1u64 << (d.seq & 63);
                    d.flags |= F_HEAD;
                }
                if d.tail == METHOD_CONNECT {
                    d.flags |= F_UPGRADE;
                }
                d.st = ST_L1B;
                d.tok = 0;
                d.tail = 0;
            } else if (b.is_ascii_uppercase() || b == b'-' || b == b'_')
                && (d.tok as usize) < METHOD_CAP
            {
                let i = d.tok as usize;
                if i < METHOD_CAP {
                    *c.req.method.get_unchecked_mut(i) = b;
                }
                d.tok += 1;
                d.tail = (d.tail << 8) | lower(b) as u64;
            } else {
                fail::<false>(c, F_NOT_HTTP)
            }
        }
        ST_L1B => {
            if b == b' ' {
                if d.tok == 0 {
                    return fail::<false>(c, F_MALFORMED);
                }
                c.req.path_len = if d.tok > 0xffff { 0xffff } else { d.tok as u16 };
                d.st = ST_L1C;
                d.tok = 0;
                d.tail = 0;
            } else if b <= b' ' || b == 0x7f {
                fail::<false>(c, F_MALFORMED)
            } else {
                let i = d.tok as usize;
                if i < PATH_CAP {
                    *c.req.path.get_unchecked_mut(i) = b;
                } else {
                    d.flags |= F_PATH_TRUNC;
                }
                d.tok += 1;
            }
        }
        ST_L1C => {
            if b == CR || b == LF {
                c.req.version_len = d.tok as u8;
                if d.tok == 8 && (d.tail == TAIL_HTTP11 || d.tail == TAIL_HTTP10) {
                    d.st = if b == CR { ST_L1_LF } else { ST_HSTART };
                } else if d.tail == TAIL_HTTP20 && c.req.method_len == 3 {
                    // "PRI * HTTP/2.0": h2 prior knowledge.
                    let m = c.req.method;
                    if pack(&[lower(m[0]), lower(m[1]), lower(m[2])]) == METHOD_PRI {
                        d.flags |= F_H2;
                    }
                    fail::<false>(c, F_NOT_HTTP)
                } else {
                    fail::<false>(c, F_NOT_HTTP)
                }
            } else if d.tok < 8 {
                let i = d.tok as usize;
                if i < 8 {
                    *c.req.version.get_unchecked_mut(i) = b;
                }
                d.tok += 1;
                d.tail = (d.tail << 8) | lower(b) as u64;
            } else {
                fail::<false>(c, F_NOT_HTTP)
            }
        }
        _ => {
            // ST_L1_LF
            if b == LF {
                d.st = ST_HSTART;
            } else {
                fail::<false>(c, F_MALFORMED)
            }
        }
    }
}

/// Length of the run at the start of `w` (`n` valid bytes, lane mask
/// `valid`) whose lanes are not in `stop`, or `n` if none is.
#[inline(always)]
fn run_len(stop: u64, valid: u64, n: u64) -> u64 {
    let m = stop & valid;
    if m == 0 {
        n
    } else {
        first_lane(m)
    }
}

/// One word step (see `step`): bytes consumed, 0 = take the byte path.
#[inline(always)]
unsafe fn word_step<const RESP: bool>(
    c: &mut Conn,
    st: u8,
    w: u64,
    valid: u64,
    n: u64,
    w2: u64,
    n2: u64,
    now: u64,
) -> u64 {
    if st == ST_START || (!RESP && st == ST_L1A) {
        let b0 = w & 0xff;
        if st == ST_START && (b0 == CR as u64 || b0 == LF as u64) {
            return 0;
        }
        if RESP {
            // The whole response version at once.
            let lw = lower8(w).swap_bytes();
            if n < 8 || (lw != TAIL_HTTP11 && lw != TAIL_HTTP10) {
                return 0;
            }
            begin::<true>(c, now);
            c.rs.tok = 8;
            c.rs.tail = lw;
            c.resp.bytes += 8;
            return 8;
        }
        // A run of method bytes (upper case, '-', '_').
        let ok = range_lanes(w, b'A', b'Z') | byte_lanes(w, b'-') | byte_lanes(w, b'_');
        let k = run_len(!ok & LANE_HIGH8, valid, n);
        if k == 0 {
            return 0;
        }
        if st == ST_START {
            begin::<false>(c, now);
        }
        let i = c.rq.tok as usize;
        if i + 8 > METHOD_CAP {
            return 0;
        }
        core::ptr::write_unaligned(
            c.req.method.as_mut_ptr().add(i) as *mut u64,
            keep_low(w, k).to_le(),
        );
        let low = lower8(keep_low(w, k)).swap_bytes() >> (64 - 8 * k);
        let d = &mut c.rq;
        d.tail = if k >= 8 {
            low
        } else {
            (d.tail << (8 * k)) | low
        };
        d.tok += k as u32;
        d.st = ST_L1A;
        c.req.bytes += k;
        return k;
    }
    if RESP && st == ST_L1B && c.rs.tok == 0 && n >= 4 {
        // Status code and its separator, then the reason phrase if it
        // ends in this word.
        let want = first_lanes(3);
        let sep = (w >> 24) & 0xff;
        if range_lanes(w, b'0', b'9') & want != want
            || (sep != b' ' as u64 && sep != CR as u64 && sep != LF as u64)
        {
            return 0;
        }
        let status = (w & 0xf) * 100 + ((w >> 8) & 0xf) * 10 + ((w >> 16) & 0xf);
        c.resp.status = status as u16;
        let d = &mut c.rs;
        d.num = status;
        d.tok = 3;
        let mut k = 4;
        if sep == b' ' as u64 {
            d.st = ST_L1C;
            let end = (byte_lanes(w, CR) | byte_lanes(w, LF)) & valid & !first_lanes(4);
            k = if end == 0 { n } else { first_lane(end) };
        } else if sep == CR as u64 {
            d.st = ST_L1_LF;
        } else {
            d.st = ST_HSTART;
        }
        c.resp.bytes += k;
        return k;
    }
    if RESP && st == ST_L1C {
        // Reason phrase: everything up to CR/LF.
        let k = run_len(byte_lanes(w, CR) | byte_lanes(w, LF), valid, n);
        c.resp.bytes += k;
        return k;
    }
    if st == ST_HSTART || st == ST_HNAME {
        let k = run_len(not_tchar_lanes(w), valid, n);
        if k == 0 {
            return 0;
        }
        let d = c_dir::<RESP>(c);
        let h = if st == ST_HSTART {
            FNV_OFFSET
        } else {
            d.name_hash
        };
        let mut h = fnv_lanes(h, lower8(w), k);
        let mut total = k;
        if k == 8 && n2 > 0 {
            let k2 = run_len(not_tchar_lanes(w2), first_lanes(n2), n2);
            h = fnv_lanes(h, lower8(w2), k2);
            total += k2;
        }
        d.name_hash = h;
        d.st = ST_HNAME;
        add_bytes::<RESP>(c, total);
        return total;
    }
    if st == ST_HOWS || st == ST_HVAL {
        // Leading spaces/tabs of the value stay on the byte path.
        if st == ST_HOWS && (w & 0xff == b' ' as u64 || w & 0xff == b'\t' as u64) {
            return 0;
        }
        if c_dir::<RESP>(c).special == SP_CL {
            return length_digits::<RESP>(c, w, n);
        }
        let k = run_len(value_bad_lanes(w), valid, n);
        if k == 0 || !value_run::<RESP>(c, w, k) {
            return 0;
        }
        c_dir::<RESP>(c).st = ST_HVAL;
        if k == 8 && n2 > 0 {
            let k2 = run_len(value_bad_lanes(w2), first_lanes(n2), n2);
            if k2 > 0 && value_run::<RESP>(c, w2, k2) {
                return 8 + k2;
            }
        }
        return k;
    }
    if st == ST_L1C && !RESP && c.rq.tok == 0 && n == 8 {
        // The whole request version at once.
        let lw = lower8(w).swap_bytes();
        if lw == TAIL_HTTP11 || lw == TAIL_HTTP10 {
            core::ptr::write_unaligned(c.req.version.as_mut_ptr() as *mut u64, w.to_le());
            c.rq.tok = 8;
            c.rq.tail = lw;
            c.req.bytes += 8;
            return 8;
        }
        return 0;
    }
    if st == ST_L1A && RESP && c.rs.tok == 0 && c.rs.open != 0 && n == 8 {
        // The whole response version at once (the message was begun by
        // the byte path: ST_L1A is only reached through `begin`).
        let lw = lower8(w).swap_bytes();
        if lw == TAIL_HTTP11 || lw == TAIL_HTTP10 {
            c.rs.tok = 8;
            c.rs.tail = lw;
            c.resp.bytes += 8;
            return 8;
        }
        return 0;
    }
    if st == ST_L1B && !RESP {
        let stop = range_lanes(w, 0, b' ') | byte_lanes(w, 0x7f);
        let k = run_len(stop, valid, n);
        if k == 0 || !target_run(c, w, k) {
            return 0;
        }
        // A target that fills the word goes on into the next one.
        if k == 8 && n2 > 0 {
            let stop2 = range_lanes(w2, 0, b' ') | byte_lanes(w2, 0x7f);
            let k2 = run_len(stop2, first_lanes(n2), n2);
            if k2 > 0 && target_run(c, w2, k2) {
                return 8 + k2;
            }
        }
        return k;
    }
    0
}

/// A Content-Length value that ends in `w` (its first `n` bytes valid):
/// up to 7 digits, decoded (and for a request kept) at once; the byte
/// after them is left to the byte path, which judges it as it always does.
/// 0: the byte path takes the value.
#[inline(always)]
unsafe fn length_digits<const RESP: bool>(c: &mut Conn, w: u64, n: u64) -> u64 {
    let d = c_dir::<RESP>(c);
    let digits = run_len(!range_lanes(w, b'0', b'9') & LANE_HIGH8, first_lanes(n), n);
    if d.tok != 0 || digits == 0 || digits >= n {
        return 0;
    }
    let mut num = 0u64;
    let mut lane = 0;
    while lane < 7 {
        if lane >= digits {
            break;
        }
        num = num * 10 + ((w >> (8 * lane)) & 0xf);
        lane += 1;
    }
    d.num = num;
    d.tok = digits as u32;
    d.st = ST_HVAL;
    let slot = d.slot as usize;
    add_bytes::<RESP>(c, digits);
    if !RESP && slot < FIELD_SLOTS {
        // The value starts the slot (tok was 0); lanes past the digits zero.
        let v = c.req.fields.get_unchecked_mut(slot).value.as_mut_ptr();
        core::ptr::write_unaligned(v as *mut u64, keep_low(w, digits).to_le());
    }
    digits
}

/// FNV-1a over the low `k` (≤ 8) lanes of the lower-cased word `lw`.
#[inline(always)]
fn fnv_lanes(mut h: u64, lw: u64, k: u64) -> u64 {
    let mut lane = 0;
    while lane < 8 {
        if lane >= k {
            break;
        }
        h = (h ^ ((lw >> (8 * lane)) & 0xff)).wrapping_mul(FNV_PRIME);
        lane += 1;
    }
    h
}

/// `k` (1..=8) bytes of the request target (no space, no control byte) at
/// once, the low `k` bytes of `w`; false (nothing done) when they would
/// straddle the end of the kept part (then byte by byte).
#[inline(always)]
unsafe fn target_run(c: &mut Conn, w: u64, k: u64) -> bool {
    let i = c.rq.tok as usize;
    if i < PATH_CAP && i + 8 > PATH_CAP {
        return false;
    }
    if i + 8 <= PATH_CAP {
        // Lanes past `k` are written as zero (the record was zeroed at
        // `begin`, later bytes overwrite them).
        let p = c.req.path.as_mut_ptr().add(i);
        core::ptr::write_unaligned(p as *mut u64, keep_low(w, k).to_le());
    } else {
        c.rq.flags |= F_PATH_TRUNC;
    }
    c.rq.tok += k as u32;
    c.req.bytes += k;
    true
}

/// The low `k` (1..=8) bytes of `w`, the others zero.
#[inline(always)]
fn keep_low(w: u64, k: u64) -> u64 {
    if k >= 8 {
        w
    } else {
        w & ((1u64 << (8 * k)) - 1)
    }
}

#[inline(always)]
unsafe fn status_line(c: &mut Conn, st: u8, b: u8) {
    let d = &mut c.rs;
    match st {
        ST_L1A => {
            if b == b' ' {
                if d.tok == 8 && (d.tail == TAIL_HTTP11 || d.tail == TAIL_HTTP10) {
                    d.st = ST_L1B;
                    d.tok = 0;
                    d.num = 0;
                } else {
                    fail::<true>(c, F_NOT_HTTP)
                }
            } else if d.tok < 8 {
                d.tok += 1;
                d.tail = (d.tail << 8) | lower(b) as u64;
            } else {
                fail::<true>(c, F_NOT_HTTP)
            }
        }
        ST_L1B => {
            if b.is_ascii_digit() && d.tok < 3 {
                d.num = d.num * 10 + (b - b'0') as u64;
                d.tok += 1;
            } else if d.tok == 3 && (b == b' ' || b == CR || b == LF) {
                c.resp.status = d.num as u16;
                d.st = if b == b' ' {
                    ST_L1C
                } else if b == CR {
                    ST_L1_LF
                } else {
                    ST_HSTART
                };
            } else {
                fail::<true>(c, F_MALFORMED)
            }
        }
        ST_L1C => {
            if b == CR {
                d.st = ST_L1_LF;
            } else if b == LF {
                d.st = ST_HSTART;
            }
        }
        _ => {
            if b == LF {
                d.st = ST_HSTART;
            } else {
                fail::<true>(c, F_MALFORMED)
            }
        }
    }
}

#[inline(always)]
unsafe fn header_byte<const RESP: bool>(c: &mut Conn, st: u8, b: u8, now: u64) {
    match st {
        ST_HSTART => {
            if b == CR {
                c_dir::<RESP>(c).st = ST_HEND_LF;
            } else if b == LF {
                headers_done::<RESP>(c, now);
            } else if is_tchar(b) {
                let d = c_dir::<RESP>(c);
                d.name_hash = name_hash_step(FNV_OFFSET, b);
                d.st = ST_HNAME;
            } else {
                // Includes obs-fold (line starting with SP/HT).
                fail::<RESP>(c, F_MALFORMED)
            }
        }
        ST_HNAME => {
            if b == b':' {
                value_begin::<RESP>(c);
                c_dir::<RESP>(c).st = ST_HOWS;
            } else if is_tchar(b) {
                let d = c_dir::<RESP>(c);
                d.name_hash = name_hash_step(d.name_hash, b);
            } else {
                fail::<RESP>(c, F_MALFORMED)
            }
        }
        ST_HOWS | ST_HVAL => {
            if st == ST_HOWS && (b == b' ' || b == b'\t') {
                return;
            }
            if b == CR || b == LF {
                value_end::<RESP>(c);
                let d = c_dir::<RESP>(c);
                if d.st != ST_DEAD {
                    d.st = if b == CR { ST_HVAL_LF } else { ST_HSTART };
                }
            } else if (b < b' ' && b != b'\t') || b == 0x7f {
                fail::<RESP>(c, F_MALFORMED)
            } else {
                c_dir::<RESP>(c).st = ST_HVAL;
                value_byte::<RESP>(c, b);
            }
        }
        ST_HVAL_LF => {
            if b == LF {
                c_dir::<RESP>(c).st = ST_HSTART;
            } else {
                fail::<RESP>(c, F_MALFORMED)
            }
        }
        _ => {
            // ST_HEND_LF
            if b == LF {
                headers_done::<RESP>(c, now);
            } else {
                fail::<RESP>(c, F_MALFORMED)
            }
        }
    }
}

/// The name is complete (at ':'): decide what to do with the value.
#[inline(always)]
unsafe fn value_begin<const RESP: bool>(c: &mut Conn) {
    let h = c_dir::<RESP>(c).name_hash;
    let mut slot = NONE;
    let mut cred = NONE;
    let mut special = 0u8;
    if h == HASH_CONTENT_LENGTH {
        special = SP_CL;
    } else if h == HASH_TRANSFER_ENCODING {
        special = SP_TE;
    }
    if !RESP {
        c.req.header_count = c.req.header_count.saturating_add(1);
        let mut i = 0;
        while i < FIELD_SLOTS - EXTRA_SLOTS {
            if h == FIELD_HASHES[i] {
                slot = i as u8;
            }
            i += 1;
        }
        let extra = extra_hashes();
        let mut j = 0;
        while j < EXTRA_SLOTS {
            if extra[j] != 0 && h == extra[j] {
                slot = (FIELD_SLOTS - EXTRA_SLOTS + j) as u8;
            }
            j += 1;
        }
        let mut k = 0;
        while k < CRED_SLOTS {
            if h == CRED_HASHES[k] {
                cred = k as u8;
            }
            k += 1;
        }
        if (slot as usize) < FIELD_SLOTS {
            c.req.slot_mask |= 1 << slot;
            let f = c.req.fields.get_unchecked_mut(slot as usize);
            if f.count > 0 {
                c.rq.flags |= F_DUP_HEADER;
                slot = NONE;
            }
            f.count = f.count.saturating_add(1);
        }
        if (cred as usize) < CRED_SLOTS {
            let cr = c.req.creds.get_unchecked_mut(cred as usize);
            if cr.count > 0 {
                c.rq.flags |= F_DUP_HEADER;
                cred = NONE;
            } else {
                let (k0, k1) = fp_key();
                sip_init(&mut c.sip_a, k0, k1);
                sip_init(&mut c.sip_b, k0, k1);
            }
            cr.count = cr.count.saturating_add(1);
        }
    }
    let d = c_dir::<RESP>(c);
    d.slot = slot;
    d.cred = cred;
    d.special = special;
    d.tok = 0;
    zero(&mut d.tail);
    zero(&mut d.num);
    d.sub = 0;
    d.scheme_len = 0;
    d.token_len = 0;
}

#[inline(always)]
unsafe fn value_byte<const RESP: bool>(c: &mut Conn, b: u8) {
    let d = c_dir::<RESP>(c);
    let i = d.tok as usize;
    d.tok += 1;
    d.tail = (d.tail << 8) | lower(b) as u64;
    let special = d.special;
    let slot = d.slot as usize;
    let cred = d.cred;
    if special == SP_CL {
        if b.is_ascii_digit() && d.num < 100_000_000_000_000 {
            d.num = d.num * 10 + (b - b'0') as u64;
        } else if b != b' ' && b != b'\t' {
            return fail::<RESP>(c, F_MALFORMED);
        }
    }
    if RESP {
        return;
    }
    if slot < FIELD_SLOTS && i < VALUE_CAP {
        *c.req
            .fields
            .get_unchecked_mut(slot)
            .value
            .get_unchecked_mut(i) = b;
    }
    if cred == 0 {
        // Authorization: "<scheme> <token>" or a bare token.
        let d = &mut c.rq;
        if d.sub == 0 {
            if b == b' ' {
                d.sub = 1;
                // The scheme's lower-cased bytes (before this space).
                d.num = d.tail >> 8;
            } else {
                d.scheme_len += 1;
                c.sip_a.push(b);
            }
        } else if d.sub == 1 {
            if b != b' ' {
                d.sub = 2;
                d.token_len += 1;
                c.sip_b.push(b);
            }
        } else {
            d.token_len += 1;
            c.sip_b.push(b);
        }
    } else if (cred as usize) < CRED_SLOTS {
        c.rq.token_len += 1;
        c.sip_a.push(b);
    }
}

/// 8 plain bytes (no CR/LF/control byte) of the current header value at
/// once, when they need nothing byte by byte: not Content-Length or
/// Transfer-Encoding, not an Authorization scheme, not straddling the end
/// of a capture slot. Same effect as 8 `value_byte` calls otherwise; false
/// (nothing done) when the bytes must go one by one.
#[inline(always)]
unsafe fn value_run<const RESP: bool>(c: &mut Conn, w: u64, k: u64) -> bool {
    let d = c_dir::<RESP>(c);
    if d.special != 0 {
        return false;
    }
    if RESP {
        d.tok += k as u32;
        c.resp.bytes += k;
        return true;
    }
    let slot = d.slot as usize;
    let cred = d.cred;
    // Loaded from memory (not reused from a register): with two runs per
    // step LLVM otherwise checks one zero-extended copy of `tok + k` and
    // indexes with another, which the verifier cannot relate.
    let i = core::ptr::read_volatile(&d.tok) as usize;
    if cred == 0 && d.sub != 2 {
        // `Bearer ` and the token's first byte in one go (what the byte
        // path does with them, minus the scheme's fingerprint, which only
        // a value without a space uses): 4 byte-path steps less per call.
        if d.sub == 0 && i == 0 && k == 8 && slot >= FIELD_SLOTS && lower8(w) & LOW7 == BEARER_SP {
            let b7 = (w >> 56) as u8;
            d.scheme_len = 6;
            d.num = TAIL_BEARER;
            d.tail = lower8(w).swap_bytes();
            if b7 == b' ' {
                d.sub = 1;
            } else {
                d.sub = 2;
                d.token_len = 1;
                c.sip_b.push(b7);
            }
            c.rq.tok = 8;
            c.req.bytes += 8;
            return true;
        }
        return false;
    }
    if slot < FIELD_SLOTS && i < VALUE_CAP && i + 8 > VALUE_CAP {
        return false;
    }
    if slot < FIELD_SLOTS && i + 8 <= VALUE_CAP {
        // Lanes past `k` are written as zero, never as the bytes after the
        // value (CR, LF, the next header).
        let v = c
            .req
            .fields
            .get_unchecked_mut(slot)
            .value
            .as_mut_ptr()
            .add(i);
        core::ptr::write_unaligned(v as *mut u64, keep_low(w, k).to_le());
    }
    if cred == 0 {
        c.rq.token_len += k as u32;
        if k >= 8 {
            c.sip_b.push8(w);
        } else {
            c.sip_b.push_tail(w, k);
        }
    } else if (cred as usize) < CRED_SLOTS {
        c.rq.token_len += k as u32;
        if k >= 8 {
            c.sip_a.push8(w);
        } else {
            c.sip_a.push_tail(w, k);
        }
    }
    c.rq.tok += k as u32;
    c.req.bytes += k;
    true
}

/// End of a header value (CR/LF seen, or the record is being flushed).
#[inline(always)]
unsafe fn value_end<const RESP: bool>(c: &mut Conn) {
    let d = c_dir::<RESP>(c);
    let special = d.special;
    let tok = d.tok;
    let num = d.num;
    let tail = d.tail;
    if special == SP_CL {
        if tok == 0 {
            return fail::<RESP>(c, F_MALFORMED);
        }
        d.cl = num;
        d.has_cl = 1;
        if RESP {
            c.resp.content_length = num;
        } else {
            c.req.content_length = num;
        }
    } else if special == SP_TE {
        let d = c_dir::<RESP>(c);
        if tail & 0x00ff_ffff_ffff_ffff == TAIL_CHUNKED {
            d.chunked = 1;
        } else if RESP {
            d.chunked = 0;
        } else {
            // A request with a transfer coding other than final chunked
            // cannot be framed (RFC 9112 6.3).
            return fail::<false>(c, F_MALFORMED);
        }
    }
    if RESP {
        return;
    }
    finish_value(c);
}

/// Store what the current request header value produced (also for partial flushes).
#[inline(always)]
unsafe fn finish_value(c: &mut Conn) {
    let d = &mut c.rq;
    let slot = d.slot as usize;
    let tok = d.tok;
    if slot < FIELD_SLOTS {
        let f = c.req.fields.get_unchecked_mut(slot);
        f.len = if tok > 0xffff { 0xffff } else { tok as u16 };
        if tok as usize > VALUE_CAP {
            f.truncated = 1;
            d.flags |= F_VALUE_TRUNC;
        }
    }
    let cred = d.cred as usize;
    if cred < CRED_SLOTS {
        let (fp, scheme, len) = if cred == 0 && d.sub != 0 {
            let scheme = if d.scheme_len == 6 && d.tail_scheme() == TAIL_BEARER {
                SCHEME_BEARER
            } else if d.scheme_len == 5 && d.tail_scheme() == TAIL_BASIC {
                SCHEME_BASIC
            } else {
                SCHEME_OTHER
            };
            (c.sip_b.finish(), scheme, d.token_len)
        } else if cred == 0 {
            (c.sip_a.finish(), SCHEME_NONE, d.scheme_len)
        } else {
            (c.sip_a.finish(), SCHEME_NONE, d.token_len)
        };
        let cr = c.req.creds.get_unchecked_mut(cred);
        cr.fp = fp;
        cr.scheme = scheme;
        cr.token_len = if len > 0xffff { 0xffff } else { len as u16 };
    }
    let d = &mut c.rq;
    d.slot = NONE;
    d.cred = NONE;
    d.special = 0;
}

impl Dir {
    /// Lower-cased last 8 bytes of the Authorization scheme (saved at its space).
    #[inline(always)]
    fn tail_scheme(&self) -> u64 {
        self.num
    }
}

#[inline(always)]
unsafe fn headers_done<const RESP: bool>(c: &mut Conn, now: u64) {
    if RESP {
        let d = &mut c.rs;
        let status = c.resp.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim response: the final one follows on the same record.
            c.resp.interim = c.resp.interim.saturating_add(1);
            d.flags |= F_INTERIM_SEEN;
            d.st = ST_START;
            d.tok = 0;
            d.tail = 0;
            d.has_cl = 0;
            d.chunked = 0;
            return;
        }
        c.resp.ts_headers_ns = now;
        let head = c.head_mask & (1u64 << (d.seq & 63)) != 0;
        if status == 101 {
            d.flags |= F_UPGRADE;
            message_done::<true>(c, now);
            c.rs.st = ST_DEAD;
            c.rq.st = ST_DEAD;
            return;
        }
        if head || status == 204 || status == 304 {
            return message_done::<true>(c, now);
        }
        if d.chunked != 0 {
            d.flags |= F_CHUNKED;
            d.st = ST_CHUNK_SIZE;
            d.tok = 0;
            d.num = 0;
        } else if d.has_cl != 0 {
            if d.cl == 0 {
                return message_done::<true>(c, now);
            }
            d.remaining = d.cl;
            d.st = ST_BODY_CL;
        } else {
            d.flags |= F_END_AT_CLOSE;
            d.st = ST_BODY_CLOSE;
        }
    } else {
        c.req.ts_headers_ns = now;
        c.req.header_bytes = c.req.bytes as u32;
        let d = &mut c.rq;
        if d.flags & F_UPGRADE != 0 {
            // CONNECT: what follows is a tunnel, not HTTP.
            message_done::<false>(c, now);
            c.rq.st = ST_DEAD;
            return;
        }
        if d.chunked != 0 {
            d.flags |= F_CHUNKED;
            d.st = ST_CHUNK_SIZE;
            d.tok = 0;
            d.num = 0;
        } else if d.has_cl != 0 && d.cl > 0 {
            d.remaining = d.cl;
            d.st = ST_BODY_CL;
        } else {
            message_done::<false>(c, now);
        }
    }
}

#[inline(always)]
unsafe fn chunk_byte<const RESP: bool>(c: &mut Conn, st: u8, b: u8, now: u64) {
    let d = c_dir::<RESP>(c);
    match st {
        ST_CHUNK_SIZE => {
            let v = hexval(b);
            if v != 0xff && d.tok < 15 {
                d.num = (d.num << 4) | v as u64;
                d.tok += 1;
            } else if d.tok > 0 && (b == b';' || b == b' ' || b == b'\t') {
                d.st = ST_CHUNK_EXT;
            } else if d.tok > 0 && b == CR {
                d.st = ST_CHUNK_SIZE_LF;
            } else if d.tok > 0 && b == LF {
                chunk_size_done::<RESP>(c);
            } else {
                fail::<RESP>(c, F_MALFORMED)
            }
        }
        ST_CHUNK_EXT => {
            if b == CR {
                d.st = ST_CHUNK_SIZE_LF;
            } else if b == LF {
                chunk_size_done::<RESP>(c);
            }
        }
        ST_CHUNK_SIZE_LF => {
            if b == LF {
                chunk_size_done::<RESP>(c);
            } else {
                fail::<RESP>(c, F_MALFORMED)
            }
        }
        ST_CHUNK_CR => {
            if b == CR {
                d.st = ST_CHUNK_LF;
            } else if b == LF {
                d.st = ST_CHUNK_SIZE;
                d.tok = 0;
                d.num = 0;
            } else {
                fail::<RESP>(c, F_MALFORMED)
            }
        }
        ST_CHUNK_LF => {
            if b == LF {
                d.st = ST_CHUNK_SIZE;
                d.tok = 0;
                d.num = 0;
            } else {
                fail::<RESP>(c, F_MALFORMED)
            }
        }
        ST_TRAILER_START => {
            if b == CR {
                d.st = ST_TRAILER_END_LF;
            } else if b == LF {
                message_done::<RESP>(c, now);
            } else {
                d.st = ST_TRAILER_LINE;
            }
        }
        ST_TRAILER_LINE => {
            if b == LF {
                d.st = ST_TRAILER_START;
            }
        }
        _ => {
            // ST_TRAILER_END_LF
            if b == LF {
                message_done::<RESP>(c, now);
            } else {
                fail::<RESP>(c, F_MALFORMED)
            }
        }
    }
}

/// A chunk-size line that is all in `w` (its first `n` bytes valid): 1 to
/// 6 hex digits, CR, LF. Returns the bytes consumed, 0 to leave the line
/// to the byte path (an extension, a line split across buffers, a bad
/// byte: the byte path flags those).
#[inline(always)]
unsafe fn chunk_line<const RESP: bool>(c: &mut Conn, w: u64, n: u64) -> u64 {
    let cr = byte_lanes(w, CR) & first_lanes(n);
    if cr == 0 {
        return 0;
    }
    let digits = first_lane(cr);
    if digits == 0 || digits > 6 || digits + 2 > n || (w >> (8 * (digits + 1))) & 0xff != LF as u64
    {
        return 0;
    }
    let hex = range_lanes(w, b'0', b'9') | range_lanes(lower8(w), b'a', b'f');
    let want = first_lanes(digits);
    if hex & want != want {
        return 0;
    }
    // Each digit's value: its low nibble, plus 9 for a letter.
    let nibbles = (w & 0x0f0f_0f0f_0f0f_0f0f) + 9 * ((w >> 6) & 0x0101_0101_0101_0101);
    let mut num = 0u64;
    let mut lane = 0;
    while lane < 6 {
        if lane >= digits {
            break;
        }
        num = (num << 4) | ((nibbles >> (8 * lane)) & 0xf);
        lane += 1;
    }
    let d = c_dir::<RESP>(c);
    d.num = num;
    d.tok = digits as u32;
    add_bytes::<RESP>(c, digits + 2);
    chunk_size_done::<RESP>(c);
    digits + 2
}

#[inline(always)]
unsafe fn chunk_size_done<const RESP: bool>(c: &mut Conn) {
    let d = c_dir::<RESP>(c);
    if d.num == 0 {
        d.st = ST_TRAILER_START;
    } else {
        d.remaining = d.num;
        d.st = ST_CHUNK_DATA;
    }
}

/// The message is complete: send its record, get ready for the next one.
#[inline(always)]
unsafe fn message_done<const RESP: bool>(c: &mut Conn, now: u64) {
    send::<RESP>(c, now, 0);
    let d = c_dir::<RESP>(c);
    d.st = ST_START;
    d.seq += 1;
}

/// Send the record of the current message of one direction, with `extra` flags.
#[inline(always)]
unsafe fn send<const RESP: bool>(c: &mut Conn, now: u64, extra: u32) {
    let conn_flags = c.flags;
    let conn_id = c.conn_id;
    let fd = c.fd;
    let tgid = c.tgid;
    let d = c_dir::<RESP>(c);
    if d.open == 0 {
        return;
    }
    d.open = 0;
    let hdr = RecordHeader {
        kind: if RESP { KIND_RESPONSE } else { KIND_REQUEST },
        version: LAYOUT_VERSION,
        _pad0: 0,
        tgid,
        conn_id,
        seq: d.seq,
        fd,
        flags: d.flags | extra | (conn_flags & (F_ADDR_UNKNOWN | F_LOCAL_UNKNOWN)),
        _pad1: 0,
    };
    if RESP {
        c.resp.hdr = hdr;
        if extra & F_PARTIAL == 0 && c.resp.ts_end_ns == 0 {
            c.resp.ts_end_ns = now;
        }
        // The usual case: the request this answers is held, one record for
        // the call. A held request of another seq (a later one, while an
        // earlier response ends) waits for its own response.
        if c.held != 0 && c.req.hdr.seq == hdr.seq {
            c.held = 0;
            c.resp.hdr.kind = KIND_EXCHANGE;
            emit_packed(c, true);
        } else {
            emit(&c.resp);
        }
    } else {
        c.req.hdr = hdr;
        if extra & F_PARTIAL == 0 {
            c.req.ts_end_ns = now;
            // Complete: wait for the response (see `Conn::held`).
            c.held = 1;
        } else {
            emit_request(c);
        }
    }
}

/// Send the request record alone, packed.
#[inline(always)]
unsafe fn emit_request(c: &mut Conn) {
    emit_packed(c, false);
}

/// Largest packed record: a response and a request with every byte kept.
const PACKED_MAX: usize = size_of::<ResponseRecord>() + PACKED_REQUEST_MAX;
/// Offsets in `Pack::buf` are masked below this (a power of two ≥ `PACKED_MAX`).
const PACK_MASK: usize = 4096;

/// Per-CPU scratch where a record is packed (`PACK`).
#[repr(C)]
pub struct Pack {
    /// Bytes packed so far. In map memory, not in a register: the verifier
    /// then sees one state per slot of the packing loop instead of one per
    /// combination of slots in use (2^14).
    pub len: u64,
    /// Room for the largest piece at any masked offset.
    pub buf: [u8; PACK_MASK + PACKED_REQUEST_MAX],
}

/// Send the request record packed (see `RequestRecord` in common), after
/// the response record when `with_response` (an exchange): the pieces are
/// copied into per-CPU scratch (`PACK`) and sent with one ring-buffer
/// output of their total length. A function of its own, called, not
/// inlined: `send` is inlined at every place a parse can fail, and the
/// slot loop would be copied into each.
#[inline(never)]
unsafe fn emit_packed(c: &Conn, with_response: bool) {
    let Some(pack) = PACK.get_ptr_mut(0) else {
        return;
    };
    let p = &mut *pack;
    zero(&mut p.len);
    if with_response {
        pack_piece(
            p,
            &c.resp as *const _ as *const u8,
            size_of::<ResponseRecord>(),
        );
    }
    let q = &c.req;
    pack_piece(
        p,
        q as *const _ as *const u8,
        REQUEST_HEAD_LEN + packed_path_len(q.path_len),
    );
    let mask = q.slot_mask;
    let mut i = 0;
    while i < FIELD_SLOTS {
        if mask & (1 << i) != 0 {
            let f = q.fields.get_unchecked(i);
            pack_piece(p, f as *const Field as *const u8, packed_field_len(f.len));
        }
        i += 1;
    }
    let len = p.len as usize;
    emit_bytes(p.buf.as_ptr(), len, PACKED_MAX);
}

/// Append `n` (≤ `PACKED_REQUEST_MAX`) bytes of map memory to the pack.
/// The offset is masked and the buffer has room for the largest piece past
/// the mask, which is what the verifier checks; real offsets stay below
/// `PACKED_MAX`, under the mask.
#[inline(always)]
unsafe fn pack_piece(p: &mut Pack, src: *const u8, n: usize) {
    let at = p.len as usize & (PACK_MASK - 1);
    let n = if n > PACKED_REQUEST_MAX {
        PACKED_REQUEST_MAX
    } else {
        n
    };
    bpf_probe_read_kernel(
        p.buf.as_mut_ptr().add(at) as *mut c_void,
        n as u32,
        src as *const c_void,
    );
    p.len += n as u64;
}

const _: () = assert!(PACKED_MAX <= PACK_MASK && PACK_MASK.is_power_of_two());

/// A complete request still waiting for its response: send it alone.
#[inline(always)]
unsafe fn send_held(c: &mut Conn) {
    if c.held != 0 {
        c.held = 0;
        emit_request(c);
    }
}

/// Parsing cannot go on: send what we have (partial) and stop parsing this
/// direction (the other direction goes on: the gateway may still answer 400).
#[inline(always)]
unsafe fn fail<const RESP: bool>(c: &mut Conn, why: u32) {
    flush_partial::<RESP>(c);
    let d = c_dir::<RESP>(c);
    d.flags |= why;
    let now = 0;
    send::<RESP>(c, now, F_PARTIAL);
    c_dir::<RESP>(c).st = ST_DEAD;
}

/// Fill the lengths of the token that was being read when the record is cut.
#[inline(always)]
unsafe fn flush_partial<const RESP: bool>(c: &mut Conn) {
    if RESP {
        return;
    }
    let d = &c.rq;
    let tok = d.tok;
    match d.st {
        ST_L1A => {
            c.req.method_len = if tok > METHOD_CAP as u32 {
                METHOD_CAP as u8
            } else {
                tok as u8
            }
        }
        ST_L1B => c.req.path_len = if tok > 0xffff { 0xffff } else { tok as u16 },
        ST_L1C => c.req.version_len = if tok > 8 { 8 } else { tok as u8 },
        ST_HOWS | ST_HVAL => finish_value(c),
        _ => {}
    }
}

/// Bytes of a syscall that the loop did not look at.
#[inline(always)]
pub unsafe fn skip_unseen(c: &mut Conn, resp: bool, n: u64, now: u64) {
    let _ = now;
    let d = if resp { &mut c.rs } else { &mut c.rq };
    let st = d.st;
    if st == ST_DEAD {
        return;
    }
    if st == ST_BODY_CLOSE {
        c.resp.bytes += n;
        return;
    }
    if (st == ST_BODY_CL || st == ST_CHUNK_DATA) && d.remaining > n {
        d.remaining -= n;
        if resp {
            c.resp.bytes += n;
        } else {
            c.req.bytes += n;
        }
        return;
    }
    if resp {
        fail::<true>(c, F_BUDGET);
    } else {
        fail::<false>(c, F_BUDGET);
    }
}

/// After each write: a close-delimited body ends at the last write.
#[inline(always)]
pub unsafe fn after_write(c: &mut Conn, now: u64) {
    if c.rs.st == ST_BODY_CLOSE {
        c.resp.ts_end_ns = now;
    }
}

/// The gateway closes the socket: flush both directions, send the close record.
#[inline(always)]
pub unsafe fn on_close(c: &mut Conn, now: u64) {
    let started = c.rq.seq + c.rq.open as u32;
    let eof = c.flags & (F_PEER_EOF | F_READ_ERROR);
    if c.rs.open == 0 {
        // No response started: the complete request goes alone. (With a
        // response in progress, `send` below sends both in one record.)
        send_held(c);
    }
    if c.rq.open != 0 {
        flush_partial::<false>(c);
        send::<false>(c, now, F_PARTIAL | F_CLOSED | eof);
    }
    if c.rs.open != 0 {
        if c.rs.st == ST_BODY_CLOSE {
            // Complete: a close-delimited body ends with the connection.
            let end = c.resp.ts_end_ns;
            send::<true>(c, end, F_CLOSED);
        } else {
            send::<true>(c, now, F_PARTIAL | F_CLOSED | eof);
        }
    }
    let rec = CloseRecord {
        hdr: RecordHeader {
            kind: KIND_CLOSE,
            version: LAYOUT_VERSION,
            _pad0: 0,
            tgid: c.tgid,
            conn_id: c.conn_id,
            seq: started,
            fd: c.fd,
            flags: c.flags | F_CLOSED,
            _pad1: 0,
        },
        conn: c.info,
        ts_close_ns: now,
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        requests: c.rq.seq,
        responses: c.rs.seq,
    };
    emit(&rec);
}

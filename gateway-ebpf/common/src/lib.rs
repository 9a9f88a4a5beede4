//! Records that the apx eBPF programs send to user space, and the functions both
//! sides must compute identically (header-name hash, credential fingerprint).
//!
//! This crate has no dependencies and is `no_std`: the kernel programs compile it
//! for `bpfel-unknown-none` on nightly, the gateway compiles it on stable. The
//! optional `std` feature adds user-side helpers (parsing a record out of the
//! ring-buffer bytes, joining requests with responses).
//!
//! Every record starts with a [`RecordHeader`]; `kind` tells which struct follows.
//! All integers are in host byte order (little-endian on the targets we build),
//! except the peer address and port, which are kept in network order as the
//! kernel hands them over (see field docs). Timestamps are `CLOCK_MONOTONIC`
//! nanoseconds (`bpf_ktime_get_ns`), taken when the gateway's syscall returned.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "std")]
pub mod user;

/// Version of the layout below; bumped on any incompatible change.
/// 2: exchange records ([`KIND_EXCHANGE`]); a request's capture slots come
/// last and a record stops after the last slot in use.
/// 3: request records are packed (see [`RequestRecord`]): the kept bytes
/// of the target and of each slot in use, not the fixed-size arrays.
pub const LAYOUT_VERSION: u8 = 3;

/// [`RecordHeader::kind`] of a [`RequestRecord`].
pub const KIND_REQUEST: u8 = 1;
/// [`RecordHeader::kind`] of a [`ResponseRecord`].
pub const KIND_RESPONSE: u8 = 2;
/// [`RecordHeader::kind`] of a [`CloseRecord`].
pub const KIND_CLOSE: u8 = 3;
/// [`RecordHeader::kind`] of an exchange: a [`ResponseRecord`] (whose header
/// carries this kind) followed by the [`RequestRecord`] it answers, packed
/// like a request record (see [`RequestRecord`]). The programs hold a
/// complete request until its response is complete and send both in one
/// ring-buffer record: one reservation, copy and commit per call instead of
/// two, and no join for the reader. A request goes alone (`KIND_REQUEST`)
/// when it cannot wait: the next request starts before its response ends
/// (pipelining), it is cut short (flags), or the connection closes.
pub const KIND_EXCHANGE: u8 = 4;

// ---- flags (RecordHeader::flags) -------------------------------------------

/// The message did not complete: its connection closed (or parsing stopped)
/// first. The fields filled so far are valid, the others are zero.
pub const F_PARTIAL: u32 = 1 << 0;
/// The request target was longer than [`PATH_CAP`]; `path_len` is the real length.
pub const F_PATH_TRUNC: u32 = 1 << 1;
/// At least one captured header value was longer than [`VALUE_CAP`].
pub const F_VALUE_TRUNC: u32 = 1 << 2;
/// The bytes broke HTTP/1.x syntax (bad start line, bad header line, bad
/// Content-Length, bad chunk size, obsolete line folding). The connection is
/// no longer parsed afterwards; later bytes are only counted.
pub const F_MALFORMED: u32 = 1 << 3;
/// The first bytes of the connection were not an HTTP/1.x request at all
/// (TLS handshake, HTTP/2 preface, random bytes). Nothing is parsed after that.
pub const F_NOT_HTTP: u32 = 1 << 4;
/// The client closed its side (a read returned 0) before the message ended.
pub const F_PEER_EOF: u32 = 1 << 5;
/// The record was emitted because the gateway closed the socket.
pub const F_CLOSED: u32 = 1 << 6;
/// A single syscall needed more parser steps than the per-syscall budget
/// ([`STEP_BUDGET`]: header / chunk-line bytes plus one step per buffer), or
/// its memory could not be read; the parser lost its place in the stream and
/// stopped for that direction of the connection.
pub const F_BUDGET: u32 = 1 << 7;
/// The body used chunked transfer coding.
pub const F_CHUNKED: u32 = 1 << 8;
/// Response without Content-Length or chunking: its end is the last write
/// before close (`ts_end_ns` is that write, the record is sent at close).
pub const F_END_AT_CLOSE: u32 = 1 << 9;
/// The peer address could not be read at accept time (`family` is 0).
pub const F_ADDR_UNKNOWN: u32 = 1 << 10;
/// The listening socket was not registered, so `local_port` is 0.
pub const F_LOCAL_UNKNOWN: u32 = 1 << 11;
/// The connection switched protocols (101, CONNECT): parsing stopped.
pub const F_UPGRADE: u32 = 1 << 12;
/// The connection began with the HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0`).
pub const F_H2: u32 = 1 << 13;
/// A read on the connection failed (e.g. ECONNRESET).
pub const F_READ_ERROR: u32 = 1 << 14;
/// The request was a HEAD request (so its response has no body).
pub const F_HEAD: u32 = 1 << 15;
/// Response: it was an interim 1xx before the final one (counted in `interim`).
pub const F_INTERIM_SEEN: u32 = 1 << 16;
/// A header appeared more than once; the first value was kept (see `count`).
pub const F_DUP_HEADER: u32 = 1 << 17;

// ---- bounds ----------------------------------------------------------------

/// Bytes of the request target kept.
pub const PATH_CAP: usize = 256;
/// Bytes of the method kept (longer methods are treated as non-HTTP).
pub const METHOD_CAP: usize = 16;
/// Bytes kept of each captured header value.
pub const VALUE_CAP: usize = 124;
/// Captured (clear-text) header slots: 10 fixed + [`EXTRA_SLOTS`] configurable.
pub const FIELD_SLOTS: usize = 14;
/// Configurable header names (slots 10..14), set by the loader.
pub const EXTRA_SLOTS: usize = 4;
/// Credential slots (never captured in clear).
pub const CRED_SLOTS: usize = 4;
/// Parser steps (bytes of start line/headers/chunk lines) allowed per syscall.
pub const STEP_BUDGET: u32 = 16384;
/// iovecs looked at per readv/writev call: UIO_MAXIOV, the most the kernel
/// accepts, so every buffer of a successful call is seen (each costs one
/// step of [`STEP_BUDGET`]). hyper writes up to 64 (a chunked response:
/// 3 per chunk, so a burst of SSE events easily exceeds 16).
pub const MAX_IOV: usize = 1024;

/// Names of the fixed capture slots, lower case, in slot order.
pub const FIELD_NAMES: [&str; FIELD_SLOTS - EXTRA_SLOTS] = [
    "host",
    "user-agent",
    "content-type",
    "content-length",
    "x-request-id",
    "traceparent",
    "anthropic-version",
    "mcp-session-id",
    "mcp-method",
    "mcp-name",
];

/// Names of the credential slots, lower case, in slot order.
pub const CRED_NAMES: [&str; CRED_SLOTS] = ["authorization", "x-api-key", "cookie", "api-key"];

/// [`Cred::scheme`]: no space in the value, the whole value was fingerprinted.
pub const SCHEME_NONE: u8 = 0;
/// [`Cred::scheme`]: `Bearer <token>`; the token was fingerprinted.
pub const SCHEME_BEARER: u8 = 1;
/// [`Cred::scheme`]: `Basic <b64>`; the base64 text was fingerprinted.
pub const SCHEME_BASIC: u8 = 2;
/// [`Cred::scheme`]: another `<scheme> <rest>`; the rest was fingerprinted.
pub const SCHEME_OTHER: u8 = 3;

// ---- header-name hash ------------------------------------------------------

/// FNV-1a 64 offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One step of the header-name hash: FNV-1a 64 over ASCII-lower-cased bytes.
#[inline(always)]
pub const fn name_hash_step(h: u64, b: u8) -> u64 {
    let l = if b >= b'A' && b <= b'Z' { b + 32 } else { b };
    (h ^ l as u64).wrapping_mul(FNV_PRIME)
}

/// Hash of a header name, case-insensitive. The kernel matches names by this
/// value only; the loader passes configurable names as `name_hash(name)`.
pub const fn name_hash(name: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < name.len() {
        h = name_hash_step(h, name[i]);
        i += 1;
    }
    h
}

/// `name_hash` of each fixed capture slot.
pub const FIELD_HASHES: [u64; FIELD_SLOTS - EXTRA_SLOTS] = {
    let mut out = [0u64; FIELD_SLOTS - EXTRA_SLOTS];
    let mut i = 0;
    while i < out.len() {
        out[i] = name_hash(FIELD_NAMES[i].as_bytes());
        i += 1;
    }
    out
};
/// `name_hash` of each credential slot.
pub const CRED_HASHES: [u64; CRED_SLOTS] = {
    let mut out = [0u64; CRED_SLOTS];
    let mut i = 0;
    while i < out.len() {
        out[i] = name_hash(CRED_NAMES[i].as_bytes());
        i += 1;
    }
    out
};
/// `name_hash("content-length")`.
pub const HASH_CONTENT_LENGTH: u64 = name_hash(b"content-length");
/// `name_hash("transfer-encoding")`.
pub const HASH_TRANSFER_ENCODING: u64 = name_hash(b"transfer-encoding");
/// Slot index of Content-Length among the capture slots.
pub const SLOT_CONTENT_LENGTH: usize = 3;

// ---- credential fingerprint: SipHash-2-4 -----------------------------------

/// Streaming SipHash-2-4 (Aumasson & Bernstein), fed one byte at a time so the
/// kernel can hash a header value that arrives across several reads.
///
/// The credential fingerprint is `SipHash-2-4(k0, k1, token)` where `(k0, k1)`
/// is the 128-bit key the loader sets (globals `FP_K0`, `FP_K1`) and `token` is:
/// * for `Authorization`: the bytes after the first space if the value has one
///   (`Bearer sk-…` → `sk-…`, leading spaces of the token skipped), else the
///   whole value;
/// * for `x-api-key`, `api-key`, `Cookie`: the whole value;
///
/// always after the leading spaces/tabs of the value, up to (not including)
/// the CR/LF ending the line; trailing spaces are part of it. The output is the
/// 64-bit SipHash value, printed as 16 lower-case hex digits (`{:016x}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Sip {
    pub v0: u64,
    pub v1: u64,
    pub v2: u64,
    pub v3: u64,
    /// Bytes of the current (incomplete) 8-byte word, little-endian.
    pub m: u64,
    /// Bytes absorbed so far.
    pub len: u64,
}

impl Sip {
    /// A hasher keyed with `(k0, k1)`.
    #[inline(always)]
    pub const fn new(k0: u64, k1: u64) -> Sip {
        Sip {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            m: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    /// Absorb one byte.
    #[inline(always)]
    pub fn push(&mut self, b: u8) {
        self.m |= (b as u64) << ((self.len & 7) * 8);
        self.len += 1;
        if self.len & 7 == 0 {
            let m = self.m;
            self.v3 ^= m;
            self.round();
            self.round();
            self.v0 ^= m;
            self.m = 0;
        }
    }

    /// Absorb 8 bytes at once (`w` little-endian: its low byte first); the
    /// same as 8 calls of [`Sip::push`], whatever was absorbed before.
    #[inline(always)]
    pub fn push8(&mut self, w: u64) {
        let bits = (self.len & 7) * 8;
        let (m, rest) = if bits == 0 {
            (w, 0)
        } else {
            (self.m | (w << bits), w >> (64 - bits))
        };
        self.v3 ^= m;
        self.round();
        self.round();
        self.v0 ^= m;
        self.m = rest;
        self.len += 8;
    }

    /// Absorb the low `n` bytes of `w` (`n` < 8; the other bytes are
    /// ignored); the same as `n` calls of [`Sip::push`].
    #[inline(always)]
    pub fn push_tail(&mut self, w: u64, n: u64) {
        if n == 0 {
            return;
        }
        let w = w & ((1u64 << (8 * (n & 7))) - 1);
        let bits = (self.len & 7) * 8;
        let filled = bits + 8 * n;
        self.m |= w << bits;
        self.len += n;
        if filled >= 64 {
            let m = self.m;
            self.v3 ^= m;
            self.round();
            self.round();
            self.v0 ^= m;
            self.m = if bits == 0 { 0 } else { w >> (64 - bits) };
        }
    }

    /// The 64-bit hash of the bytes absorbed so far (the state is not changed).
    #[inline(always)]
    pub fn finish(&self) -> u64 {
        let mut s = *self;
        let b = ((s.len & 0xff) << 56) | s.m;
        s.v3 ^= b;
        s.round();
        s.round();
        s.v0 ^= b;
        s.v2 ^= 0xff;
        s.round();
        s.round();
        s.round();
        s.round();
        s.v0 ^ s.v1 ^ s.v2 ^ s.v3
    }
}

/// True when none of the 8 bytes of `w` is a control byte (< 0x20, tab
/// included) or DEL: plain header-value bytes, which need no per-byte look
/// (bytes >= 0x80, obs-text, are plain). Word-at-a-time ("has less than",
/// "has zero" bit tricks), exact.
#[inline(always)]
pub const fn plain8(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let del = w ^ (ONES * 0x7f);
    let has_del = del.wrapping_sub(ONES) & !del & HIGH;
    below_space == 0 && has_del == 0
}

/// True when one of the 8 bytes of `w` is `b` (exact).
#[inline(always)]
pub const fn has_byte(w: u64, b: u8) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = w ^ (ONES * b as u64);
    x.wrapping_sub(ONES) & !x & (ONES * 0x80) != 0
}

// ---- word-at-a-time byte classes (lanes = the 8 bytes of a little-endian word) ----
//
// Each `*_lanes` function returns a mask with bit 7 of every lane whose byte
// is in the class, and no other bit, exactly (no carries between lanes: the
// subtractions run on lanes that are all >= 0x80). The kernel parser uses
// them to find the end of a header line, the name's colon, or a byte that
// needs the slow path, 8 bytes per instruction sequence.

const LANE_ONES: u64 = 0x0101_0101_0101_0101;
const LANE_HIGH: u64 = 0x8080_8080_8080_8080;

/// Lanes whose byte is in `lo..=hi` (`hi < 0x80`; bytes >= 0x80 never match).
#[inline(always)]
pub const fn range_lanes(w: u64, lo: u8, hi: u8) -> u64 {
    let x = (w & !LANE_HIGH) | LANE_HIGH;
    let ge_lo = x.wrapping_sub(LANE_ONES * lo as u64);
    let gt_hi = x.wrapping_sub(LANE_ONES * (hi as u64 + 1));
    ge_lo & !gt_hi & !w & LANE_HIGH
}

/// Lanes whose byte is `b` (`b < 0x80`).
#[inline(always)]
pub const fn byte_lanes(w: u64, b: u8) -> u64 {
    range_lanes(w, b, b)
}

/// Lanes whose byte may not appear in a header value: control bytes other
/// than HT (CR and LF included) and DEL.
#[inline(always)]
pub const fn value_bad_lanes(w: u64) -> u64 {
    range_lanes(w, 0x00, 0x08) | range_lanes(w, 0x0a, 0x1f) | byte_lanes(w, 0x7f)
}

/// Lanes whose byte is not an RFC 9110 `tchar` (header-name byte).
#[inline(always)]
pub const fn not_tchar_lanes(w: u64) -> u64 {
    (w & LANE_HIGH)
        | range_lanes(w, 0x00, 0x20)
        | byte_lanes(w, b'"')
        | range_lanes(w, b'(', b')')
        | byte_lanes(w, b',')
        | byte_lanes(w, b'/')
        | range_lanes(w, b':', b'@')
        | range_lanes(w, b'[', b']')
        | byte_lanes(w, b'{')
        | byte_lanes(w, b'}')
        | byte_lanes(w, 0x7f)
}

/// `w` with ASCII upper-case letters lower-cased.
#[inline(always)]
pub const fn lower8(w: u64) -> u64 {
    w | (range_lanes(w, b'A', b'Z') >> 2)
}

/// Index (0..8) of the first lane set in a non-zero lane mask.
#[inline(always)]
pub const fn first_lane(m: u64) -> u64 {
    let low = m & m.wrapping_neg();
    (low >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56
}

/// Lane mask of the first `n` lanes (all 8 for `n >= 8`).
#[inline(always)]
pub const fn first_lanes(n: u64) -> u64 {
    if n >= 8 {
        LANE_HIGH
    } else {
        LANE_HIGH & ((1u64 << (8 * n)) - 1)
    }
}

/// Fingerprint of a whole token, as user space computes it for its known keys.
pub fn fingerprint(k0: u64, k1: u64, token: &[u8]) -> u64 {
    let mut s = Sip::new(k0, k1);
    for &b in token {
        s.push(b);
    }
    s.finish()
}

/// Derive `(k0, k1)` from 16 key bytes (little-endian halves).
pub const fn key_from_bytes(k: &[u8; 16]) -> (u64, u64) {
    let mut k0 = 0u64;
    let mut k1 = 0u64;
    let mut i = 0;
    while i < 8 {
        k0 |= (k[i] as u64) << (8 * i);
        k1 |= (k[i + 8] as u64) << (8 * i);
        i += 1;
    }
    (k0, k1)
}

// ---- records -----------------------------------------------------------------

/// First 32 bytes of every record.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct RecordHeader {
    /// `KIND_REQUEST`, `KIND_RESPONSE` or `KIND_CLOSE`.
    pub kind: u8,
    /// [`LAYOUT_VERSION`].
    pub version: u8,
    pub _pad0: u16,
    /// Process (tgid) that owns the socket.
    pub tgid: u32,
    /// Connection id, unique for the life of the programs: accepting CPU in
    /// the top 8 bits, a per-CPU counter below.
    pub conn_id: u64,
    /// Request (or response) number on this connection, from 0. A response
    /// answers the request with the same `seq` (HTTP/1.1 keeps order).
    /// For `KIND_CLOSE`: the number of requests started.
    pub seq: u32,
    /// The socket's file descriptor in the gateway.
    pub fd: u32,
    /// `F_*` bits.
    pub flags: u32,
    pub _pad1: u32,
}

/// Where the connection comes from (filled at accept).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ConnInfo {
    /// Peer address: IPv4 in the first 4 bytes, IPv6 in all 16; network order.
    pub peer_addr: [u8; 16],
    /// `AF_INET` (2), `AF_INET6` (10), or 0 if unknown.
    pub family: u16,
    /// Peer port, host order.
    pub peer_port: u16,
    /// Local (listening) port, host order; 0 if the listener was not registered.
    pub local_port: u16,
    pub _pad: u16,
    /// Accept time.
    pub ts_accept_ns: u64,
}

/// A captured clear-text header value.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Field {
    /// Full length of the (first) value, saturating at 65535; `min(len, VALUE_CAP)`
    /// bytes of `value` are valid.
    pub len: u16,
    /// Times the header appeared (saturating at 255); 0 = absent.
    pub count: u8,
    /// 1 if the value was longer than `VALUE_CAP`.
    pub truncated: u8,
    pub value: [u8; VALUE_CAP],
}

/// A credential header: presence and fingerprint only.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Cred {
    /// Times the header appeared (saturating at 255); 0 = absent.
    pub count: u8,
    /// `SCHEME_*` (Authorization only; others are `SCHEME_NONE`).
    pub scheme: u8,
    /// Length of the fingerprinted token, saturating at 65535.
    pub token_len: u16,
    pub _pad: u32,
    /// SipHash-2-4 fingerprint of the (first) token; see [`Sip`].
    pub fp: u64,
}

/// One HTTP request as the gateway read it.
///
/// In the ring buffer a request is *packed*: the struct's bytes up to
/// `path` ([`REQUEST_HEAD_LEN`]), then the kept bytes of `path`
/// ([`packed_path_len`]), then, for each capture slot whose bit is set in
/// `slot_mask` in slot order, the slot's first bytes: `len`, `count`,
/// `truncated` and the kept value ([`packed_field_len`]). Every piece is a
/// multiple of 8 bytes. A typical call's request is ≈ 300 bytes instead of
/// ≈ 900 with the fixed-size arrays: copying the bytes into the ring
/// (whose lines the reader last touched, on another CPU) was the largest
/// single cost of sending a record. `user::Record::parse` unpacks it into
/// the whole struct, zeroing what was left out.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct RequestRecord {
    pub hdr: RecordHeader,
    pub conn: ConnInfo,
    /// Return of the read that delivered the request's first byte.
    pub ts_first_ns: u64,
    /// Return of the read that completed the header section (0: never).
    pub ts_headers_ns: u64,
    /// Return of the read that delivered the last body byte (0: never).
    pub ts_end_ns: u64,
    /// Bytes of this request seen (start line + headers + body).
    pub bytes: u64,
    /// Content-Length as parsed (`u64::MAX` if absent).
    pub content_length: u64,
    /// Size of the header section (start line included).
    pub header_bytes: u32,
    /// Header lines seen.
    pub header_count: u16,
    /// Real length of the request target (saturating); `min(path_len, PATH_CAP)` kept.
    pub path_len: u16,
    pub method_len: u8,
    pub version_len: u8,
    /// Bit `i` set: capture slot `i` is in use (`fields[i].count` > 0).
    pub slot_mask: u16,
    pub _pad: [u8; 4],
    pub method: [u8; METHOD_CAP],
    /// e.g. `HTTP/1.1`.
    pub version: [u8; 8],
    /// Credential slots, in `CRED_NAMES` order.
    pub creds: [Cred; CRED_SLOTS],
    pub path: [u8; PATH_CAP],
    /// Capture slots: `FIELD_NAMES` then the 4 configured names. Most
    /// requests fill a few, and the 14 × 128 bytes are 80 % of the struct:
    /// a packed record carries only the ones in use.
    pub fields: [Field; FIELD_SLOTS],
}

/// Bytes of a request record before its capture slots.
pub const REQUEST_FIXED_LEN: usize = core::mem::offset_of!(RequestRecord, fields);

/// Bytes of a packed request before its target: the struct up to `path`
/// (header, connection, scalars, method, version, credential slots).
pub const REQUEST_HEAD_LEN: usize = core::mem::offset_of!(RequestRecord, path);
/// Bytes of a capture slot before its value (`len`, `count`, `truncated`).
pub const FIELD_HEAD_LEN: usize = core::mem::offset_of!(Field, value);
/// Largest packed request: every byte of the target and of every slot.
pub const PACKED_REQUEST_MAX: usize = core::mem::size_of::<RequestRecord>();

/// Bytes of the target a packed request carries: the kept part of
/// `path_len` bytes, rounded up to 8.
#[inline(always)]
pub const fn packed_path_len(path_len: u16) -> usize {
    let kept = if (path_len as usize) < PATH_CAP {
        path_len as usize
    } else {
        PATH_CAP
    };
    (kept + 7) & !7
}

/// Bytes of a capture slot a packed request carries for a value of real
/// length `len`: the slot's head and the kept value, rounded up to 8.
#[inline(always)]
pub const fn packed_field_len(len: u16) -> usize {
    let kept = if (len as usize) < VALUE_CAP {
        len as usize
    } else {
        VALUE_CAP
    };
    (FIELD_HEAD_LEN + kept + 7) & !7
}

/// One HTTP response as the gateway wrote it.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ResponseRecord {
    pub hdr: RecordHeader,
    /// Return of the write that carried the first byte of the response
    /// (of the first interim 1xx if there was one).
    pub ts_first_ns: u64,
    /// Return of the write that completed the header section.
    pub ts_headers_ns: u64,
    /// Return of the write that carried the last byte of the body.
    pub ts_end_ns: u64,
    /// Bytes of this response (status line + headers + body, interim included).
    pub bytes: u64,
    /// Content-Length as parsed (`u64::MAX` if absent).
    pub content_length: u64,
    /// Final status code (0 if the status line was not complete).
    pub status: u16,
    /// Interim (1xx) responses before the final one.
    pub interim: u16,
    pub _pad: u32,
}

/// Sent when the gateway closes an accepted socket.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct CloseRecord {
    pub hdr: RecordHeader,
    pub conn: ConnInfo,
    pub ts_close_ns: u64,
    /// Bytes read from / written to the socket while it was tracked.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Requests whose start line was seen / responses started.
    pub requests: u32,
    pub responses: u32,
}

/// Indexes of the `STATS` per-CPU array map (each a u64 counter).
pub mod stats {
    /// Records the ring buffer could not take (full): lost, counted here.
    pub const RINGBUF_DROPS: u32 = 0;
    /// Accepted connections not tracked because the connection map was full.
    pub const CONN_MAP_FULL: u32 = 1;
    /// Records emitted.
    pub const RECORDS: u32 = 2;
    /// Connections tracked.
    pub const CONNS: u32 = 3;
    /// Syscalls whose data was parsed.
    pub const PARSED_SYSCALLS: u32 = 4;
    /// Syscall argument stash full (enter seen, exit lost).
    pub const ARGS_MAP_FULL: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 8;
}

const _: () = assert!(core::mem::size_of::<RecordHeader>() == 32);
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 32);
const _: () = assert!(core::mem::size_of::<Field>() == 128);
const _: () = assert!(core::mem::size_of::<Cred>() == 16);
const _: () = assert!(
    core::mem::size_of::<RequestRecord>() == 32 + 32 + 40 + 16 + 16 + 8 + 256 + 128 * 14 + 64
);
const _: () = assert!(core::mem::size_of::<ResponseRecord>() == 32 + 48);
const _: () = assert!(core::mem::size_of::<CloseRecord>() == 32 + 32 + 32);
const _: () =
    assert!(REQUEST_FIXED_LEN + 128 * FIELD_SLOTS == core::mem::size_of::<RequestRecord>());
const _: () =
    assert!(REQUEST_HEAD_LEN.is_multiple_of(8) && REQUEST_HEAD_LEN + PATH_CAP == REQUEST_FIXED_LEN);
const _: () = assert!(packed_path_len(u16::MAX) == PATH_CAP);
const _: () = assert!(packed_field_len(u16::MAX) == core::mem::size_of::<Field>());

/// Shared test vector: the key loader-probe uses in its self test.
pub const TEST_KEY: [u8; 16] = *b"apx-fp-test-key!";
/// Shared test vector: a token.
pub const TEST_TOKEN: &[u8] = b"sk-apx-test-0123456789abcdef";
/// Shared test vector: `fingerprint(key_from_bytes(TEST_KEY), TEST_TOKEN)`.
pub const TEST_FP: u64 = 0x75cf_a234_b784_27ba;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_paper_vector() {
        // SipHash paper, appendix A: key 00..0f, message 00..0e.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let (k0, k1) = key_from_bytes(&key);
        let msg: [u8; 15] = core::array::from_fn(|i| i as u8);
        assert_eq!(fingerprint(k0, k1, &msg), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn siphash_matches_std_for_all_lengths() {
        #[allow(deprecated)]
        use std::hash::{Hasher, SipHasher};
        let (k0, k1) = (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        let data: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..data.len() {
            #[allow(deprecated)]
            let mut h = SipHasher::new_with_keys(k0, k1);
            h.write(&data[..n]);
            assert_eq!(fingerprint(k0, k1, &data[..n]), h.finish(), "len {n}");
        }
    }

    #[test]
    fn push8_is_eight_pushes_at_any_offset() {
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let data: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(151).wrapping_add(7))
            .collect();
        for head in 0..9 {
            for words in 0..4 {
                let mut bytewise = Sip::new(k0, k1);
                let mut wordwise = Sip::new(k0, k1);
                for &b in &data[..head] {
                    bytewise.push(b);
                    wordwise.push(b);
                }
                for k in 0..words {
                    let at = head + 8 * k;
                    let chunk: [u8; 8] = data[at..at + 8].try_into().unwrap();
                    for b in chunk {
                        bytewise.push(b);
                    }
                    wordwise.push8(u64::from_le_bytes(chunk));
                }
                // A tail after the words, then both must agree.
                for &b in &data[head + 8 * words..head + 8 * words + 3] {
                    bytewise.push(b);
                    wordwise.push(b);
                }
                assert_eq!(
                    bytewise.finish(),
                    wordwise.finish(),
                    "head {head} words {words}"
                );
            }
        }
    }

    #[test]
    fn plain8_matches_a_byte_by_byte_check() {
        let plain = |b: u8| b >= 0x20 && b != 0x7f;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = seed.to_le_bytes();
            // Mostly text, with one special byte planted at times.
            if round % 3 != 0 {
                for b in &mut bytes {
                    *b = 0x20 + (*b % 0x5f);
                }
                if round % 5 == 0 {
                    let special = [0x00, 0x09, 0x0a, 0x0d, 0x1f, 0x7f, 0x80, 0xff, 0x20, 0x7e];
                    bytes[(seed >> 8) as usize % 8] =
                        special[(seed >> 16) as usize % special.len()];
                }
            }
            let w = u64::from_le_bytes(bytes);
            assert_eq!(plain8(w), bytes.iter().all(|&b| plain(b)), "{bytes:02x?}");
            for b in [
                b' ',
                b'\r',
                0x7f,
                0x00,
                0xff,
                bytes[(seed >> 24) as usize % 8],
            ] {
                assert_eq!(
                    has_byte(w, b),
                    bytes.contains(&b),
                    "{b:02x} in {bytes:02x?}"
                );
            }
        }
    }

    #[test]
    fn push_tail_is_n_pushes_at_any_offset() {
        let (k0, k1) = (0x1111_2222_3333_4444, 0x5555_6666_7777_8888);
        let data: Vec<u8> = (0..40u8)
            .map(|i| i.wrapping_mul(97).wrapping_add(3))
            .collect();
        for head in 0..9 {
            for n in 0..8 {
                let mut bytewise = Sip::new(k0, k1);
                let mut tailwise = Sip::new(k0, k1);
                for &b in &data[..head] {
                    bytewise.push(b);
                    tailwise.push(b);
                }
                let chunk: [u8; 8] = data[head..head + 8].try_into().unwrap();
                for &b in &chunk[..n] {
                    bytewise.push(b);
                }
                tailwise.push_tail(u64::from_le_bytes(chunk), n as u64);
                assert_eq!(bytewise, tailwise, "head {head} n {n}");
                for &b in &data[head + 8..head + 20] {
                    bytewise.push(b);
                    tailwise.push(b);
                }
                assert_eq!(bytewise.finish(), tailwise.finish(), "head {head} n {n}");
            }
        }
    }

    #[test]
    fn lane_classes_match_byte_checks() {
        fn tchar(b: u8) -> bool {
            b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
        }
        let lanes = |w: u64, f: &dyn Fn(u8) -> bool| -> u64 {
            let mut m = 0;
            for (i, b) in w.to_le_bytes().into_iter().enumerate() {
                if f(b) {
                    m |= 0x80 << (8 * i);
                }
            }
            m
        };
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..300_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Every byte value in every lane, next to random neighbours.
            let mut bytes = seed.to_le_bytes();
            bytes[(round % 8) as usize] = (round / 8 % 256) as u8;
            let w = u64::from_le_bytes(bytes);
            assert_eq!(not_tchar_lanes(w), lanes(w, &|b| !tchar(b)), "{bytes:02x?}");
            assert_eq!(
                value_bad_lanes(w),
                lanes(w, &|b| (b < 0x20 && b != b'\t') || b == 0x7f),
                "{bytes:02x?}"
            );
            assert_eq!(byte_lanes(w, b'\n'), lanes(w, &|b| b == b'\n'));
            assert_eq!(byte_lanes(w, b' '), lanes(w, &|b| b == b' '));
            assert_eq!(
                range_lanes(w, b'0', b'9'),
                lanes(w, &|b| b.is_ascii_digit())
            );
            let lowered = u64::from_le_bytes(bytes.map(|b| b.to_ascii_lowercase()));
            assert_eq!(lower8(w), lowered, "{bytes:02x?}");
            let m = lanes(w, &|b| b == bytes[(seed >> 40) as usize % 8]);
            assert_eq!(first_lane(m), (m.trailing_zeros() / 8) as u64);
        }
        for n in 0..10 {
            assert_eq!(
                first_lanes(n),
                lanes(u64::MAX, &|_| true)
                    & if n >= 8 {
                        u64::MAX
                    } else {
                        (1u64 << (8 * n)) - 1
                    }
            );
        }
    }

    #[test]
    fn fingerprint_shared_vector() {
        // The same vector is checked end to end against the kernel by
        // loader-probe's `selftest` (key = TEST_KEY, token below).
        let (k0, k1) = key_from_bytes(&TEST_KEY);
        assert_eq!(fingerprint(k0, k1, TEST_TOKEN), TEST_FP);
    }

    #[test]
    fn name_hash_is_case_insensitive() {
        assert_eq!(name_hash(b"Authorization"), name_hash(b"authorization"));
        assert_eq!(CRED_HASHES[0], name_hash(b"AUTHORIZATION"));
        assert_ne!(name_hash(b"host"), name_hash(b"hosts"));
        assert_eq!(FIELD_HASHES[SLOT_CONTENT_LENGTH], HASH_CONTENT_LENGTH);
    }
}

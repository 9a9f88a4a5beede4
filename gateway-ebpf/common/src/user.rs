//! User-side helpers (feature `std`): decode ring-buffer bytes into records,
//! and join each request with its response.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::*;

/// One decoded ring-buffer record.
#[derive(Clone)]
pub enum Record {
    Request(Box<RequestRecord>),
    Response(ResponseRecord),
    Close(CloseRecord),
    /// A request and its response in one record (`KIND_EXCHANGE`); the
    /// response's header says `KIND_RESPONSE` once decoded.
    Exchange(Box<RequestRecord>, ResponseRecord),
}

fn read_as<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a plain-old-data repr(C) struct of
    // integers and byte arrays, valid for any bit pattern.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Unpacks a request record (see [`RequestRecord`] for the packing) into
/// a heap box (`spare` if given, else a new one), zeroing what the packed
/// form leaves out, as those bytes were in the kernel. `None` when the
/// bytes are too short for what the record says it carries.
fn unpack_request(bytes: &[u8], spare: Option<Box<RequestRecord>>) -> Option<Box<RequestRecord>> {
    let head = bytes.get(..REQUEST_HEAD_LEN)?;
    let mut record = match spare {
        Some(mut record) => {
            // SAFETY: RequestRecord is a plain-old-data repr(C) struct of
            // integers and byte arrays: all zeroes is a valid value.
            unsafe { core::ptr::write_bytes(&mut *record as *mut RequestRecord, 0, 1) };
            record
        }
        // SAFETY: as above, zeroed memory is a valid RequestRecord.
        None => unsafe { Box::<RequestRecord>::new_zeroed().assume_init() },
    };
    // SAFETY: `head` is REQUEST_HEAD_LEN bytes, less than a RequestRecord,
    // and any bytes are a valid RequestRecord (see above).
    unsafe {
        core::ptr::copy_nonoverlapping(
            head.as_ptr(),
            &mut *record as *mut RequestRecord as *mut u8,
            head.len(),
        );
    }
    let path_bytes = packed_path_len(record.path_len);
    let mut at = REQUEST_HEAD_LEN;
    record.path[..path_bytes].copy_from_slice(bytes.get(at..at + path_bytes)?);
    at += path_bytes;
    for slot in 0..FIELD_SLOTS {
        if record.slot_mask & (1 << slot) == 0 {
            continue;
        }
        let len = u16::from_le_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]);
        let n = packed_field_len(len);
        let piece = bytes.get(at..at + n)?;
        // SAFETY: `n` ≤ size_of::<Field>() (packed_field_len's bound), and
        // Field is a plain-old-data repr(C) struct.
        unsafe {
            let field = &mut record.fields[slot] as *mut Field as *mut u8;
            core::ptr::copy_nonoverlapping(piece.as_ptr(), field, n);
        }
        at += n;
    }
    (record.slot_mask >> FIELD_SLOTS == 0).then_some(record)
}

/// Packs a request record the way the kernel programs do (see
/// [`RequestRecord`]): the reference the decoder is tested against, and
/// for tools that write records.
pub fn pack_request(record: &RequestRecord) -> Vec<u8> {
    // SAFETY: a plain-old-data repr(C) struct, read as its bytes.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            record as *const RequestRecord as *const u8,
            core::mem::size_of::<RequestRecord>(),
        )
    };
    let mut out = bytes[..REQUEST_HEAD_LEN + packed_path_len(record.path_len)].to_vec();
    for slot in 0..FIELD_SLOTS {
        if record.slot_mask & (1 << slot) != 0 {
            let start =
                core::mem::offset_of!(RequestRecord, fields) + slot * core::mem::size_of::<Field>();
            out.extend_from_slice(&bytes[start..start + packed_field_len(record.fields[slot].len)]);
        }
    }
    out
}

impl Record {
    /// Decode one ring-buffer item. `None` for an unknown kind/version or a short item.
    pub fn parse(bytes: &[u8]) -> Option<Record> {
        Record::parse_into(bytes, &mut None)
    }

    /// [`Record::parse`] that decodes a request into `spare` when it holds
    /// a box (taking it): a reader that hands back the boxes it is done
    /// with allocates nothing per record (a fresh 2 KiB zeroed box per
    /// record, freed soon after, kept the allocator retiring and
    /// re-zeroing pages).
    pub fn parse_into(bytes: &[u8], spare: &mut Option<Box<RequestRecord>>) -> Option<Record> {
        let hdr: RecordHeader = read_as(bytes)?;
        if hdr.version != LAYOUT_VERSION {
            return None;
        }
        match hdr.kind {
            KIND_REQUEST => Some(Record::Request(unpack_request(bytes, spare.take())?)),
            KIND_RESPONSE => Some(Record::Response(read_as(bytes)?)),
            KIND_CLOSE => Some(Record::Close(read_as(bytes)?)),
            KIND_EXCHANGE => {
                let mut response: ResponseRecord = read_as(bytes)?;
                response.hdr.kind = KIND_RESPONSE;
                let request = bytes.get(core::mem::size_of::<ResponseRecord>()..)?;
                Some(Record::Exchange(
                    unpack_request(request, spare.take())?,
                    response,
                ))
            }
            _ => None,
        }
    }

    /// The record's header; for an exchange, its response's (same
    /// connection and `seq` as its request).
    pub fn header(&self) -> &RecordHeader {
        match self {
            Record::Request(r) => &r.hdr,
            Record::Response(r) => &r.hdr,
            Record::Close(r) => &r.hdr,
            Record::Exchange(_, r) => &r.hdr,
        }
    }
}

impl ConnInfo {
    /// Peer address, if known.
    pub fn peer_ip(&self) -> Option<IpAddr> {
        match self.family {
            2 => {
                let a = &self.peer_addr;
                Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
            }
            10 => Some(IpAddr::V6(Ipv6Addr::from(self.peer_addr))),
            _ => None,
        }
    }
}

/// The first `len` bytes of `bytes` (all of them if it is shorter).
fn kept(bytes: &[u8], len: usize) -> &[u8] {
    &bytes[..len.min(bytes.len())]
}

fn text(bytes: &[u8], len: usize) -> String {
    String::from_utf8_lossy(kept(bytes, len)).into_owned()
}

impl RequestRecord {
    pub fn method(&self) -> String {
        text(&self.method, self.method_len as usize)
    }
    /// The method's bytes as captured (for matching without a `String`).
    pub fn method_bytes(&self) -> &[u8] {
        kept(&self.method, self.method_len as usize)
    }
    /// The request target as kept (at most `PATH_CAP` bytes; see `F_PATH_TRUNC`).
    pub fn path(&self) -> String {
        text(&self.path, self.path_len as usize)
    }
    /// The request target's kept bytes (for building text without a `String`).
    pub fn path_bytes(&self) -> &[u8] {
        kept(&self.path, self.path_len as usize)
    }
    pub fn version(&self) -> String {
        text(&self.version, self.version_len as usize)
    }
    /// The version's bytes as captured (for matching without a `String`).
    pub fn version_bytes(&self) -> &[u8] {
        kept(&self.version, self.version_len as usize)
    }
    /// Value kept for capture slot `i` (see `FIELD_NAMES`), `None` if absent.
    pub fn field(&self, i: usize) -> Option<String> {
        self.field_bytes(i)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    }
    /// The kept bytes of capture slot `i`, `None` if absent.
    pub fn field_bytes(&self, i: usize) -> Option<&[u8]> {
        let f = self.fields.get(i)?;
        if f.count == 0 {
            return None;
        }
        Some(kept(&f.value, f.len as usize))
    }
}

/// A request with its response (either may be missing, see `F_*` flags).
#[derive(Clone)]
pub struct Exchange {
    pub conn_id: u64,
    pub seq: u32,
    pub request: Option<Box<RequestRecord>>,
    pub response: Option<ResponseRecord>,
    /// Set when the connection closed before this exchange was complete.
    pub close: Option<CloseRecord>,
}

/// Joins request and response records by `(conn_id, seq)`.
///
/// Feed every record to [`Joiner::push`]; it returns the exchanges that are
/// complete: a request with its response, or — at the connection's close
/// record — whatever is left (request without response, response without a
/// captured request). Connections that were accepted before the programs
/// were attached are not seen at all.
///
/// A connection whose close record was lost (ring buffer full) would leave
/// its unfinished exchanges here for ever: [`Joiner::evict_over`] bounds them.
#[derive(Default)]
pub struct Joiner {
    /// Exchanges waiting, with the order in which they were opened.
    pending: HashMap<(u64, u32), (u64, Exchange), BuildHasherDefault<IdHasher>>,
    opened: u64,
}

/// Hashes join keys (connection id and sequence here, peer address and
/// sequence in the gateway): numbers the kernel or the gateway assigns, not
/// chosen freely by anyone sending traffic, so a multiply-rotate step per
/// word is enough (SipHash showed in profiles of the drain).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

impl Joiner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Exchanges waiting for their other half.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The exchanges `rec` completes (see [`Joiner::push_each`]).
    pub fn push(&mut self, rec: Record) -> Vec<Exchange> {
        let mut out = Vec::new();
        self.push_each(rec, |exchange| out.push(exchange));
        out
    }

    /// Adds a record and hands each exchange it completes to `done`, in
    /// order: an exchange record at once (nothing waits for it), a request
    /// or response when its other half is in, a close record everything
    /// still pending on its connection. No allocation on the exchange path.
    pub fn push_each(&mut self, rec: Record, mut done: impl FnMut(Exchange)) {
        let h = *rec.header();
        let key = (h.conn_id, h.seq);
        match rec {
            Record::Request(r) => {
                let e = self.entry(key);
                e.request = Some(r);
                self.take_if_done(key, done);
            }
            Record::Response(r) => {
                let e = self.entry(key);
                e.response = Some(r);
                self.take_if_done(key, done);
            }
            Record::Exchange(q, r) => {
                // Normally nothing waits under this key: the kernel sends a
                // request alone only when it will not send it in an exchange.
                if self.pending.contains_key(&key) {
                    let e = self.entry(key);
                    e.request = Some(q);
                    e.response = Some(r);
                    self.take_if_done(key, done);
                    return;
                }
                done(Exchange {
                    conn_id: key.0,
                    seq: key.1,
                    request: Some(q),
                    response: Some(r),
                    close: None,
                });
            }
            Record::Close(c) => {
                let mut keys: Vec<_> = self
                    .pending
                    .keys()
                    .filter(|k| k.0 == h.conn_id)
                    .copied()
                    .collect();
                keys.sort();
                for k in keys {
                    if let Some((_, mut e)) = self.pending.remove(&k) {
                        e.close = Some(c);
                        done(e);
                    }
                }
            }
        }
    }

    /// When more than `max` exchanges wait, removes the oldest ones (down
    /// to 3/4 of `max`) and returns how many. Choose `max` well above what
    /// live connections can have in flight (the kernel tracks at most
    /// `max_conns` connections, HTTP/1.1 answers one request at a time):
    /// beyond it, what waits belongs to connections whose close was lost.
    pub fn evict_over(&mut self, max: usize) -> usize {
        if self.pending.len() <= max {
            return 0;
        }
        let mut order: Vec<(u64, (u64, u32))> = self
            .pending
            .iter()
            .map(|(k, (opened, _))| (*opened, *k))
            .collect();
        order.sort_unstable();
        let excess = self.pending.len() - max * 3 / 4;
        for (_, key) in order.into_iter().take(excess) {
            self.pending.remove(&key);
        }
        excess
    }

    fn entry(&mut self, key: (u64, u32)) -> &mut Exchange {
        let opened = &mut self.opened;
        &mut self
            .pending
            .entry(key)
            .or_insert_with(|| {
                *opened += 1;
                (
                    *opened,
                    Exchange {
                        conn_id: key.0,
                        seq: key.1,
                        request: None,
                        response: None,
                        close: None,
                    },
                )
            })
            .1
    }

    fn take_if_done(&mut self, key: (u64, u32), mut done: impl FnMut(Exchange)) {
        let complete = self
            .pending
            .get(&key)
            .is_some_and(|(_, e)| e.request.is_some() && e.response.is_some());
        if complete {
            if let Some((_, e)) = self.pending.remove(&key) {
                done(e);
            }
        }
    }
}

/// Fingerprint rendering used in logs: 16 lower-case hex digits.
pub fn fp_hex(fp: u64) -> String {
    format!("{fp:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(conn_id: u64, seq: u32) -> Record {
        let mut r: ResponseRecord = unsafe { core::mem::zeroed() };
        r.hdr.kind = KIND_RESPONSE;
        r.hdr.version = LAYOUT_VERSION;
        r.hdr.conn_id = conn_id;
        r.hdr.seq = seq;
        Record::Response(r)
    }

    /// Ring-buffer bytes of an exchange record whose request has `value` in
    /// capture slot `slot`, packed as the kernel packs them.
    fn exchange_bytes(conn_id: u64, seq: u32, slot: usize, value: &[u8]) -> Vec<u8> {
        let mut q: RequestRecord = unsafe { core::mem::zeroed() };
        q.hdr.kind = KIND_REQUEST;
        q.hdr.version = LAYOUT_VERSION;
        q.hdr.conn_id = conn_id;
        q.hdr.seq = seq;
        q.method[..4].copy_from_slice(b"POST");
        q.method_len = 4;
        q.path[..3].copy_from_slice(b"/v1");
        q.path_len = 3;
        q.creds[0].count = 1;
        q.creds[0].fp = 0x1234;
        q.slot_mask = 1 << slot;
        q.fields[slot].count = 1;
        q.fields[slot].len = value.len() as u16;
        let kept = value.len().min(VALUE_CAP);
        q.fields[slot].value[..kept].copy_from_slice(&value[..kept]);
        q.fields[slot].truncated = (value.len() > VALUE_CAP) as u8;
        let mut r: ResponseRecord = unsafe { core::mem::zeroed() };
        r.hdr.kind = KIND_EXCHANGE;
        r.hdr.version = LAYOUT_VERSION;
        r.hdr.conn_id = conn_id;
        r.hdr.seq = seq;
        r.status = 200;
        let mut out = Vec::new();
        // SAFETY: a plain-old-data repr(C) struct, read as bytes.
        unsafe {
            out.extend_from_slice(core::slice::from_raw_parts(
                &r as *const ResponseRecord as *const u8,
                core::mem::size_of::<ResponseRecord>(),
            ));
        }
        out.extend_from_slice(&pack_request(&q));
        out
    }

    #[test]
    fn exchange_records_decode_packed_and_join_at_once() {
        let long = [b'x'; 300];
        for (slot, value) in [
            (0, &b"abc"[..]),
            (3, b"12345678901"),
            (FIELD_SLOTS - 1, &long),
        ] {
            let bytes = exchange_bytes(7, 2, slot, value);
            let kept = value.len().min(VALUE_CAP);
            assert_eq!(
                bytes.len(),
                core::mem::size_of::<ResponseRecord>()
                    + REQUEST_HEAD_LEN
                    + 8
                    + (4 + kept).div_ceil(8) * 8
            );
            let rec = Record::parse(&bytes).expect("decodes");
            assert_eq!(rec.header().kind, KIND_RESPONSE);
            let mut joiner = Joiner::new();
            let out = joiner.push(rec);
            assert_eq!(joiner.pending(), 0);
            assert_eq!(out.len(), 1);
            let (q, r) = (out[0].request.as_ref().unwrap(), out[0].response.unwrap());
            assert_eq!((out[0].conn_id, out[0].seq, r.status), (7, 2, 200));
            assert_eq!(q.method(), "POST");
            assert_eq!(q.path(), "/v1");
            assert_eq!(q.creds[0].fp, 0x1234);
            assert_eq!(q.field(slot).unwrap().as_bytes(), &value[..kept]);
            assert_eq!(q.fields[slot].len as usize, value.len());
            assert_eq!(q.fields[slot].truncated, (value.len() > VALUE_CAP) as u8);
            for other in (0..FIELD_SLOTS).filter(|&i| i != slot) {
                assert_eq!(q.field(other), None);
            }
            // Every cut short of the whole record is refused, not misread.
            for cut in core::mem::size_of::<ResponseRecord>()..bytes.len() {
                assert!(Record::parse(&bytes[..cut]).is_none(), "cut at {cut}");
            }
        }
        // A request record alone, packed the same way, joins its response.
        let bytes = exchange_bytes(7, 2, 0, b"abc");
        let request = &bytes[core::mem::size_of::<ResponseRecord>()..];
        let mut joiner = Joiner::new();
        assert!(joiner.push(Record::parse(request).unwrap()).is_empty());
        let out = joiner.push(response(7, 2));
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].request.as_ref().unwrap().field(0).as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn packed_requests_round_trip_every_slot_and_path_length() {
        for path_len in [0u16, 1, 7, 8, 9, 255, 256, 257, 4000] {
            let mut q: RequestRecord = unsafe { core::mem::zeroed() };
            q.hdr.kind = KIND_REQUEST;
            q.hdr.version = LAYOUT_VERSION;
            q.path_len = path_len;
            for (i, b) in q.path.iter_mut().take(path_len as usize).enumerate() {
                *b = b'a' + (i % 26) as u8;
            }
            for slot in (0..FIELD_SLOTS).step_by(3) {
                q.slot_mask |= 1 << slot;
                let f = &mut q.fields[slot];
                f.count = 1;
                f.len = (slot * 11) as u16;
                for (i, b) in f.value.iter_mut().take(f.len as usize).enumerate() {
                    *b = b'0' + (i % 10) as u8;
                }
            }
            let packed = pack_request(&q);
            assert_eq!(packed.len() % 8, 0);
            let back = match Record::parse(&packed) {
                Some(Record::Request(r)) => r,
                _ => panic!("path_len {path_len}: not decoded"),
            };
            // SAFETY: plain-old-data structs compared as bytes.
            let as_bytes = |r: &RequestRecord| unsafe {
                core::slice::from_raw_parts(
                    r as *const RequestRecord as *const u8,
                    core::mem::size_of::<RequestRecord>(),
                )
                .to_vec()
            };
            assert!(as_bytes(&back) == as_bytes(&q), "path_len {path_len}");
            // Decoded into a box that held a record with every slot and
            // the longest path: nothing of it may show through.
            let mut full: Box<RequestRecord> = Box::new(unsafe { core::mem::zeroed() });
            full.path = [b'X'; PATH_CAP];
            full.path_len = PATH_CAP as u16;
            full.slot_mask = (1 << FIELD_SLOTS) - 1;
            for f in full.fields.iter_mut() {
                *f = Field {
                    len: 124,
                    count: 9,
                    truncated: 1,
                    value: [b'Y'; 124],
                };
            }
            full.creds[0].fp = u64::MAX;
            let mut spare = Some(full);
            let reused = match Record::parse_into(&packed, &mut spare) {
                Some(Record::Request(r)) => r,
                _ => panic!("path_len {path_len}: not decoded into the spare box"),
            };
            assert!(spare.is_none(), "the spare box was taken");
            assert!(
                as_bytes(&reused) == as_bytes(&q),
                "path_len {path_len}, reused box"
            );
        }
        // Slot bits past the last slot: not a record of this layout.
        let mut q: RequestRecord = unsafe { core::mem::zeroed() };
        q.hdr.kind = KIND_REQUEST;
        q.hdr.version = LAYOUT_VERSION;
        q.slot_mask = 1 << FIELD_SLOTS;
        assert!(Record::parse(&pack_request(&q)).is_none());
    }

    #[test]
    fn exchanges_of_lost_connections_are_evicted_oldest_first() {
        let mut joiner = Joiner::new();
        for conn in 0..100 {
            assert!(joiner.push(response(conn, 0)).is_empty());
        }
        assert_eq!(joiner.evict_over(100), 0);
        assert_eq!(joiner.evict_over(40), 70);
        assert_eq!(joiner.pending(), 30);
        // The newest stayed: a close record for one of them still flushes it.
        let mut close: CloseRecord = unsafe { core::mem::zeroed() };
        close.hdr.kind = KIND_CLOSE;
        close.hdr.conn_id = 99;
        let flushed = joiner.push(Record::Close(close));
        assert_eq!(flushed.len(), 1);
        assert_eq!(
            (flushed[0].conn_id, flushed[0].response.is_some()),
            (99, true)
        );
        close.hdr.conn_id = 5;
        assert!(joiner.push(Record::Close(close)).is_empty());
    }
}

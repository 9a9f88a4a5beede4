//! The on-disk form of a batch of calls: one block, one SQLite row.
//!
//! A row per call cost the writer ~4–9 µs (29 bound columns, four index
//! inserts), more than the rest of logging together. A block holds a whole
//! batch (up to 512 calls) in one BLOB, so SQLite does one insert per batch.
//! Strings that repeat within a batch (header names and values, key ids,
//! models, paths) are stored once in a string table at the head of the block
//! and referenced by index. Text is stored as is, never compressed, so a
//! byte search of the file finds any value that was logged (the credential
//! tests rely on that).
//!
//! Layout (all integers LEB128 varints unless said otherwise):
//! ```text
//! u8 format (= FORMAT)
//! strings: count, then per string: byte length, UTF-8 bytes
//! records: count, then per record:
//!   u8 flags       (bits 0–1 capture: 0 none, 1 ebpf, 2 userspace;
//!                   bit 2 partial; bit 3 stream)
//!   presence       (bit i set = optional field i below is present)
//!   time_unix_ns   zigzag delta from the previous record (first: from 0)
//!   method, path, http_version            string refs
//!   notes:        count, string refs
//!   headers:      count, (name ref, value ref) pairs
//!   credentials:  count, (header ref, scheme ref, u64 LE fingerprint)
//!   optional fields present, in the order of `Field`
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::fast::SeedableRandomState;

use crate::logging::record::{CallEntry, CallRecord, Capture, CredentialSeen};

/// Format byte of blocks written by this version.
pub const FORMAT: u8 = 1;

/// What the store indexes a block by, besides its id.
#[derive(Debug, Default, PartialEq)]
pub struct BlockSummary {
    pub count: usize,
    /// Earliest and latest request start among the block's calls.
    pub first_ns: i64,
    pub last_ns: i64,
    /// Distinct terms of the block's calls (see [`Term`]), each with
    /// how many calls have it: the index of filters and of `--stats`.
    pub terms: Vec<(String, u64)>,
}

/// A block that cannot be read: written by a newer apx, or damaged.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("log block format {0} is newer than this apx understands ({FORMAT})")]
    UnknownFormat(u8),
    #[error("log block is truncated or damaged (at byte {0})")]
    Damaged(usize),
}

/// The optional fields, in their encoding order; the discriminant is the
/// field's bit in the presence mask.
#[derive(Clone, Copy)]
enum Field {
    Client,
    ServerPort,
    Status,
    Duration,
    ResponseStart,
    FirstChunk,
    RequestBytes,
    ResponseBytes,
    KeyId,
    KeyName,
    Model,
    UpstreamModel,
    Provider,
    ProviderKind,
    UpstreamStatus,
    Error,
    InputTokens,
    OutputTokens,
}

impl Field {
    fn bit(self) -> u64 {
        1 << self as u32
    }
}

/// Filter terms: the values `apx logs` can ask for by index.
pub fn key_term(key: &str) -> String {
    format!("key:{key}")
}
pub fn key_name_term(name: &str) -> String {
    format!("name:{name}")
}
pub fn model_term(model: &str) -> String {
    format!("model:{model}")
}
pub fn status_term(status: u16) -> String {
    format!("status:{status}")
}
pub fn status_class_term(class: u16) -> String {
    format!("{CLASS_TERM}{class}")
}
pub const CLASS_TERM: &str = "class:";

/// `path:/v1/messages`: a call's path without its query, at most
/// [`PATH_TERM_BYTES`] of it, so `apx logs --path` reads only the blocks
/// holding a path with the prefix asked for.
pub fn path_term(path: &str) -> String {
    format!("{PATH_TERM}{}", path_key(path))
}
pub const PATH_TERM: &str = "path:";
/// How much of a path its term keeps: enough for every API route; the
/// exact filter on the decoded calls sees the whole path.
pub const PATH_TERM_BYTES: usize = 128;
/// Distinct path terms per block at most. Paths are the client's choice
/// (any 404 has its own), so past this many a block is marked with
/// [`MANY_PATHS_TERM`] instead, and every `--path` query reads it.
pub const PATH_TERMS_PER_BLOCK: usize = 16;
pub const MANY_PATHS_TERM: &str = "paths:many";

/// The part of `path` its term keeps: up to the query, at most
/// [`PATH_TERM_BYTES`], cut at a character boundary.
pub fn path_key(path: &str) -> &str {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    crate::logging::truncate_utf8(path, PATH_TERM_BYTES)
}

/// `capture:ebpf`, `capture:userspace`: counted for `apx logs --stats`.
pub fn capture_term(capture: Option<Capture>) -> String {
    format!("{CAPTURE_TERM}{}", capture.map_or("none", Capture::name))
}
pub const CAPTURE_TERM: &str = "capture:";
/// Calls stored as partial: counted for `apx logs --stats`.
pub const PARTIAL_TERM: &str = "partial";

/// A term of one call, borrowed from it: counted per block, made text
/// only once per distinct term.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Term<'r> {
    Capture(Option<Capture>),
    Partial,
    Key(&'r str),
    KeyName(&'r str),
    Model(&'r str),
    Status(u16),
    Class(u16),
    /// The call's [`path_key`].
    Path(&'r str),
    ManyPaths,
}

impl Term<'_> {
    fn text(self) -> String {
        match self {
            Term::Capture(capture) => capture_term(capture),
            Term::Partial => PARTIAL_TERM.to_string(),
            Term::Key(key) => key_term(key),
            Term::KeyName(name) => key_name_term(name),
            Term::Model(model) => model_term(model),
            Term::Status(status) => status_term(status),
            Term::Class(class) => status_class_term(class),
            Term::Path(key) => path_term(key),
            Term::ManyPaths => MANY_PATHS_TERM.to_string(),
        }
    }
}

/// The terms of one call, in a fixed order (absent ones `None`), so that
/// each position can be compared with the previous call's.
fn call_terms(record: &CallEntry) -> [Option<Term<'_>>; TERM_KINDS] {
    let facts = &record.facts;
    [
        Some(Term::Capture(record.capture)),
        record.partial.then_some(Term::Partial),
        facts.key_id.map(Term::Key),
        facts.key_name.map(Term::KeyName),
        facts.model.map(Term::Model),
        record.status.map(Term::Status),
        record.status.map(|s| Term::Class(s / 100)),
    ]
}

const TERM_KINDS: usize = 7;

/// Counts the terms of a block's calls. Consecutive calls mostly share
/// their terms (same key, model, status), so each term is first compared
/// with the previous call's at the same position and looked up only when
/// it differs.
struct TermCounts<'r> {
    counts: Vec<(Term<'r>, u64)>,
    index: HashMap<Term<'r>, usize, SeedableRandomState>,
    last: [Option<(Term<'r>, usize)>; TERM_KINDS],
    /// The previous call's whole path and where its term is counted: most
    /// calls repeat it, and then its term needs no cutting or lookup.
    last_path: Option<(&'r str, usize)>,
    /// Distinct `Term::Path`s so far (at most `PATH_TERMS_PER_BLOCK`).
    paths: usize,
}

impl<'r> TermCounts<'r> {
    fn new(hasher: SeedableRandomState) -> Self {
        TermCounts {
            counts: Vec::new(),
            index: HashMap::with_hasher(hasher),
            last: [None; TERM_KINDS],
            last_path: None,
            paths: 0,
        }
    }

    fn count(&mut self, record: &'r CallEntry) {
        for (kind, term) in call_terms(record).into_iter().enumerate() {
            let Some(term) = term else { continue };
            let at = match self.last[kind] {
                Some((seen, at)) if seen == term => at,
                _ => {
                    let at = self.place(term);
                    self.last[kind] = Some((term, at));
                    at
                }
            };
            self.counts[at].1 += 1;
        }
        let path: &'r str = &record.path;
        let at = match self.last_path {
            Some((seen, at)) if seen == path => at,
            _ => {
                let mut term = Term::Path(path_key(path));
                if !self.index.contains_key(&term) {
                    if self.paths < PATH_TERMS_PER_BLOCK {
                        self.paths += 1;
                    } else {
                        term = Term::ManyPaths;
                    }
                }
                let at = self.place(term);
                self.last_path = Some((path, at));
                at
            }
        };
        self.counts[at].1 += 1;
    }

    /// Where `term` is counted, a new place if it has none yet.
    fn place(&mut self, term: Term<'r>) -> usize {
        let counts = &mut self.counts;
        *self.index.entry(term).or_insert_with(|| {
            counts.push((term, 0));
            counts.len() - 1
        })
    }

    fn texts(self) -> Vec<(String, u64)> {
        let mut terms: Vec<(String, u64)> = self
            .counts
            .into_iter()
            .map(|(term, n)| (term.text(), n))
            .collect();
        terms.sort_unstable();
        terms
    }
}

/// A hasher for one block's tables. Paths and header values are chosen by
/// whoever sends requests, so the hash must not be predictable (or they
/// could make one batch's table collide): foldhash, keyed from the
/// standard library's random keys (the OS's randomness), not SipHash,
/// which cost the writer more than the rest of the encoding. A fresh
/// per-block seed, and nothing about the hashes is observable outside
/// the writer thread.
fn block_hasher() -> SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let random = || RandomState::new().hash_one(0x6170_785f_626c_6f63_u64);
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(random()));
    SeedableRandomState::with_seed(random(), shared)
}

/// Encodes batches into blocks. Kept by the writer so its buffers are
/// reused from one batch to the next.
#[derive(Default)]
pub struct BlockEncoder {
    strings: Vec<u8>,
    records: Vec<u8>,
    block: Vec<u8>,
}

impl BlockEncoder {
    /// The block of `records`, and what to index it by.
    pub fn encode(&mut self, records: &[CallEntry]) -> (&[u8], BlockSummary) {
        self.strings.clear();
        self.records.clear();
        let hasher = block_hasher();
        let mut table = StringTable {
            index: HashMap::with_hasher(hasher.clone()),
            bytes: &mut self.strings,
            last: [None; CACHED_PLACES],
        };
        let mut terms = TermCounts::new(hasher);
        let mut summary = BlockSummary {
            count: records.len(),
            first_ns: records.first().map_or(0, |r| r.time_unix_ns),
            last_ns: records.first().map_or(0, |r| r.time_unix_ns),
            terms: Vec::new(),
        };
        let mut previous_ns = 0i64;
        for record in records {
            summary.first_ns = summary.first_ns.min(record.time_unix_ns);
            summary.last_ns = summary.last_ns.max(record.time_unix_ns);
            terms.count(record);
            let strings = &mut table;
            let out = &mut self.records;
            let facts = &record.facts;
            let capture = match record.capture {
                None => 0,
                Some(Capture::Ebpf) => 1,
                Some(Capture::Userspace) => 2,
            };
            out.push(capture | u8::from(record.partial) << 2 | u8::from(facts.stream) << 3);
            let present = [
                (Field::Client, record.client.is_some()),
                (Field::ServerPort, record.server_port.is_some()),
                (Field::Status, record.status.is_some()),
                (Field::Duration, record.duration_ns.is_some()),
                (Field::ResponseStart, record.response_start_ns.is_some()),
                (Field::FirstChunk, record.first_chunk_ns.is_some()),
                (Field::RequestBytes, record.request_bytes.is_some()),
                (Field::ResponseBytes, record.response_bytes.is_some()),
                (Field::KeyId, facts.key_id.is_some()),
                (Field::KeyName, facts.key_name.is_some()),
                (Field::Model, facts.model.is_some()),
                (Field::UpstreamModel, facts.upstream_model.is_some()),
                (Field::Provider, facts.provider.is_some()),
                (Field::ProviderKind, facts.provider_kind.is_some()),
                (Field::UpstreamStatus, facts.upstream_status.is_some()),
                (Field::Error, facts.error.is_some()),
                (Field::InputTokens, record.input_tokens.is_some()),
                (Field::OutputTokens, record.output_tokens.is_some()),
            ]
            .iter()
            .filter(|(_, present)| *present)
            .fold(0u64, |mask, (field, _)| mask | field.bit());
            put_varint(out, present);
            put_varint(out, zigzag(record.time_unix_ns.wrapping_sub(previous_ns)));
            previous_ns = record.time_unix_ns;
            strings.put_at(out, &record.method, Place::METHOD);
            strings.put_at(out, &record.path, Place::PATH);
            strings.put_at(out, &record.http_version, Place::VERSION);
            put_varint(out, record.notes.len() as u64);
            for note in &record.notes {
                strings.put(out, note);
            }
            put_varint(out, record.headers.len() as u64);
            for (i, (name, value)) in record.headers.iter().enumerate() {
                strings.put_at(out, name, Place::header_name(i));
                strings.put_at(out, value, Place::header_value(i));
            }
            put_varint(out, record.credentials.len() as u64);
            for (i, credential) in record.credentials.iter().enumerate() {
                strings.put_at(out, credential.header, Place::credential_header(i));
                strings.put_at(out, credential.scheme, Place::credential_scheme(i));
                out.extend_from_slice(&credential.fingerprint.to_le_bytes());
            }
            if let Some((ip, port)) = record.client {
                match ip {
                    IpAddr::V4(v4) => {
                        out.push(4);
                        out.extend_from_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        out.push(6);
                        out.extend_from_slice(&v6.octets());
                    }
                }
                put_varint(out, u64::from(port));
            }
            let numbers = [
                record.server_port.map(u64::from),
                record.status.map(u64::from),
                record.duration_ns,
                record.response_start_ns,
                record.first_chunk_ns,
                record.request_bytes,
                record.response_bytes,
            ];
            for number in numbers.into_iter().flatten() {
                put_varint(out, number);
            }
            let texts = [
                facts.key_id,
                facts.key_name,
                facts.model,
                facts.upstream_model,
                facts.provider,
                facts.provider_kind,
            ];
            for (i, text) in texts.into_iter().enumerate() {
                if let Some(text) = text {
                    strings.put_at(out, text, Place::fact(i));
                }
            }
            if let Some(status) = facts.upstream_status {
                put_varint(out, u64::from(status));
            }
            if let Some(error) = facts.error {
                strings.put_at(out, error, Place::ERROR);
            }
            for number in [record.input_tokens, record.output_tokens]
                .into_iter()
                .flatten()
            {
                put_varint(out, number);
            }
        }
        let string_count = table.index.len() as u64;
        summary.terms = terms.texts();
        self.block.clear();
        self.block.push(FORMAT);
        put_varint(&mut self.block, string_count);
        self.block.extend_from_slice(&self.strings);
        put_varint(&mut self.block, records.len() as u64);
        self.block.extend_from_slice(&self.records);
        (&self.block, summary)
    }
}

/// The block's string table while it is being built.
struct StringTable<'t, 'r> {
    /// Each string's index: the order it was first seen.
    index: HashMap<&'r str, u64, SeedableRandomState>,
    bytes: &'t mut Vec<u8>,
    /// The string last stored at each [`Place`] of a call, with its index.
    last: [Option<(&'r str, u64)>; CACHED_PLACES],
}

/// A place in a call whose string is usually the previous call's: the
/// same interned text (header names, key, model: one `&'static str` for
/// every call) or equal text (method, path, most header values). Comparing with
/// the previous call's string there (a pointer, else the bytes) finds its
/// index without hashing it.
struct Place;

impl Place {
    const METHOD: usize = 0;
    const PATH: usize = 1;
    const VERSION: usize = 2;
    const ERROR: usize = 3;
    const FACTS: usize = 4;
    const FACT_PLACES: usize = 6;
    const CREDENTIALS: usize = Self::FACTS + Self::FACT_PLACES;
    const CREDENTIAL_PLACES: usize = apx_capture_common::CRED_SLOTS;
    const HEADERS: usize = Self::CREDENTIALS + 2 * Self::CREDENTIAL_PLACES;
    const HEADER_PLACES: usize = apx_capture_common::FIELD_SLOTS;
    const END: usize = Self::HEADERS + 2 * Self::HEADER_PLACES;

    fn fact(i: usize) -> usize {
        Self::within(Self::FACTS, i, Self::FACT_PLACES)
    }
    fn credential_header(i: usize) -> usize {
        Self::within(Self::CREDENTIALS, 2 * i, 2 * Self::CREDENTIAL_PLACES)
    }
    fn credential_scheme(i: usize) -> usize {
        Self::within(Self::CREDENTIALS, 2 * i + 1, 2 * Self::CREDENTIAL_PLACES)
    }
    fn header_name(i: usize) -> usize {
        Self::within(Self::HEADERS, 2 * i, 2 * Self::HEADER_PLACES)
    }
    fn header_value(i: usize) -> usize {
        Self::within(Self::HEADERS, 2 * i + 1, 2 * Self::HEADER_PLACES)
    }
    /// `first + i`, or [`NOWHERE`] past `places`.
    fn within(first: usize, i: usize, places: usize) -> usize {
        if i < places { first + i } else { NOWHERE }
    }
}

const CACHED_PLACES: usize = Place::END;
/// A place without a cache entry: the string is looked up.
const NOWHERE: usize = usize::MAX;

impl<'r> StringTable<'_, 'r> {
    /// Writes a reference to `text` into `out`, adding it to the table the
    /// first time it is seen.
    fn put(&mut self, out: &mut Vec<u8>, text: &'r str) {
        let index = Self::add(&mut self.index, self.bytes, text);
        put_varint(out, index);
    }

    /// [`put`](Self::put) for the string at `place` in a call.
    fn put_at(&mut self, out: &mut Vec<u8>, text: &'r str, place: usize) {
        let Some(last) = self.last.get_mut(place) else {
            return self.put(out, text);
        };
        let index = match *last {
            Some((seen, index))
                if std::ptr::eq(seen.as_ptr(), text.as_ptr()) && seen.len() == text.len()
                    || seen == text =>
            {
                index
            }
            _ => {
                let index = Self::add(&mut self.index, self.bytes, text);
                self.last[place] = Some((text, index));
                index
            }
        };
        put_varint(out, index);
    }

    /// The index of `text`, added to the table if it is new.
    fn add(
        index: &mut HashMap<&'r str, u64, SeedableRandomState>,
        bytes: &mut Vec<u8>,
        text: &'r str,
    ) -> u64 {
        let next = index.len() as u64;
        *index.entry(text).or_insert_with(|| {
            put_varint(bytes, text.len() as u64);
            bytes.extend_from_slice(text.as_bytes());
            next
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    (value >> 1) as i64 ^ -((value & 1) as i64)
}

/// Reads a block back; its calls get ids `first_id`, `first_id + 1`, …
pub fn decode(data: &[u8], first_id: i64) -> Result<Vec<CallRecord>, BlockError> {
    let mut reader = Reader { data, at: 0 };
    let format = reader.byte()?;
    if format != FORMAT {
        return Err(BlockError::UnknownFormat(format));
    }
    let string_count = reader.count()?;
    let mut strings = Vec::with_capacity(string_count);
    for _ in 0..string_count {
        let len = reader.count()?;
        let at = reader.at;
        let bytes = reader.take(len)?;
        strings.push(std::str::from_utf8(bytes).map_err(|_| BlockError::Damaged(at))?);
    }
    let record_count = reader.count()?;
    let mut records = Vec::with_capacity(record_count);
    let mut previous_ns = 0i64;
    for index in 0..record_count {
        let mut record = CallRecord {
            id: first_id + index as i64,
            ..CallRecord::default()
        };
        let flags = reader.byte()?;
        record.capture = match flags & 3 {
            1 => Some(Capture::Ebpf),
            2 => Some(Capture::Userspace),
            _ => None,
        };
        record.partial = flags & 4 != 0;
        record.stream = flags & 8 != 0;
        let present = reader.varint()?;
        let has = |field: Field| present & field.bit() != 0;
        previous_ns = previous_ns.wrapping_add(unzigzag(reader.varint()?));
        record.time_unix_ns = previous_ns;
        record.method = reader.string(&strings)?.to_string();
        record.path = reader.string(&strings)?.to_string();
        record.http_version = reader.string(&strings)?.to_string();
        for _ in 0..reader.count()? {
            record.notes.push(reader.string(&strings)?.to_string());
        }
        for _ in 0..reader.count()? {
            let name = reader.string(&strings)?.to_string();
            let value = reader.string(&strings)?.to_string();
            record.headers.push((name, value));
        }
        for _ in 0..reader.count()? {
            let header = reader.string(&strings)?.to_string();
            let scheme = reader.string(&strings)?.to_string();
            let mut fingerprint = [0u8; 8];
            fingerprint.copy_from_slice(reader.take(8)?);
            record.credentials.push(CredentialSeen {
                header,
                scheme,
                fingerprint: format!("{:016x}", u64::from_le_bytes(fingerprint)),
            });
        }
        if has(Field::Client) {
            let at = reader.at;
            let ip = match reader.byte()? {
                4 => {
                    let mut octets = [0u8; 4];
                    octets.copy_from_slice(reader.take(4)?);
                    IpAddr::from(octets)
                }
                6 => {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(reader.take(16)?);
                    IpAddr::from(octets)
                }
                _ => return Err(BlockError::Damaged(at)),
            };
            record.client_address = Some(ip.to_string());
            record.client_port = Some(reader.small()?);
        }
        if has(Field::ServerPort) {
            record.server_port = Some(reader.small()?);
        }
        if has(Field::Status) {
            record.status = Some(reader.small()?);
        }
        let millis = |nanos: u64| nanos as f64 / 1e6;
        if has(Field::Duration) {
            record.duration_ms = Some(millis(reader.varint()?));
        }
        if has(Field::ResponseStart) {
            record.response_start_ms = Some(millis(reader.varint()?));
        }
        if has(Field::FirstChunk) {
            record.first_chunk_ms = Some(millis(reader.varint()?));
        }
        if has(Field::RequestBytes) {
            record.request_bytes = Some(reader.varint()?);
        }
        if has(Field::ResponseBytes) {
            record.response_bytes = Some(reader.varint()?);
        }
        let texts = [
            (Field::KeyId, &mut record.key_id),
            (Field::KeyName, &mut record.key_name),
            (Field::Model, &mut record.model),
            (Field::UpstreamModel, &mut record.upstream_model),
            (Field::Provider, &mut record.provider),
            (Field::ProviderKind, &mut record.provider_kind),
        ];
        for (field, slot) in texts {
            if has(field) {
                *slot = Some(reader.string(&strings)?.to_string());
            }
        }
        if has(Field::UpstreamStatus) {
            record.upstream_status = Some(reader.small()?);
        }
        if has(Field::Error) {
            record.error = Some(reader.string(&strings)?.to_string());
        }
        if has(Field::InputTokens) {
            record.input_tokens = Some(reader.varint()?);
        }
        if has(Field::OutputTokens) {
            record.output_tokens = Some(reader.varint()?);
        }
        records.push(record);
    }
    Ok(records)
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, BlockError> {
        let byte = *self.data.get(self.at).ok_or(BlockError::Damaged(self.at))?;
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], BlockError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.data.len())
            .ok_or(BlockError::Damaged(self.at))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn varint(&mut self) -> Result<u64, BlockError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(BlockError::Damaged(start))
    }

    /// A count of items that follow, each at least one byte: bounded by
    /// what is left, so a damaged count cannot ask for a huge allocation.
    fn count(&mut self) -> Result<usize, BlockError> {
        let start = self.at;
        let value = self.varint()?;
        usize::try_from(value)
            .ok()
            .filter(|n| *n <= self.data.len() - self.at)
            .ok_or(BlockError::Damaged(start))
    }

    fn small(&mut self) -> Result<u16, BlockError> {
        let start = self.at;
        u16::try_from(self.varint()?).map_err(|_| BlockError::Damaged(start))
    }

    fn string<'s>(&mut self, strings: &[&'s str]) -> Result<&'s str, BlockError> {
        let start = self.at;
        let index = self.varint()?;
        usize::try_from(index)
            .ok()
            .and_then(|i| strings.get(i).copied())
            .ok_or(BlockError::Damaged(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::record::{CredentialEntry, GatewayFacts};
    use std::borrow::Cow;

    fn full(i: i64) -> CallEntry {
        CallEntry {
            capture: Some(Capture::Ebpf),
            partial: i % 2 == 0,
            notes: vec![
                Cow::Borrowed("kernel record lost"),
                Cow::Owned(format!("n{i}")),
            ],
            time_unix_ns: 1_700_000_000_000_000_000 + 1000 * i - 7 * i * i,
            client: Some((
                if i % 2 == 0 {
                    "10.1.2.3".parse().unwrap()
                } else {
                    "fe80::1".parse().unwrap()
                },
                40_000 + i as u16,
            )),
            server_port: Some(8080),
            method: Cow::Borrowed("POST"),
            path: format!("/v1/chat/completions?i={i}").into(),
            http_version: Cow::Borrowed("HTTP/1.1"),
            status: Some(if i == 2 { 503 } else { 200 }),
            duration_ns: Some(u64::MAX - i as u64),
            response_start_ns: Some(5),
            first_chunk_ns: Some(0),
            request_bytes: Some(84),
            response_bytes: Some(310),
            headers: vec![
                ("user-agent", "te\"st\n\u{1}é".into()),
                ("host", "h".into()),
            ],
            credentials: vec![CredentialEntry {
                header: "authorization",
                scheme: "bearer",
                fingerprint: 0x0011_2233_aabb_ccdd,
            }],
            facts: GatewayFacts {
                key_id: Some("key_1"),
                key_name: Some("alice"),
                model: Some(if i == 1 { "b" } else { "a" }),
                upstream_model: Some("up"),
                provider: Some("mock"),
                provider_kind: Some("openai"),
                stream: i == 1,
                upstream_status: Some(200),
                error: Some("upstream_timeout"),
            },
            input_tokens: Some(3),
            output_tokens: Some(u64::MAX),
        }
    }

    /// What a stored entry reads back as (the fields `decode` fills).
    fn expected(entry: &CallEntry, id: i64) -> CallRecord {
        CallRecord {
            id,
            capture: entry.capture,
            partial: entry.partial,
            notes: entry.notes.iter().map(|n| n.to_string()).collect(),
            time_unix_ns: entry.time_unix_ns,
            client_address: entry.client.map(|(ip, _)| ip.to_string()),
            client_port: entry.client.map(|(_, port)| port),
            server_port: entry.server_port,
            method: entry.method.to_string(),
            path: entry.path.to_string(),
            http_version: entry.http_version.to_string(),
            status: entry.status,
            duration_ms: entry.duration_ns.map(|n| n as f64 / 1e6),
            response_start_ms: entry.response_start_ns.map(|n| n as f64 / 1e6),
            request_bytes: entry.request_bytes,
            response_bytes: entry.response_bytes,
            headers: entry
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            credentials: entry
                .credentials
                .iter()
                .map(|c| CredentialSeen {
                    header: c.header.to_string(),
                    scheme: c.scheme.to_string(),
                    fingerprint: format!("{:016x}", c.fingerprint),
                })
                .collect(),
            key_id: entry.facts.key_id.map(str::to_string),
            key_name: entry.facts.key_name.map(str::to_string),
            model: entry.facts.model.map(str::to_string),
            upstream_model: entry.facts.upstream_model.map(str::to_string),
            provider: entry.facts.provider.map(str::to_string),
            provider_kind: entry.facts.provider_kind.map(str::to_string),
            upstream_status: entry.facts.upstream_status,
            stream: entry.facts.stream,
            input_tokens: entry.input_tokens,
            output_tokens: entry.output_tokens,
            first_chunk_ms: entry.first_chunk_ns.map(|n| n as f64 / 1e6),
            error: entry.facts.error.map(str::to_string),
        }
    }

    #[test]
    fn every_field_survives_a_round_trip() {
        let entries: Vec<CallEntry> = (0..5).map(full).chain([CallEntry::default()]).collect();
        let mut encoder = BlockEncoder::default();
        let (block, summary) = encoder.encode(&entries);
        let block = block.to_vec();
        let decoded = decode(&block, 100).unwrap();
        let wanted: Vec<CallRecord> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| expected(e, 100 + i as i64))
            .collect();
        assert_eq!(decoded, wanted);
        assert_eq!(summary.count, 6);
        assert_eq!(summary.first_ns, 0);
        assert_eq!(
            summary.last_ns,
            entries[4].time_unix_ns.max(entries[3].time_unix_ns)
        );
        let count = |term: &str| {
            summary
                .terms
                .iter()
                .find(|(t, _)| t == term)
                .map_or(0, |(_, n)| *n)
        };
        assert_eq!(count("key:key_1"), 5);
        assert_eq!(count("name:alice"), 5);
        assert_eq!(count("model:a"), 4);
        assert_eq!(count("model:b"), 1);
        assert_eq!(count("status:503"), 1);
        assert_eq!(count("class:2"), 4);
        assert_eq!(count("class:5"), 1);
        assert_eq!(count("capture:ebpf"), 5);
        assert_eq!(count("capture:none"), 1);
        assert_eq!(count("partial"), 3);
        // Paths without their queries; the empty entry's path is empty.
        assert_eq!(count("path:/v1/chat/completions"), 5);
        assert_eq!(count("path:"), 1);
        assert_eq!(summary.terms.len(), 13);
        // Repeated strings are stored once.
        let text = String::from_utf8_lossy(&block);
        assert_eq!(text.matches("user-agent").count(), 1);
        assert_eq!(text.matches("alice").count(), 1);
    }

    /// Strings that change from call to call at the same place (model,
    /// header order, more headers than the places remembered) are still
    /// stored once and read back where they were.
    #[test]
    fn strings_that_change_place_round_trip() {
        let names: Vec<&'static str> = (0..20)
            .map(|i| crate::intern::intern(&format!("x-h{i}")))
            .collect();
        let entries: Vec<CallEntry> = (0..6i64)
            .map(|i| {
                let mut entry = full(i);
                entry.facts.model = Some(["ma", "mb"][i as usize % 2]);
                entry.headers = (0..20)
                    .map(|h| {
                        let h = if i % 2 == 0 { h } else { 19 - h };
                        (names[h], format!("value-{}", h % 3).into())
                    })
                    .collect();
                entry
            })
            .collect();
        let mut encoder = BlockEncoder::default();
        let block = encoder.encode(&entries).0.to_vec();
        let wanted: Vec<CallRecord> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| expected(e, i as i64))
            .collect();
        assert_eq!(decode(&block, 0).unwrap(), wanted);
        let text = String::from_utf8_lossy(&block);
        for once in ["x-h0", "x-h19", "value-2", "ma", "mb", "key_1"] {
            assert_eq!(text.matches(once).count(), 1, "{once}");
        }
    }

    #[test]
    fn the_encoder_is_reusable() {
        let mut encoder = BlockEncoder::default();
        let first = encoder.encode(&[full(1), full(2)]).0.to_vec();
        let second = encoder.encode(&[full(3)]).0.to_vec();
        assert_eq!(decode(&first, 1).unwrap().len(), 2);
        let again = decode(&second, 1).unwrap();
        assert_eq!(again, vec![expected(&full(3), 1)]);
    }

    #[test]
    fn damaged_blocks_are_errors_never_panics() {
        let mut encoder = BlockEncoder::default();
        let block = encoder.encode(&[full(1), full(2)]).0.to_vec();
        for cut in 0..block.len() {
            assert!(decode(&block[..cut], 0).is_err(), "cut at {cut}");
        }
        for at in 0..block.len() {
            let mut damaged = block.clone();
            damaged[at] ^= 0xff;
            let _ = decode(&damaged, 0);
        }
        let mut newer = block.clone();
        newer[0] = FORMAT + 1;
        assert!(matches!(
            decode(&newer, 0),
            Err(BlockError::UnknownFormat(_))
        ));
    }
}

//! The record of one API call: the header elements (captured in the kernel
//! or in user space) joined with what only the gateway knows.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Instant;

/// Where a record's header elements came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capture {
    Ebpf,
    Userspace,
}

impl Capture {
    pub fn name(self) -> &'static str {
        match self {
            Capture::Ebpf => "ebpf",
            Capture::Userspace => "userspace",
        }
    }

    pub fn from_name(name: &str) -> Option<Capture> {
        match name {
            "ebpf" => Some(Capture::Ebpf),
            "userspace" => Some(Capture::Userspace),
            _ => None,
        }
    }
}

/// Text that is usually short (a request path, a header value): up to
/// `SmallText::INLINE` bytes kept in place, longer on the heap. The kernel
/// half of every call carries a path and a few header values; as
/// `String`s each was an allocation the collector made and the store
/// writer freed, a cross-thread free its allocator later had to collect
/// page by page (≈ 15 % of the collector's profile under load).
#[derive(Clone)]
pub struct SmallText(Repr);

#[derive(Clone)]
enum Repr {
    /// The first `len` bytes of `bytes`, a whole `&str` copied in.
    Inline {
        len: u8,
        bytes: [u8; SmallText::INLINE],
    },
    Heap(Box<str>),
}

impl SmallText {
    /// Longest text kept in place (the enum is then 32 bytes).
    pub const INLINE: usize = 30;

    pub fn new(text: &str) -> SmallText {
        if text.len() <= Self::INLINE {
            let mut bytes = [0u8; Self::INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            SmallText(Repr::Inline {
                len: text.len() as u8,
                bytes,
            })
        } else {
            SmallText(Repr::Heap(text.into()))
        }
    }

    /// Captured bytes as text, invalid UTF-8 replaced as
    /// `String::from_utf8_lossy` does.
    pub fn from_utf8_lossy(bytes: &[u8]) -> SmallText {
        // Valid text (nearly always) through the plain check, which is
        // cheaper than the lossy decoder's chunk iterator.
        match std::str::from_utf8(bytes) {
            Ok(text) => SmallText::new(text),
            Err(_) => SmallText::from(String::from_utf8_lossy(bytes).into_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: `Inline` is only made by `new`, from a whole `&str`
            // (valid UTF-8) of exactly `len` bytes.
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..usize::from(*len)])
            },
            Repr::Heap(text) => text,
        }
    }
}

impl Default for SmallText {
    fn default() -> SmallText {
        SmallText::new("")
    }
}

impl std::ops::Deref for SmallText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for SmallText {
    fn from(text: &str) -> SmallText {
        SmallText::new(text)
    }
}

impl From<String> for SmallText {
    fn from(text: String) -> SmallText {
        if text.len() <= SmallText::INLINE {
            SmallText::new(&text)
        } else {
            SmallText(Repr::Heap(text.into_boxed_str()))
        }
    }
}

impl PartialEq for SmallText {
    fn eq(&self, other: &SmallText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SmallText {}

impl PartialEq<str> for SmallText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SmallText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Debug for SmallText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for SmallText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A credential header as logged: never its value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CredentialSeen {
    /// Lower-case header name.
    pub header: String,
    /// `bearer`, `basic`, `other` or `none`.
    pub scheme: String,
    /// Keyed SipHash-2-4 of the token, 16 hex digits.
    pub fingerprint: String,
}

/// What only the gateway knows about a call. Filled by the proxy whether or
/// not logging is on: names interned at load (`crate::intern`), so a
/// handful of pointer copies with no reference counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct GatewayFacts {
    pub key_id: Option<&'static str>,
    pub key_name: Option<&'static str>,
    pub model: Option<&'static str>,
    pub upstream_model: Option<&'static str>,
    pub provider: Option<&'static str>,
    pub provider_kind: Option<&'static str>,
    pub stream: bool,
    pub upstream_status: Option<u16>,
    pub error: Option<&'static str>,
}

/// A credential header on its way to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialEntry {
    /// Lower-case header name.
    pub header: &'static str,
    /// `bearer`, `basic`, `other` or `none`.
    pub scheme: &'static str,
    /// Keyed SipHash-2-4 of the token.
    pub fingerprint: u64,
}

/// A call on its way to the store. Built on the request path and in the
/// kernel-record drain, so it holds shared and static strings and plain
/// numbers: text for SQL is made only when the collector writes the batch.
/// The kernel half of an eBPF-captured call is one; the gateway's
/// [`GatewayHalf`] joins it by [`CallEntry::absorb_gateway_half`].
#[derive(Clone, Debug, Default)]
pub struct CallEntry {
    pub capture: Option<Capture>,
    pub partial: bool,
    pub notes: Vec<Cow<'static, str>>,
    /// Wall clock of the request's first byte, ns since the Unix epoch.
    pub time_unix_ns: i64,
    pub client: Option<(IpAddr, u16)>,
    pub server_port: Option<u16>,
    pub method: Cow<'static, str>,
    pub path: SmallText,
    pub http_version: Cow<'static, str>,
    pub status: Option<u16>,
    /// Request first byte → response last byte.
    pub duration_ns: Option<u64>,
    /// Request first byte → response first byte.
    pub response_start_ns: Option<u64>,
    /// Request first byte → first body chunk from the upstream.
    pub first_chunk_ns: Option<u64>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    /// Selected request headers: interned lower-case name, value.
    pub headers: Vec<(&'static str, SmallText)>,
    pub credentials: Vec<CredentialEntry>,
    pub facts: GatewayFacts,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

/// What the gateway itself learns about a call, whoever captured its
/// header elements: filled by the ticket as the call goes, then joined
/// with the kernel's record (eBPF) or with the entry captured in user
/// space. Sent by value: a boxed `CallEntry` per call was an allocation
/// on a worker, ≈ 420 bytes zeroed, and a free on the collector's thread.
#[derive(Clone, Copy, Debug)]
pub struct GatewayHalf {
    pub facts: GatewayFacts,
    /// The status the gateway answered with.
    pub status: Option<u16>,
    /// Request arrival → first body chunk from the upstream.
    pub first_chunk_ns: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The response did not complete: the client went away or the
    /// upstream failed.
    pub incomplete: bool,
    /// The gateway's own timings. A kernel record carries the kernel's,
    /// taken at the socket; these count only for calls captured in user
    /// space and for a half whose kernel record never came.
    pub timings: GatewayTimings,
}

/// A call as the gateway timed it, from the moment hyper handed it the
/// request.
#[derive(Clone, Copy, Debug)]
pub struct GatewayTimings {
    pub started: Instant,
    /// → the response head was ready.
    pub response_start_ns: Option<u64>,
    /// → the response body was done (or dropped).
    pub duration_ns: Option<u64>,
    pub response_bytes: u64,
}

impl GatewayHalf {
    /// Nothing learnt yet about a call that arrived at `started`.
    pub fn new(started: Instant) -> GatewayHalf {
        GatewayHalf {
            facts: GatewayFacts::default(),
            status: None,
            first_chunk_ns: None,
            input_tokens: None,
            output_tokens: None,
            incomplete: false,
            timings: GatewayTimings {
                started,
                response_start_ns: None,
                duration_ns: None,
                response_bytes: 0,
            },
        }
    }
}

/// The note on a call whose response did not complete.
const INCOMPLETE_NOTE: &str = "response not completed: the client went away or the upstream failed";

impl CallEntry {
    /// Completes the kernel's header elements with what only the gateway
    /// knows: key, route, tokens and the upstream's first chunk. The
    /// kernel timed the call at the socket, so the gateway's timings are
    /// left out.
    pub fn absorb_gateway_half(&mut self, half: &GatewayHalf) {
        self.facts = half.facts;
        self.input_tokens = half.input_tokens;
        self.output_tokens = half.output_tokens;
        self.first_chunk_ns = half.first_chunk_ns;
        if self.status.is_none() {
            self.status = half.status;
        }
        if half.incomplete {
            self.partial = true;
            self.notes.push(INCOMPLETE_NOTE.into());
        }
    }

    /// Completes header elements captured in user space: the gateway's
    /// timings are the call's.
    pub fn absorb_gateway_half_timed(&mut self, half: &GatewayHalf) {
        let timings = &half.timings;
        self.duration_ns = timings.duration_ns;
        self.response_start_ns = timings.response_start_ns;
        self.response_bytes = Some(timings.response_bytes);
        self.absorb_gateway_half(half);
    }

    /// The record of a call the kernel captured, when its kernel record
    /// never came: what the gateway knows, marked partial. `now_unix_ns`
    /// is the wall clock now; the call's start is placed from it by the
    /// gateway's monotonic timing (a wall-clock read per call on the
    /// workers only for this rare case showed in profiles).
    pub fn from_lone_gateway_half(half: GatewayHalf, now_unix_ns: i64) -> CallEntry {
        let since_start = i64::try_from(half.timings.started.elapsed().as_nanos()).unwrap_or(0);
        let mut entry = CallEntry {
            capture: Some(Capture::Ebpf),
            partial: true,
            time_unix_ns: now_unix_ns.saturating_sub(since_start),
            ..CallEntry::default()
        };
        entry.absorb_gateway_half_timed(&half);
        entry
            .notes
            .push("no kernel record arrived for this call (see the kernel drop counters)".into());
        entry
    }
}

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];
const VERSIONS: [&str; 5] = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/3.0", "HTTP/0.9"];

/// `text` as one of the `known` static strings when it is one, else owned.
fn shared_text(known: &[&'static str], text: &str) -> Cow<'static, str> {
    match known.iter().find(|known| **known == text) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(text.to_string()),
    }
}

/// [`shared_text`] of raw bytes (invalid UTF-8 replaced): the usual names
/// are found without making a `String` first.
fn shared_bytes(known: &[&'static str], bytes: &[u8]) -> Cow<'static, str> {
    match known.iter().find(|known| known.as_bytes() == bytes) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// HTTP method names as shared static text (no allocation for the usual ones).
pub fn method_name(method: &str) -> Cow<'static, str> {
    shared_text(&METHODS, method)
}

/// [`method_name`] of the bytes the kernel captured.
pub fn method_name_bytes(method: &[u8]) -> Cow<'static, str> {
    shared_bytes(&METHODS, method)
}

/// HTTP version text as shared static text for the usual ones.
pub fn version_name(version: &str) -> Cow<'static, str> {
    shared_text(&VERSIONS, version)
}

/// [`version_name`] of the bytes the kernel captured.
pub fn version_name_bytes(version: &[u8]) -> Cow<'static, str> {
    shared_bytes(&VERSIONS, version)
}

/// One call, as stored and shown by `apx logs`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallRecord {
    /// Row id in the store (0 before it is stored).
    pub id: i64,
    pub capture: Option<Capture>,
    /// The record misses parts (client vanished, kernel record lost, …);
    /// `notes` says which.
    pub partial: bool,
    pub notes: Vec<String>,
    /// Wall clock of the request's first byte, ns since the Unix epoch.
    pub time_unix_ns: i64,
    pub client_address: Option<String>,
    pub client_port: Option<u16>,
    pub server_port: Option<u16>,
    pub method: String,
    pub path: String,
    pub http_version: String,
    pub status: Option<u16>,
    /// Request first byte → response last byte.
    pub duration_ms: Option<f64>,
    /// Request first byte → response first byte.
    pub response_start_ms: Option<f64>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    /// Selected request headers, lower-case names.
    pub headers: Vec<(String, String)>,
    pub credentials: Vec<CredentialSeen>,

    // What only the gateway knows.
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    pub model: Option<String>,
    pub upstream_model: Option<String>,
    /// Configured provider name.
    pub provider: Option<String>,
    /// Wire format / vendor: `openai`, `anthropic`, `echo`.
    pub provider_kind: Option<String>,
    pub upstream_status: Option<u16>,
    pub stream: bool,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Request first byte → first body chunk from the upstream.
    pub first_chunk_ms: Option<f64>,
    /// The gateway's error code when it answered with an error itself.
    pub error: Option<String>,
}

impl CallRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The record as one JSON object, with OpenTelemetry HTTP and GenAI
    /// semantic-convention names where one exists, `apx.*` otherwise;
    /// absent fields are left out. Written straight to `out`: `apx logs
    /// --json` prints a million of these, and building a `serde_json::Map`
    /// for each (a key string and a node per field) took 6.5 µs a call.
    pub fn write_json(&self, out: &mut impl std::io::Write) -> serde_json::Result<()> {
        use serde::ser::{SerializeMap, Serializer};

        /// A credential: whether it was there, never its value.
        #[derive(serde::Serialize)]
        struct Seen<'a> {
            present: bool,
            scheme: &'a str,
            fingerprint: &'a str,
        }
        fn put<M: SerializeMap, V: serde::Serialize>(
            map: &mut M,
            key: &str,
            value: Option<V>,
        ) -> Result<(), M::Error> {
            match value {
                Some(value) => map.serialize_entry(key, &value),
                None => Ok(()),
            }
        }
        let finite = |ms: Option<f64>| ms.filter(|ms| ms.is_finite());

        let mut serializer = serde_json::Serializer::new(out);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("time", &crate::time::rfc3339_nanos(self.time_unix_ns))?;
        put(&mut map, "apx.capture", self.capture.map(Capture::name))?;
        map.serialize_entry("apx.partial", &self.partial)?;
        put(
            &mut map,
            "apx.notes",
            (!self.notes.is_empty()).then_some(&self.notes),
        )?;
        put(&mut map, "client.address", self.client_address.as_deref())?;
        put(&mut map, "client.port", self.client_port)?;
        put(&mut map, "server.port", self.server_port)?;
        put(&mut map, "http.request.method", nonempty(&self.method))?;
        put(&mut map, "url.path", nonempty(&self.path))?;
        let version = self.http_version.trim_start_matches("HTTP/");
        put(&mut map, "network.protocol.version", nonempty(version))?;
        put(&mut map, "http.response.status_code", self.status)?;
        put(
            &mut map,
            "http.server.request.duration_ms",
            finite(self.duration_ms),
        )?;
        put(
            &mut map,
            "apx.response_start_ms",
            finite(self.response_start_ms),
        )?;
        put(&mut map, "http.request.body.size", self.request_bytes)?;
        put(&mut map, "http.response.body.size", self.response_bytes)?;
        for (name, value) in &self.headers {
            map.serialize_entry(&format_args!("http.request.header.{name}"), value)?;
        }
        for credential in &self.credentials {
            let seen = Seen {
                present: true,
                scheme: &credential.scheme,
                fingerprint: &credential.fingerprint,
            };
            map.serialize_entry(&format_args!("apx.credential.{}", credential.header), &seen)?;
        }
        put(&mut map, "apx.key.id", self.key_id.as_deref())?;
        put(&mut map, "apx.key.name", self.key_name.as_deref())?;
        put(&mut map, "gen_ai.request.model", self.model.as_deref())?;
        put(
            &mut map,
            "apx.upstream.model",
            self.upstream_model.as_deref(),
        )?;
        put(
            &mut map,
            "gen_ai.provider.name",
            self.provider_kind.as_deref(),
        )?;
        put(&mut map, "apx.provider", self.provider.as_deref())?;
        put(&mut map, "apx.upstream.status_code", self.upstream_status)?;
        map.serialize_entry("apx.stream", &self.stream)?;
        put(&mut map, "gen_ai.usage.input_tokens", self.input_tokens)?;
        put(&mut map, "gen_ai.usage.output_tokens", self.output_tokens)?;
        put(&mut map, "apx.first_chunk_ms", finite(self.first_chunk_ms))?;
        put(&mut map, "error.type", self.error.as_deref())?;
        put(&mut map, "mcp.method.name", self.header("mcp-method"))?;
        put(&mut map, "mcp.session.id", self.header("mcp-session-id"))?;
        map.end()
    }
}

fn nonempty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON line of a record: OpenTelemetry names, credentials as
    /// presence and fingerprint only, absent fields left out (not null).
    #[test]
    fn json_lines_name_fields_and_leave_out_absent_ones() {
        let record = CallRecord {
            id: 7,
            capture: Some(Capture::Ebpf),
            time_unix_ns: 1_700_000_000_123_456_789,
            client_address: Some("10.0.0.2".into()),
            client_port: Some(40000),
            method: "POST".into(),
            path: "/mcp".into(),
            http_version: "HTTP/1.1".into(),
            status: Some(200),
            duration_ms: Some(1.5),
            response_start_ms: Some(f64::NAN),
            headers: vec![
                ("user-agent".into(), "sdk \"x\"".into()),
                ("mcp-method".into(), "tools/call".into()),
            ],
            credentials: vec![CredentialSeen {
                header: "authorization".into(),
                scheme: "bearer".into(),
                fingerprint: "00112233aabbccdd".into(),
            }],
            model: Some("gpt-4o".into()),
            input_tokens: Some(3),
            ..CallRecord::default()
        };
        let mut line = Vec::new();
        record.write_json(&mut line).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let wanted = serde_json::json!({
            "id": 7,
            "time": "2023-11-14T22:13:20.123456Z",
            "apx.capture": "ebpf",
            "apx.partial": false,
            "client.address": "10.0.0.2",
            "client.port": 40000,
            "http.request.method": "POST",
            "url.path": "/mcp",
            "network.protocol.version": "1.1",
            "http.response.status_code": 200,
            "http.server.request.duration_ms": 1.5,
            "http.request.header.user-agent": "sdk \"x\"",
            "http.request.header.mcp-method": "tools/call",
            "apx.credential.authorization":
                {"present": true, "scheme": "bearer", "fingerprint": "00112233aabbccdd"},
            "gen_ai.request.model": "gpt-4o",
            "apx.stream": false,
            "gen_ai.usage.input_tokens": 3,
            "mcp.method.name": "tools/call",
        });
        assert_eq!(value, wanted);
        assert!(!line.contains(&b'\n'));
    }

    /// From bytes, the same text as from the lossy `String` the kernel
    /// record's accessors make, shared for the usual names.
    #[test]
    fn names_from_bytes_match_names_from_text() {
        let cases: [&[u8]; 7] = [
            b"POST",
            b"GET",
            b"HTTP/1.1",
            b"BREW",
            b"",
            b"P\xffST",
            b"HTTP/1.1 ",
        ];
        for bytes in cases {
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(method_name_bytes(bytes), method_name(&text));
            assert_eq!(version_name_bytes(bytes), version_name(&text));
        }
        assert!(matches!(method_name_bytes(b"POST"), Cow::Borrowed("POST")));
        assert!(matches!(
            version_name_bytes(b"HTTP/1.0"),
            Cow::Borrowed("HTTP/1.0")
        ));
    }

    /// A kernel record keeps the kernel's timings; an entry captured in
    /// user space and a lone half take the gateway's, and a lone half is
    /// placed in time from its monotonic start.
    #[test]
    fn gateway_halves_join_with_the_right_timings() {
        let started = Instant::now() - std::time::Duration::from_secs(2);
        let mut half = GatewayHalf::new(started);
        half.facts.model = Some("gpt-test");
        half.status = Some(200);
        half.input_tokens = Some(5);
        half.incomplete = true;
        half.timings.duration_ns = Some(7_000);
        half.timings.response_bytes = 42;

        let mut kernel = CallEntry {
            status: Some(502),
            duration_ns: Some(9_000),
            ..CallEntry::default()
        };
        kernel.absorb_gateway_half(&half);
        assert_eq!(kernel.facts.model, Some("gpt-test"));
        assert_eq!(
            (kernel.status, kernel.duration_ns),
            (Some(502), Some(9_000))
        );
        assert_eq!(kernel.response_bytes, None);
        assert!(kernel.partial && kernel.notes[0].starts_with("response not completed"));

        let mut userspace = CallEntry::default();
        userspace.absorb_gateway_half_timed(&half);
        assert_eq!(userspace.status, Some(200));
        assert_eq!(userspace.duration_ns, Some(7_000));
        assert_eq!(userspace.response_bytes, Some(42));

        let now = 100_000_000_000;
        let lone = CallEntry::from_lone_gateway_half(half, now);
        let placed = now - lone.time_unix_ns;
        assert!((2_000_000_000..3_000_000_000).contains(&placed), "{placed}");
        assert_eq!(lone.capture, Some(Capture::Ebpf));
        assert_eq!(lone.input_tokens, Some(5));
        assert!(lone.partial);
        assert!(
            lone.notes
                .last()
                .is_some_and(|n| n.starts_with("no kernel record"))
        );
    }

    #[test]
    fn small_text_keeps_every_length_and_replaces_bad_utf8() {
        for len in 0..=64 {
            let text: String = "aé".chars().cycle().take(len).collect();
            let small = SmallText::new(&text);
            assert_eq!(small.as_str(), text, "len {len}");
            assert_eq!(SmallText::from(text.clone()), small);
            let inline = matches!(small.0, Repr::Inline { .. });
            assert_eq!(inline, text.len() <= SmallText::INLINE, "len {len}");
        }
        assert_eq!(
            SmallText::from_utf8_lossy(b"ok\xffok").as_str(),
            String::from_utf8_lossy(b"ok\xffok")
        );
        let long = vec![b'x'; 200];
        assert_eq!(SmallText::from_utf8_lossy(&long).len(), 200);
        assert_eq!(SmallText::default().as_str(), "");
    }
}

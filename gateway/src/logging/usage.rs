//! Token usage, read from the response as it streams past: the `usage`
//! objects of OpenAI chat/completions/embeddings/responses and Anthropic
//! messages, in JSON bodies and in server-sent events.

use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem;
use serde::Deserialize;

/// Bodies larger than this are not kept for usage parsing.
const MAX_JSON_BODY: usize = 4 << 20;
/// SSE lines longer than this are skipped.
const MAX_SSE_LINE: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapMode {
    /// A JSON body: parsed once complete.
    Json,
    /// Server-sent events: each `data:` line that mentions usage is parsed.
    Sse,
    /// Compressed or unknown bodies are not inspected.
    Off,
}

#[derive(Debug)]
pub struct UsageTap {
    mode: TapMode,
    /// JSON mode: the body's first frame, kept by reference (most JSON
    /// bodies arrive in one frame, so nothing is copied)…
    first_frame: Option<Bytes>,
    /// …and the whole body once a second frame arrives; SSE mode: the
    /// start of a line cut across frames.
    buffer: Vec<u8>,
    overflow: bool,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl UsageTap {
    pub fn new(mode: TapMode) -> UsageTap {
        UsageTap {
            mode,
            first_frame: None,
            buffer: Vec::new(),
            overflow: false,
            input_tokens: None,
            output_tokens: None,
        }
    }

    pub fn observe(&mut self, data: &Bytes) {
        match self.mode {
            TapMode::Off => {}
            TapMode::Json => {
                let held = self.first_frame.as_ref().map_or(0, Bytes::len);
                if held + self.buffer.len() + data.len() > MAX_JSON_BODY {
                    self.first_frame = None;
                    self.buffer = Vec::new();
                    self.mode = TapMode::Off;
                } else if self.first_frame.is_none() && self.buffer.is_empty() {
                    self.first_frame = Some(data.clone());
                } else {
                    if let Some(first) = self.first_frame.take() {
                        self.buffer.extend_from_slice(&first);
                    }
                    self.buffer.extend_from_slice(data);
                }
            }
            TapMode::Sse => self.observe_sse(data),
        }
    }

    /// Splits the stream into lines; a line cut across frames is kept in
    /// `buffer` until its end arrives (`overflow`: it grew too long, skip it).
    fn observe_sse(&mut self, mut data: &[u8]) {
        while let Some(newline) = memchr::memchr(b'\n', data) {
            let (line, rest) = data.split_at(newline);
            if self.overflow {
                self.overflow = false;
            } else if self.buffer.is_empty() {
                self.sse_line(line);
            } else {
                let mut whole = std::mem::take(&mut self.buffer);
                whole.extend_from_slice(line);
                self.sse_line(&whole);
                whole.clear();
                self.buffer = whole;
            }
            data = &rest[1..];
        }
        if self.overflow {
            return;
        }
        if self.buffer.len() + data.len() > MAX_SSE_LINE {
            self.overflow = true;
            self.buffer.clear();
        } else {
            self.buffer.extend_from_slice(data);
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(payload) = line.strip_prefix(b"data:") else {
            return;
        };
        // `"usage":null` (every chunk of an OpenAI stream that asked for
        // usage) has nothing to read: only an object is parsed.
        if !has_usage_object(payload) {
            return;
        }
        self.absorb_usages(payload);
    }

    /// Call once the body ended.
    pub fn finish(&mut self) {
        if self.mode != TapMode::Json {
            return;
        }
        let body = match self.first_frame.take() {
            Some(first) => first,
            None => Bytes::from(std::mem::take(&mut self.buffer)),
        };
        if body.is_empty() {
            return;
        }
        self.absorb_usages(&body);
    }

    /// Reads the `usage` objects of one JSON document: only those objects
    /// are parsed; the rest (the completion text, choices, tool calls) is
    /// only scanned for its structure. A full parse that skipped the rest
    /// cost ~1.7 µs per non-streamed call (perf, bench response).
    fn absorb_usages(&mut self, json: &[u8]) {
        for_each_usage_object(json, |object| {
            let usage = match simple_usage(object) {
                Some(usage) => usage,
                None => {
                    let mut parser = serde_json::Deserializer::from_slice(object);
                    let Ok(usage) = Usage::deserialize(&mut parser) else {
                        return;
                    };
                    usage
                }
            };
            if let Some(input) = usage.input_tokens.or(usage.prompt_tokens) {
                self.input_tokens = Some(input);
            }
            if let Some(output) = usage.output_tokens.or(usage.completion_tokens) {
                self.output_tokens = Some(output);
            }
        });
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// JSON whitespace (not `is_ascii_whitespace`, which adds form feed).
fn is_json_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\r' | b'\t')
}

/// Nesting deeper than this inside a usage object is left to serde.
const SIMPLE_DEPTH: usize = 32;

/// The usage object at the start of `json`, read without serde when it
/// is in the plain form every API sends: keys and strings of printable
/// ASCII without escapes, token counts as plain integers, other values
/// well-formed. `None` means "not that simple": the caller then asks
/// serde, so whatever this accepts reads exactly as serde reads it (a
/// derive on four `Option<u64>`s: unknown keys skipped, `null` is absent,
/// a count given twice or not an unsigned integer is an error). Serde
/// cost ~3.7k instructions for the benchmark's usage object, this ~1k.
fn simple_usage(json: &[u8]) -> Option<Usage> {
    let mut scan = Simple { json, at: 0 };
    let mut usage = Usage::default();
    let mut seen = [false; 4];
    scan.expect(b'{')?;
    scan.space();
    if scan.peek()? == b'}' {
        return Some(usage);
    }
    loop {
        let key = scan.string()?;
        scan.space();
        scan.expect(b':')?;
        scan.space();
        let slot = match key {
            b"input_tokens" => Some((0, &mut usage.input_tokens)),
            b"output_tokens" => Some((1, &mut usage.output_tokens)),
            b"prompt_tokens" => Some((2, &mut usage.prompt_tokens)),
            b"completion_tokens" => Some((3, &mut usage.completion_tokens)),
            _ => None,
        };
        match slot {
            Some((field, value)) => {
                if std::mem::replace(&mut seen[field], true) {
                    return None;
                }
                *value = scan.count()?;
            }
            None => scan.value(1)?,
        }
        scan.space();
        match scan.next()? {
            b',' => scan.space(),
            b'}' => return Some(usage),
            _ => return None,
        }
    }
}

/// The index of the first byte from `at` on that is not printable ASCII
/// or is `"` or `\\` (`json.len()` if there is none). Eight bytes at a
/// time: a byte at a time cost ~7 instructions per byte of key.
fn plain_run(json: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit of each byte of `w` that is zero; wrong only in bytes above
    // a zero byte, so the lowest one found is exact.
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    while let Some(chunk) = json.get(at..at + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let w = u64::from_le_bytes(bytes);
        // Below 0x20 (same borrow argument), 0x80 and above, DEL, `"`, `\\`.
        let special = (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | (w & HIGH)
            | zero(w ^ (ONES * 0x7f))
            | zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')));
        if special != 0 {
            return at + (special.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&byte) = json.get(at) {
        if !(0x20..0x7f).contains(&byte) || byte == b'"' || byte == b'\\' {
            break;
        }
        at += 1;
    }
    at
}

/// A cursor for [`simple_usage`]; every method returns `None` for
/// anything outside the plain form.
struct Simple<'a> {
    json: &'a [u8],
    at: usize,
}

impl<'a> Simple<'a> {
    fn peek(&self) -> Option<u8> {
        self.json.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn space(&mut self) {
        while self.peek().is_some_and(is_json_space) {
            self.at += 1;
        }
    }

    /// A string of printable ASCII without escapes; its bytes.
    fn string(&mut self) -> Option<&'a [u8]> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        let end = plain_run(self.json, start);
        if self.json.get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        Some(&self.json[start..end])
    }

    /// `null` or an unsigned integer that fits in a u64, as serde reads
    /// an `Option<u64>`.
    fn count(&mut self) -> Option<Option<u64>> {
        if self.json[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        let start = self.at;
        let mut value = 0u64;
        while let Some(digit) = self.peek().filter(u8::is_ascii_digit) {
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.json[start] == b'0';
        let fraction = matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        (digits > 0 && !leading_zero && !fraction).then_some(Some(value))
    }

    /// Skips one well-formed value.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.container(depth, b'}', true),
            b'[' => self.container(depth, b']', false),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.json[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        // `01` is not a number: a digit may not follow a leading zero.
        (!self.peek().is_some_and(|b| b.is_ascii_digit())).then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// An object (`keyed`) or array, its opening bracket next.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        if depth >= SIMPLE_DEPTH {
            return None;
        }
        self.at += 1;
        self.space();
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            if keyed {
                self.string()?;
                self.space();
                self.expect(b':')?;
                self.space();
            }
            self.value(depth + 1)?;
            self.space();
            match self.next()? {
                b',' => self.space(),
                byte if byte == close => return Some(()),
                _ => return None,
            }
        }
    }
}

/// Calls `found` with the text from each `usage` object's opening brace to
/// the end of `json`, for the places a usage object appears: top level
/// (OpenAI bodies and chunks, Anthropic bodies, `message_delta`), or inside
/// a top-level `message` (`message_start`) or `response` object (Responses
/// API events). A key is recognised only outside strings, so text that
/// mentions `"usage":` (escaped inside a string) never counts. Malformed
/// JSON ends the scan; the object itself is checked by its parser.
fn for_each_usage_object(json: &[u8], mut found: impl FnMut(&[u8])) {
    let skip_space = |mut at: usize| {
        while json.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        at
    };
    let mut depth = 0usize;
    // The last top-level key was `message` or `response`…
    let mut carrier_key = false;
    // …and the object open at depth 2 is its value.
    let mut in_carrier = false;
    let mut at = 0;
    while at < json.len() {
        match json[at] {
            b'"' => {
                let start = at + 1;
                let Some(end) = string_end(json, start) else {
                    return;
                };
                let after = skip_space(end + 1);
                if json.get(after) != Some(&b':') {
                    at = end + 1;
                    continue;
                }
                let key = &json[start..end];
                let value = skip_space(after + 1);
                if key == b"usage"
                    && json.get(value) == Some(&b'{')
                    && (depth == 1 || (depth == 2 && in_carrier))
                {
                    found(&json[value..]);
                }
                if depth == 1 {
                    carrier_key = key == b"message" || key == b"response";
                }
                at = value;
                continue;
            }
            open @ (b'{' | b'[') => {
                depth += 1;
                if depth == 2 {
                    in_carrier = open == b'{' && carrier_key;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
}

/// The closing quote of the string whose text starts at `at`, if any.
/// Most strings (keys, ids, short values) are short: their first 32 bytes
/// are searched eight at a time inline, cheaper than setting up the SIMD
/// search, which takes over for the rest.
fn string_end(json: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // See `plain_run`.
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let mut words = 0;
    while let Some(chunk) = json.get(at..at + 8).filter(|_| words < 4) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let w = u64::from_le_bytes(bytes);
        let special = zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')));
        if special == 0 {
            at += 8;
            words += 1;
            continue;
        }
        at += (special.trailing_zeros() / 8) as usize;
        if json[at] == b'"' {
            return Some(at);
        }
        at += 2;
    }
    loop {
        at += memchr::memchr2(b'"', b'\\', json.get(at..)?)?;
        if json[at] == b'"' {
            return Some(at);
        }
        at += 2;
    }
}

/// Whether `bytes` have a `"usage"` member whose value is an object.
pub(crate) fn has_usage_object(bytes: &[u8]) -> bool {
    const NAME: &[u8] = b"\"usage\"";
    // Built once: `memmem::find` builds a searcher on every call, which
    // cost more than the search in a short SSE line.
    static FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(NAME));
    let mut rest = bytes;
    while let Some(at) = FINDER.find(rest) {
        rest = &rest[at + NAME.len()..];
        let mut value = rest.iter().skip_while(|b| b.is_ascii_whitespace());
        if value.next() != Some(&b':') {
            continue;
        }
        if value.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_json_usage() {
        let mut tap = UsageTap::new(TapMode::Json);
        tap.observe(&Bytes::from_static(
            br#"{"id":"x","usage":{"prompt_tokens":12,"#,
        ));
        tap.observe(&Bytes::from_static(
            br#""completion_tokens":5,"total_tokens":17}}"#,
        ));
        tap.finish();
        assert_eq!((tap.input_tokens, tap.output_tokens), (Some(12), Some(5)));
    }

    #[test]
    fn reads_anthropic_stream_usage_split_across_frames() {
        let mut tap = UsageTap::new(TapMode::Sse);
        tap.observe(&Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n"));
        tap.observe(&Bytes::from_static(
            b"event: content_block_delta\ndata: {\"delta\":{\"text\":\"hi\"}}\n\n",
        ));
        tap.observe(&Bytes::from_static(
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usa",
        ));
        tap.observe(&Bytes::from_static(b"ge\":{\"output_tokens\":42}}\n\n"));
        tap.finish();
        assert_eq!((tap.input_tokens, tap.output_tokens), (Some(9), Some(42)));
    }

    #[test]
    fn reads_openai_stream_and_responses_usage() {
        let mut tap = UsageTap::new(TapMode::Sse);
        tap.observe(&Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n"));
        assert_eq!((tap.input_tokens, tap.output_tokens), (Some(3), Some(4)));
        let mut tap = UsageTap::new(TapMode::Sse);
        tap.observe(&Bytes::from_static(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":8}}}\n\n"));
        assert_eq!((tap.input_tokens, tap.output_tokens), (Some(7), Some(8)));
    }

    #[test]
    fn a_string_message_field_does_not_hide_usage() {
        let mut tap = UsageTap::new(TapMode::Json);
        tap.observe(&Bytes::from_static(
            br#"{"message":"ok","usage":{"input_tokens":1,"output_tokens":2}}"#,
        ));
        tap.finish();
        assert_eq!((tap.input_tokens, tap.output_tokens), (Some(1), Some(2)));
    }

    #[test]
    fn only_real_usage_members_count() {
        let read = |body: &str| {
            let mut tap = UsageTap::new(TapMode::Json);
            tap.observe(&Bytes::copy_from_slice(body.as_bytes()));
            tap.finish();
            (tap.input_tokens, tap.output_tokens)
        };
        // Text that quotes a usage object is inside a string: escaped.
        let quoted = r#"{"choices":[{"message":{"content":"say \"usage\": {\"prompt_tokens\": 99} \\"}}],"usage":{"prompt_tokens":4,"completion_tokens":6}}"#;
        assert_eq!(read(quoted), (Some(4), Some(6)));
        // A `usage` deeper than where the APIs put it is not the call's.
        let nested =
            r#"{"choices":[{"usage":{"prompt_tokens":99}}],"data":{"usage":{"prompt_tokens":98}}}"#;
        assert_eq!(read(nested), (None, None));
        // Under a top-level `message` or `response` it is.
        let message = r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":5,"output_tokens":1}}}"#;
        assert_eq!(read(message), (Some(5), Some(1)));
        // Whitespace, a non-object usage, then the real one.
        let spaced =
            "{ \"usage\" : null , \"x\" : [ { } ] ,\n \"usage\"\t:\r{ \"input_tokens\" : 7 } }";
        assert_eq!(read(spaced), (Some(7), None));
        // Cut anywhere or broken: no panic, no made-up numbers.
        let whole = br#"{"id":"x","choices":[{"text":"a\"b\\"}],"usage":{"prompt_tokens":12,"completion_tokens":5}}"#;
        for cut in 0..whole.len() {
            let mut tap = UsageTap::new(TapMode::Json);
            tap.observe(&Bytes::copy_from_slice(&whole[..cut]));
            tap.finish();
            assert!(tap.input_tokens.is_none_or(|n| n == 12), "cut at {cut}");
        }
        assert_eq!(
            read(std::str::from_utf8(whole).unwrap()),
            (Some(12), Some(5))
        );
    }

    /// Word-at-a-time searches find what a byte-at-a-time loop finds,
    /// wherever the quote, escape or odd byte falls.
    #[test]
    fn word_searches_match_byte_loops() {
        let naive_end = |json: &[u8], mut at: usize| {
            while at < json.len() {
                match json[at] {
                    b'"' => return Some(at),
                    b'\\' => at += 2,
                    _ => at += 1,
                }
            }
            None
        };
        let naive_plain = |json: &[u8], mut at: usize| {
            while at < json.len()
                && (0x20..0x7f).contains(&json[at])
                && json[at] != b'"'
                && json[at] != b'\\'
            {
                at += 1;
            }
            at
        };
        for len in 0..80 {
            for special in [b'"', b'\\', 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0xff, b'!', b']'] {
                for at in 0..len {
                    let mut json = vec![b'a'; len];
                    json[at] = special;
                    for start in [0, 1, 7, 8, 9] {
                        assert_eq!(string_end(&json, start), naive_end(&json, start));
                        assert_eq!(plain_run(&json, start), naive_plain(&json, start));
                    }
                }
            }
        }
    }

    fn serde_usage(json: &[u8]) -> Option<Usage> {
        Usage::deserialize(&mut serde_json::Deserializer::from_slice(json)).ok()
    }

    /// Whatever the plain-form reader accepts, serde reads the same way;
    /// checked on usage objects cut anywhere and with every byte replaced
    /// by characters that matter to JSON.
    #[test]
    fn the_plain_reader_agrees_with_serde() {
        let base = br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":null},"x":[1,-2.5e+3,true,false,"s",[],{}],"input_tokens" : 0 ,"output_tokens":18446744073709551615}"#;
        assert_eq!(
            simple_usage(base),
            Some(Usage {
                input_tokens: Some(0),
                output_tokens: Some(u64::MAX),
                prompt_tokens: Some(12),
                completion_tokens: Some(5),
            })
        );
        let check = |json: &[u8]| {
            if let Some(usage) = simple_usage(json) {
                assert_eq!(
                    serde_usage(json),
                    Some(usage),
                    "{}",
                    String::from_utf8_lossy(json)
                );
            }
        };
        let odd = b" \t\n\x0c\"\\{}[],:-+.eE019nulltrfas\x00\x7f\xc3";
        for at in 0..base.len() {
            check(&base[..at]);
            for byte in odd {
                let mut changed = base.to_vec();
                changed[at] = *byte;
                check(&changed);
                changed.insert(at, *byte);
                check(&changed);
            }
        }
        for json in [
            &br#"{"prompt_tokens":1,"prompt_tokens":2}"#[..],
            br#"{"prompt_tokens":01}"#,
            br#"{"prompt_tokens":-0}"#,
            br#"{"prompt_tokens":1.0}"#,
            br#"{"prompt_tokens":18446744073709551616}"#,
            br#"{"prompt\u005ftokens":3}"#,
            br#"{"prompt_tokens":3,}"#,
            br#"{"a":{"b":{"c":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}"#,
        ] {
            assert_eq!(simple_usage(json), None, "{}", String::from_utf8_lossy(json));
        }
    }

    #[test]
    fn no_usage_means_none() {
        let mut tap = UsageTap::new(TapMode::Sse);
        tap.observe(&Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{}}]}\n\n",
        ));
        tap.finish();
        assert_eq!(tap.input_tokens, None);
    }
}

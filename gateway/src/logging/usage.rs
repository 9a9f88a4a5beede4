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
            let (usage, len) = match simple_usage(object) {
                Some((usage, len)) => (usage, Some(len)),
                None => {
                    let mut parser = serde_json::Deserializer::from_slice(object);
                    let Ok(usage) = Usage::deserialize(&mut parser) else {
                        return None;
                    };
                    (usage, None)
                }
            };
            if let Some(input) = usage.input_tokens.or(usage.prompt_tokens) {
                self.input_tokens = Some(input);
            }
            if let Some(output) = usage.output_tokens.or(usage.completion_tokens) {
                self.output_tokens = Some(output);
            }
            len
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
/// cost ~3.7k instructions for the benchmark's usage object, this ~1.8k
/// (callgrind, log_cost tap-json).
/// The length of the object comes with it: the scan resumes after it.
fn simple_usage(json: &[u8]) -> Option<(Usage, usize)> {
    let mut scan = Simple { json, at: 0 };
    let mut usage = Usage::default();
    let mut seen = [false; 4];
    scan.expect(b'{')?;
    if scan.space()? == b'}' {
        return Some((usage, scan.at + 1));
    }
    loop {
        let slot = match scan.key()? {
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
            None => scan.value()?,
        }
        match scan.space()? {
            b',' => scan.at += 1,
            b'}' => return Some((usage, scan.at + 1)),
            _ => return None,
        }
    }
}

/// The index of the first byte from `at` on that is not printable ASCII
/// or is `"` or `\\` (`json.len()` if there is none). On x86_64 sixteen
/// bytes at a time, elsewhere (and for the last bytes) eight.
fn plain_run(json: &[u8], at: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    let at = {
        let mut at = at;
        while let Some(chunk) = json.get(at..).and_then(<[u8]>::first_chunk::<16>) {
            let odd = not_plain(chunk);
            if odd != 0 {
                return at + odd.trailing_zeros() as usize;
            }
            at += 16;
        }
        at
    };
    plain_run_words(json, at)
}

/// [`plain_run`] eight bytes at a time: a byte at a time cost ~7
/// instructions per byte of key.
fn plain_run_words(json: &[u8], mut at: usize) -> usize {
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

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Passes JSON whitespace; the byte after it. Usage objects rarely
    /// have any: all four space bytes are at most `b' '`, so one compare
    /// usually settles it.
    #[inline(always)]
    fn space(&mut self) -> Option<u8> {
        let mut byte = self.peek()?;
        while byte <= b' ' && is_json_space(byte) {
            self.at += 1;
            byte = self.peek()?;
        }
        Some(byte)
    }

    /// A string of printable ASCII without escapes, its opening quote
    /// next; its bytes.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.at + 1;
        let end = plain_run(self.json, start);
        if self.json.get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        Some(&self.json[start..end])
    }

    /// A member's key and its colon.
    #[inline(always)]
    fn key(&mut self) -> Option<&'a [u8]> {
        if self.space()? != b'"' {
            return None;
        }
        let key = self.string()?;
        if self.space()? != b':' {
            return None;
        }
        self.at += 1;
        Some(key)
    }

    /// `null` or an unsigned integer that fits in a u64, as serde reads
    /// an `Option<u64>`.
    fn count(&mut self) -> Option<Option<u64>> {
        self.space()?;
        let rest = &self.json[self.at..];
        let value = match rest.first()? {
            b'n' if rest.starts_with(b"null") => {
                self.at += 4;
                return Some(None);
            }
            b'0' => {
                self.at += 1;
                0
            }
            b'1'..=b'9' => {
                let mut value = 0u64;
                let mut digits = 0;
                for &digit in rest.iter().take_while(|b| b.is_ascii_digit()) {
                    value = value
                        .checked_mul(10)?
                        .checked_add(u64::from(digit - b'0'))?;
                    digits += 1;
                }
                self.at += digits;
                value
            }
            _ => return None,
        };
        // Not `01`, `1.0` or `1e3`: serde reads those otherwise or not at all.
        (!matches!(self.peek(), Some(b'0'..=b'9' | b'.' | b'e' | b'E'))).then_some(Some(value))
    }

    /// Skips one well-formed value. Containers are followed with a
    /// stack of bits instead of recursion: a call per nested value cost
    /// more than the value (`0`) itself.
    fn value(&mut self) -> Option<()> {
        // Bit `i`: the container open at level `i` is an object.
        let mut objects = 0u32;
        let mut open = 0usize;
        loop {
            // A value is next.
            match self.space()? {
                open_byte @ (b'{' | b'[') => {
                    // The member's own value is at depth 1.
                    if open + 1 >= SIMPLE_DEPTH {
                        return None;
                    }
                    let keyed = open_byte == b'{';
                    objects = (objects << 1) | u32::from(keyed);
                    open += 1;
                    self.at += 1;
                    let close = if keyed { b'}' } else { b']' };
                    if self.space()? != close {
                        if keyed {
                            self.key()?;
                        }
                        continue;
                    }
                    self.at += 1;
                    objects >>= 1;
                    open -= 1;
                }
                b'"' => drop(self.string()?),
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => self.number()?,
            }
            // A value ended: close what it ended, or go on to the next.
            loop {
                if open == 0 {
                    return Some(());
                }
                let keyed = objects & 1 == 1;
                match self.space()? {
                    b',' => {
                        self.at += 1;
                        if keyed {
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if keyed => {}
                    b']' if !keyed => {}
                    _ => return None,
                }
                self.at += 1;
                objects >>= 1;
                open -= 1;
            }
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
        match self.peek()? {
            b'0' => self.at += 1,
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
}

/// Calls `found` with the text from each `usage` object's opening brace to
/// the end of `json`, for the places a usage object appears: top level
/// (OpenAI bodies and chunks, Anthropic bodies, `message_delta`), or inside
/// a top-level `message` (`message_start`) or `response` object (Responses
/// API events). A key is recognised only outside strings, so text that
/// mentions `"usage":` (escaped inside a string) never counts. Malformed
/// JSON ends the scan; the object itself is checked by its parser.
///
/// `found` may return the length of the object when it read it as plain,
/// well-formed JSON: nothing inside it can be a usage object the scan
/// would report, so the scan resumes after it instead of reading it again.
///
/// Keys matter only at depth 1 and directly inside a carrier; any other
/// container is passed over by [`container_end`], which looks at sixteen
/// bytes at a time instead of stopping at every string.
fn for_each_usage_object(json: &[u8], mut found: impl FnMut(&[u8]) -> Option<usize>) {
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
                let Some(end) = short_string_end(json, start).or_else(|| string_end(json, start))
                else {
                    return;
                };
                let after = skip_space(end + 1);
                if json.get(after) != Some(&b':') {
                    at = end + 1;
                    continue;
                }
                let key = &json[start..end];
                let value = skip_space(after + 1);
                if depth == 1 {
                    carrier_key = key == b"message" || key == b"response";
                }
                at = value;
                if key == b"usage"
                    && json.get(value) == Some(&b'{')
                    && (depth == 1 || (depth == 2 && in_carrier))
                    && let Some(len) = found(&json[value..])
                {
                    // Read as plain JSON, the object leaves the scan where
                    // it found it: at `depth`, with `carrier_key` false at
                    // depth 1 (the key was `usage`), and `in_carrier`,
                    // which it would have cleared, read only at depth 2,
                    // where an opening bracket sets it again.
                    at = value + len;
                }
                continue;
            }
            open @ (b'{' | b'[') => {
                depth += 1;
                if depth == 2 {
                    in_carrier = open == b'{' && carrier_key;
                }
                // No key inside this container can be a usage member.
                if depth >= 2 && !(depth == 2 && in_carrier) {
                    let Some(end) = container_end(json, at + 1) else {
                        return;
                    };
                    depth -= 1;
                    at = end;
                    continue;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
}

/// Bit `i` of each mask: byte `i` of a sixteen-byte chunk is of that kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Classes {
    quote: u32,
    backslash: u32,
    open: u32,
    close: u32,
}

/// SSE2 is part of every x86_64 target, so no run-time check is needed.
#[cfg(target_arch = "x86_64")]
fn classify(chunk: &[u8; 16]) -> Classes {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is enabled on every x86_64 target, and `chunk` is
    // sixteen readable bytes (`loadu` has no alignment requirement).
    let [quote, backslash, open, close] = unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        // `{` and `[`, `}` and `]` differ only in bit 5: setting it folds
        // each pair onto one value, and no other byte lands on either.
        let folded = _mm_or_si128(bytes, _mm_set1_epi8(0x20));
        [
            _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8)),
            _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8)),
            _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8)),
            _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8)),
        ]
        .map(|equal| _mm_movemask_epi8(equal) as u32 & 0xffff)
    };
    Classes {
        quote,
        backslash,
        open,
        close,
    }
}

/// The bytes of a chunk a plain string may not hold: below 0x20, 0x7f and
/// above, `"` and `\\`.
#[cfg(target_arch = "x86_64")]
fn not_plain(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: as in `classify`.
    unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        // A signed compare: bytes from 0x80 up are negative, below 0x20 too.
        let control_or_high = _mm_cmplt_epi8(bytes, _mm_set1_epi8(0x20));
        let delete = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(0x7f));
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        let odd = _mm_or_si128(
            _mm_or_si128(control_or_high, delete),
            _mm_or_si128(quote, backslash),
        );
        _mm_movemask_epi8(odd) as u32 & 0xffff
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn classify(chunk: &[u8; 16]) -> Classes {
    classify_words(chunk)
}

/// The portable classifier: two words of eight bytes.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn classify_words(chunk: &[u8; 16]) -> Classes {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of every zero byte of `w` and of no other: adding 0x7f
    // to the low seven bits sets the high bit unless they are all zero,
    // and no carry crosses a byte.
    let zero = |w: u64| !(((w & LOW7) + LOW7) | w) & HIGH;
    // Gathers the high bits into the low byte: the multiplier's bit `7i`
    // moves byte `i`'s high bit (bit `8i + 7`) to bit `56 + i`, and no two
    // partial products meet there.
    let gather = |high: u64| (high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56;
    let mut masks = [0u32; 4];
    for (half, bytes) in chunk.chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        let w = u64::from_le_bytes(word);
        let folded = w | (ONES * 0x20);
        let kinds = [
            zero(w ^ (ONES * u64::from(b'"'))),
            zero(w ^ (ONES * u64::from(b'\\'))),
            zero(folded ^ (ONES * u64::from(b'{'))),
            zero(folded ^ (ONES * u64::from(b'}'))),
        ];
        for (mask, kind) in masks.iter_mut().zip(kinds) {
            *mask |= (gather(kind) as u32) << (8 * half);
        }
    }
    Classes {
        quote: masks[0],
        backslash: masks[1],
        open: masks[2],
        close: masks[3],
    }
}

/// Bit `i` of the result: an odd number of bits `0..=i` of `mask` are set.
fn prefix_xor(mut mask: u32) -> u32 {
    mask ^= mask << 1;
    mask ^= mask << 2;
    mask ^= mask << 4;
    mask ^= mask << 8;
    mask & 0xffff
}

/// The index just past the bracket that closes the container whose
/// contents start at `at`, reading the bytes as the key scan in
/// [`for_each_usage_object`] does (a quote opens a string that the next
/// quote not hidden by a backslash closes; brackets of either kind count
/// outside strings; a backslash outside strings is nothing); `None` if
/// `json` ends first.
///
/// A chunk without backslashes (nearly all) is resolved at once: the
/// quotes' running parity marks which bytes are inside strings. A chunk
/// with one is walked special byte by special byte. A string that fills
/// a whole chunk is long (the completion text): its end is searched by
/// [`string_end`] instead, which is faster on long runs.
fn container_end(json: &[u8], mut at: usize) -> Option<usize> {
    let mut depth = 1usize;
    let mut in_string = false;
    // Bit 0 set: the chunk's first byte is escaped by a backslash that
    // ended the previous chunk.
    let mut hidden = 0u32;
    loop {
        let rest = json.get(at..).filter(|rest| !rest.is_empty())?;
        let mut padded = [b' '; 16];
        let chunk = match rest.first_chunk::<16>() {
            Some(chunk) => chunk,
            None => {
                padded[..rest.len()].copy_from_slice(rest);
                &padded
            }
        };
        let classes = classify(chunk);
        let quote = classes.quote & !hidden;
        let backslash = classes.backslash & !hidden;
        let open = classes.open & !hidden;
        let close = classes.close & !hidden;
        hidden = 0;
        if backslash == 0 {
            if in_string && quote == 0 {
                // The whole chunk is string text.
                let end = string_end(json, at + 16)?;
                at = end + 1;
                in_string = false;
                continue;
            }
            let inside = prefix_xor(quote) ^ if in_string { 0xffff } else { 0 };
            let mut brackets = (open | close) & !inside;
            while brackets != 0 {
                let bit = brackets & brackets.wrapping_neg();
                if open & bit != 0 {
                    depth += 1;
                } else {
                    depth -= 1;
                    if depth == 0 {
                        return Some(at + bit.trailing_zeros() as usize + 1);
                    }
                }
                brackets ^= bit;
            }
            in_string = inside & 0x8000 != 0;
        } else {
            let mut special = quote | backslash | open | close;
            while special != 0 {
                let bit = special & special.wrapping_neg();
                special ^= bit;
                if in_string {
                    if quote & bit != 0 {
                        in_string = false;
                    } else if backslash & bit != 0 {
                        // The next byte is text, whatever it is.
                        if bit == 0x8000 {
                            hidden = 1;
                        } else {
                            special &= !(bit << 1);
                        }
                    }
                } else if quote & bit != 0 {
                    in_string = true;
                } else if open & bit != 0 {
                    depth += 1;
                } else if close & bit != 0 {
                    depth -= 1;
                    if depth == 0 {
                        return Some(at + bit.trailing_zeros() as usize + 1);
                    }
                }
            }
        }
        at += 16;
    }
}

/// The closing quote of the string whose text starts at `at`, if any.
/// Most strings (keys, ids, short values) are short: on x86_64 their
/// first 64 bytes are searched sixteen at a time inline (an SSE2 compare
/// costs about what one eight-byte word does), cheaper than setting up
/// the wide search (~50 instructions a call), which takes over for the
/// rest.
fn string_end(json: &[u8], at: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    let at = {
        let mut at = at;
        let mut clean = 0;
        while let Some(chunk) = json.get(at..).and_then(<[u8]>::first_chunk::<16>) {
            let classes = classify(chunk);
            let special = classes.quote | classes.backslash;
            if special == 0 {
                at += 16;
                clean += 1;
                if clean == 4 {
                    return string_end_wide(json, at);
                }
                continue;
            }
            at += special.trailing_zeros() as usize;
            if json[at] == b'"' {
                return Some(at);
            }
            at += 2;
        }
        at
    };
    string_end_words(json, at)
}

/// The closing quote of a string shorter than sixteen bytes without
/// escapes (most keys and values the key scan meets); `None` for any
/// other, which [`string_end`] then finds. Inlined into the scan: the
/// call cost as much as the search.
#[inline(always)]
fn short_string_end(json: &[u8], at: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let chunk = json.get(at..)?.first_chunk::<16>()?;
        let classes = classify(chunk);
        let special = classes.quote | classes.backslash;
        let first = special & special.wrapping_neg();
        (first & classes.quote != 0).then(|| at + first.trailing_zeros() as usize)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (json, at);
        None
    }
}

/// [`string_end`] eight bytes at a time for the first 32 bytes: what
/// other targets use, and what x86_64 uses for a string's last bytes.
fn string_end_words(json: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // See `plain_run_words`.
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
    string_end_wide(json, at)
}

/// [`string_end`] for long strings.
fn string_end_wide(json: &[u8], mut at: usize) -> Option<usize> {
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
                    for start in [0, 1, 7, 8, 9, 15, 16, 17, 33] {
                        let end = naive_end(&json, start);
                        assert_eq!(string_end(&json, start), end);
                        assert_eq!(string_end_words(&json, start), end);
                        assert_eq!(string_end_wide(&json, start), end);
                        let plain = naive_plain(&json, start);
                        assert_eq!(plain_run(&json, start), plain);
                        assert_eq!(plain_run_words(&json, start), plain);
                    }
                }
            }
        }
    }

    /// Serde's reading and where it stopped.
    fn serde_usage(json: &[u8]) -> Option<(Usage, usize)> {
        let mut values = serde_json::Deserializer::from_slice(json).into_iter::<Usage>();
        let usage = values.next()?.ok()?;
        Some((usage, values.byte_offset()))
    }

    /// Whatever the plain-form reader accepts, serde reads the same way;
    /// checked on usage objects cut anywhere and with every byte replaced
    /// by characters that matter to JSON.
    #[test]
    fn the_plain_reader_agrees_with_serde() {
        let base = br#"{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":null},"x":[1,-2.5e+3,true,false,"s",[],{}],"input_tokens" : 0 ,"output_tokens":18446744073709551615}"#;
        assert_eq!(
            simple_usage(base),
            Some((
                Usage {
                    input_tokens: Some(0),
                    output_tokens: Some(u64::MAX),
                    prompt_tokens: Some(12),
                    completion_tokens: Some(5),
                },
                base.len()
            ))
        );
        // The length too: the scan resumes there.
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

    /// The key scan as it was before containers were passed over sixteen
    /// bytes at a time and plain usage objects jumped: the reference.
    fn reference_offsets(json: &[u8]) -> Vec<usize> {
        let mut offsets = Vec::new();
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
                        return offsets;
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
                        offsets.push(value);
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
        offsets
    }

    /// Where the scan finds usage objects; with `jump`, it resumes after
    /// each object the plain reader accepts, as the tap does.
    fn scan_offsets(json: &[u8], jump: bool) -> Vec<usize> {
        let mut offsets = Vec::new();
        for_each_usage_object(json, |object| {
            offsets.push(json.len() - object.len());
            if jump {
                simple_usage(object).map(|(_, len)| len)
            } else {
                None
            }
        });
        offsets
    }

    /// What the tap reported before, with serde as the only reader.
    fn reference_tokens(json: &[u8]) -> (Option<u64>, Option<u64>) {
        let (mut input, mut output) = (None, None);
        for at in reference_offsets(json) {
            if let Some((usage, _)) = serde_usage(&json[at..]) {
                input = usage.input_tokens.or(usage.prompt_tokens).or(input);
                output = usage.output_tokens.or(usage.completion_tokens).or(output);
            }
        }
        (input, output)
    }

    /// xorshift64*: reproducible documents without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn space(rng: &mut Rng, out: &mut Vec<u8>) {
        if rng.below(4) == 0 {
            out.extend_from_slice(rng.pick(&[" ", "\n", "\t", "\r", "\x0c", "  "]).as_bytes());
        }
    }

    /// A string's text: words, brackets, escapes (a quoted `"usage":{`
    /// among them), runs long enough to span chunks, a backslash last.
    fn string(rng: &mut Rng, out: &mut Vec<u8>) {
        out.push(b'"');
        for _ in 0..rng.below(5) {
            match rng.below(12) {
                0 => out.extend(std::iter::repeat_n(b'a', rng.below(80))),
                1 => out.extend_from_slice(br#"\"usage\":{\"prompt_tokens\":99}"#),
                2 => out.extend_from_slice(rng.pick(&["{", "}", "[", "]", ":", ","]).as_bytes()),
                3 => out.extend_from_slice(
                    rng.pick(&[r"\\", r#"\""#, r"\n", r"\u0041", r"\/"])
                        .as_bytes(),
                ),
                4 => {
                    out.extend(std::iter::repeat_n(b'b', rng.below(20)));
                    out.extend_from_slice(br#"\\\""#);
                }
                5 => out.extend_from_slice("é✓".as_bytes()),
                _ => out.extend_from_slice(
                    rng.pick(&["usage", "message", "hi ", "x", "response"])
                        .as_bytes(),
                ),
            }
        }
        out.push(b'"');
    }

    /// A key; whether it names a place a usage object may be.
    fn key(rng: &mut Rng, out: &mut Vec<u8>) -> bool {
        if rng.below(5) == 0 {
            string(rng, out);
            return false;
        }
        let name = if rng.below(2) == 0 {
            rng.pick(&["usage", "message", "response"])
        } else {
            rng.pick(&[
                "usage",
                "usage",
                "message",
                "response",
                "id",
                "choices",
                "content",
                "text",
                "type",
                r"us\u0061ge",
                r#"a\"b"#,
                "prompt_tokens",
                "input_tokens",
            ])
        };
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
        matches!(name, "usage" | "message" | "response")
    }

    /// A usage object: mostly as the APIs send it, sometimes odd.
    fn usage_object(rng: &mut Rng, out: &mut Vec<u8>) {
        let members = [
            r#""prompt_tokens":12"#,
            r#""completion_tokens":5"#,
            r#""input_tokens":7"#,
            r#""output_tokens":9"#,
            r#""total_tokens":17"#,
            r#""prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0}"#,
            r#""completion_tokens_details":{"reasoning_tokens":0,"x":[1,{"y":"}"}]}"#,
            r#""service_tier":"standard""#,
            r#""odd":"a\"}b""#,
            r#""prompt_tokens":null"#,
            r#""input_tokens":1.5"#,
        ];
        out.push(b'{');
        for i in 0..rng.below(5) {
            if i > 0 {
                out.push(b',');
            }
            space(rng, out);
            out.extend_from_slice(rng.pick(&members).as_bytes());
            space(rng, out);
        }
        out.push(b'}');
    }

    fn value(rng: &mut Rng, out: &mut Vec<u8>, depth: usize) {
        let kind = if depth > 4 {
            2 + rng.below(4)
        } else {
            rng.below(8)
        };
        match kind {
            0 | 1 => {
                let (open, close, keyed) = if kind == 0 {
                    (b'{', b'}', true)
                } else {
                    (b'[', b']', false)
                };
                out.push(open);
                for i in 0..rng.below(5) {
                    if i > 0 {
                        out.push(b',');
                    }
                    space(rng, out);
                    let mut likely = false;
                    if keyed {
                        likely = key(rng, out);
                        space(rng, out);
                        out.push(b':');
                        space(rng, out);
                    }
                    if likely && rng.below(2) == 0 {
                        usage_object(rng, out);
                    } else {
                        value(rng, out, depth + 1);
                    }
                    space(rng, out);
                }
                out.push(close);
            }
            2 => string(rng, out),
            3 => out.extend_from_slice(
                rng.pick(&["0", "12", "-3.5e+2", "true", "false", "null"])
                    .as_bytes(),
            ),
            _ => usage_object(rng, out),
        }
    }

    /// A document: an object as the APIs send (usage at top level or in a
    /// carrier), sometimes two in a row or an array, then maybe cut or
    /// with bytes that matter to JSON put in, taken out or replaced.
    fn document(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..1 + usize::from(rng.below(8) == 0) {
            space(rng, &mut out);
            if rng.below(10) == 0 {
                value(rng, &mut out, 0);
                continue;
            }
            out.push(b'{');
            for i in 0..1 + rng.below(6) {
                if i > 0 {
                    out.push(b',');
                }
                space(rng, &mut out);
                let likely = key(rng, &mut out);
                space(rng, &mut out);
                out.push(b':');
                space(rng, &mut out);
                if likely && rng.below(2) == 0 {
                    usage_object(rng, &mut out);
                } else {
                    value(rng, &mut out, 1);
                }
            }
            out.push(b'}');
        }
        for _ in 0..rng.below(4).saturating_sub(1) {
            let at = rng.below(out.len() + 1);
            let byte = b"\"\\{}[]:, a"[rng.below(10)];
            match rng.below(3) {
                0 if at < out.len() => out[at] = byte,
                1 if at < out.len() => drop(out.remove(at)),
                _ => out.insert(at, byte),
            }
        }
        if rng.below(4) == 0 {
            out.truncate(rng.below(out.len() + 1));
        }
        out
    }

    /// The sixteen-byte scan and the jump over read objects find the
    /// usage objects the byte-by-byte scan found, and the tap reads what
    /// serde read from them, on generated and damaged documents.
    #[test]
    fn the_scan_agrees_with_the_reference() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut found, mut read, mut plain) = (0, 0, 0);
        for round in 0..40_000 {
            let json = document(&mut rng);
            let expected = reference_offsets(&json);
            let shown = || format!("round {round}: {}", String::from_utf8_lossy(&json));
            assert_eq!(scan_offsets(&json, false), expected, "{}", shown());
            assert_eq!(scan_offsets(&json, true), expected, "{}", shown());
            let mut tap = UsageTap::new(TapMode::Json);
            tap.observe(&Bytes::copy_from_slice(&json));
            tap.finish();
            assert_eq!(
                (tap.input_tokens, tap.output_tokens),
                reference_tokens(&json),
                "{}",
                shown()
            );
            found += expected.len();
            read += usize::from(tap.input_tokens.is_some() || tap.output_tokens.is_some());
            plain += expected
                .iter()
                .filter(|&&at| simple_usage(&json[at..]).is_some())
                .count();
        }
        // The documents do exercise the search, the jump and serde.
        assert!(
            found > 15_000 && read > 3_000 && plain > 5_000 && found - plain > 5_000,
            "{found} {read} {plain}"
        );
    }

    /// Both classifiers mark the same bytes, wherever they fall.
    #[test]
    fn classifiers_agree() {
        let mut rng = Rng(7);
        for byte in 0..=255u8 {
            for at in 0..16 {
                let mut chunk = [b'a'; 16];
                chunk[at] = byte;
                assert_eq!(classify(&chunk), classify_words(&chunk), "{byte} at {at}");
            }
        }
        for _ in 0..10_000 {
            let mut chunk = [0u8; 16];
            for byte in &mut chunk {
                *byte = match rng.below(3) {
                    0 => b"\"\\{}[]"[rng.below(6)],
                    _ => rng.next() as u8,
                };
            }
            assert_eq!(classify(&chunk), classify_words(&chunk), "{chunk:?}");
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

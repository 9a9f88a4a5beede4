//! Token usage, read from the response as it streams past: the `usage`
//! objects of OpenAI chat/completions/embeddings/responses and Anthropic
//! messages, in JSON bodies and in server-sent events.

use bytes::Bytes;
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
            let mut parser = serde_json::Deserializer::from_slice(object);
            let Ok(usage) = Usage::deserialize(&mut parser) else {
                return;
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

#[derive(Clone, Copy, Deserialize)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
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
                let mut end = start;
                loop {
                    match memchr::memchr2(b'"', b'\\', &json[end.min(json.len())..]) {
                        Some(offset) if json[end + offset] == b'\\' => end += offset + 2,
                        Some(offset) => {
                            end += offset;
                            break;
                        }
                        None => return,
                    }
                }
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

/// Whether `bytes` have a `"usage"` member whose value is an object.
pub(crate) fn has_usage_object(bytes: &[u8]) -> bool {
    const NAME: &[u8] = b"\"usage\"";
    let mut rest = bytes;
    while let Some(at) = memchr::memmem::find(rest, NAME) {
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

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
        while let Some(newline) = data.iter().position(|b| *b == b'\n') {
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
        if let Ok(value) = serde_json::from_slice::<UsageCarrier>(payload) {
            self.absorb(&value);
        }
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
        if let Ok(value) = serde_json::from_slice::<UsageCarrier>(&body) {
            self.absorb(&value);
        }
    }

    fn absorb(&mut self, carrier: &UsageCarrier) {
        let nested = |n: &Option<MaybeNested>| match n {
            Some(MaybeNested::Nested(nested)) => nested.usage,
            _ => None,
        };
        for usage in [
            carrier.usage,
            nested(&carrier.message),
            nested(&carrier.response),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(input) = usage.input_tokens.or(usage.prompt_tokens) {
                self.input_tokens = Some(input);
            }
            if let Some(output) = usage.output_tokens.or(usage.completion_tokens) {
                self.output_tokens = Some(output);
            }
        }
    }
}

/// The places a `usage` object appears: top level (OpenAI, Anthropic JSON,
/// `message_delta`), under `message` (`message_start`) or `response`
/// (Responses API events). Everything else is skipped without allocating.
#[derive(Deserialize)]
struct UsageCarrier {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    message: Option<MaybeNested>,
    #[serde(default)]
    response: Option<MaybeNested>,
}

/// `message` is an object in Anthropic events but may be a string elsewhere;
/// either way the body still parses.
#[derive(Deserialize)]
#[serde(untagged)]
enum MaybeNested {
    Nested(Nested),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Nested {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Clone, Copy, Deserialize)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// Whether `bytes` have a `"usage"` member whose value is an object.
pub(crate) fn has_usage_object(bytes: &[u8]) -> bool {
    const NAME: &[u8] = b"\"usage\"";
    let mut rest = bytes;
    while let Some(at) = rest.windows(NAME.len()).position(|w| w == NAME) {
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
    fn no_usage_means_none() {
        let mut tap = UsageTap::new(TapMode::Sse);
        tap.observe(&Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{}}]}\n\n",
        ));
        tap.finish();
        assert_eq!(tap.input_tokens, None);
    }
}

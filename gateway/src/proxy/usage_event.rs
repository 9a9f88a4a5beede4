//! Removing the usage event the gateway asked for on a client's behalf.
//!
//! OpenAI-format upstreams report token usage on a stream only when asked
//! (`stream_options.include_usage`). The gateway asks when the client did not
//! (see `request::ask_for_stream_usage`), reads the usage for the log, and
//! removes the extra event (`choices: []` with a `usage` object) here, so the
//! client receives the stream it asked for. Whole events are passed on as
//! soon as their blank line arrives; only an incomplete trailing event is
//! held, which a client could not have used yet anyway.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::logging::usage::has_usage_object;

#[derive(Debug, Default)]
pub struct InjectedUsageFilter {
    /// The start of an event whose blank line has not arrived yet.
    held: BytesMut,
}

impl InjectedUsageFilter {
    /// The part of the stream (held bytes + `data`) that can go to the
    /// client now; may be empty.
    pub fn push(&mut self, data: Bytes) -> Bytes {
        let buffer = if self.held.is_empty() {
            data
        } else {
            self.held.extend_from_slice(&data);
            self.held.split().freeze()
        };
        let complete = last_event_end(&buffer).unwrap_or(0);
        if complete < buffer.len() {
            self.held.extend_from_slice(&buffer[complete..]);
        }
        let ready = buffer.slice(..complete);
        // Every event of an asked-for stream says `"usage":null`; only the
        // usage report carries an object, so the rest pass without a parse.
        if !has_usage_object(&ready) {
            return ready;
        }
        let mut kept = BytesMut::with_capacity(ready.len());
        let mut start = 0;
        while let Some(end) = next_event_end(&ready, start) {
            let event = &ready[start..end];
            if !is_injected_usage(event) {
                kept.extend_from_slice(event);
            }
            start = end;
        }
        kept.freeze()
    }

    /// Bytes still held: an event the upstream never finished.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// At the end of the stream: whatever is held, unfiltered.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| self.held.split().freeze())
    }
}

/// End (just past the blank line) of the event starting at `from`.
fn next_event_end(buffer: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(offset) = memchr::memchr(b'\n', &buffer[i..]) {
        let newline = i + offset;
        let rest = &buffer[newline + 1..];
        if rest.starts_with(b"\n") {
            return Some(newline + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(newline + 3);
        }
        i = newline + 1;
    }
    None
}

fn last_event_end(buffer: &[u8]) -> Option<usize> {
    let mut last = None;
    let mut from = 0;
    while let Some(end) = next_event_end(buffer, from) {
        last = Some(end);
        from = end;
    }
    last
}

/// What decides whether an event is the usage report alone.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<serde::de::IgnoredAny>,
}

fn is_injected_usage(event: &[u8]) -> bool {
    if !has_usage_object(event) {
        return false;
    }
    let Some(payload) = event.split(|b| *b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.strip_prefix(b"data:")
    }) else {
        return false;
    };
    match serde_json::from_slice::<Probe>(payload) {
        Ok(probe) => probe.usage.is_some() && probe.choices.is_some_and(|c| c.is_empty()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(filter: &mut InjectedUsageFilter, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces {
            out.extend_from_slice(&filter.push(Bytes::copy_from_slice(piece)));
        }
        if let Some(rest) = filter.finish() {
            out.extend_from_slice(&rest);
        }
        out
    }

    #[test]
    fn removes_only_the_usage_event_wherever_frames_split() {
        let stream = format!("{CHUNK}{CHUNK}{USAGE}{DONE}");
        let expected = format!("{CHUNK}{CHUNK}{DONE}");
        let bytes = stream.as_bytes();
        for cut in 0..bytes.len() {
            let mut filter = InjectedUsageFilter::default();
            let out = run(&mut filter, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(String::from_utf8_lossy(&out), expected, "cut at {cut}");
        }
        let mut filter = InjectedUsageFilter::default();
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&mut filter, &singles), expected.as_bytes());
    }

    #[test]
    fn keeps_usage_a_chunk_carries_with_content_and_crlf_events() {
        let with_content =
            "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\r\n\r\n";
        let mut filter = InjectedUsageFilter::default();
        let out = run(&mut filter, &[with_content.as_bytes()]);
        assert_eq!(out, with_content.as_bytes());
        let crlf_usage = USAGE.replace('\n', "\r\n");
        let mut filter = InjectedUsageFilter::default();
        assert!(run(&mut filter, &[crlf_usage.as_bytes()]).is_empty());
    }

    #[test]
    fn only_a_usage_object_counts() {
        assert!(has_usage_object(b"{\"usage\" : {\"prompt_tokens\":1}}"));
        assert!(has_usage_object(b"{\"usage\":{}}"));
        assert!(!has_usage_object(b"{\"usage\":null,\"x\":{}}"));
        assert!(!has_usage_object(b"{\"type\":\"usage\",\"x\":{}}"));
        assert!(!has_usage_object(b"no usage here"));
        // The chunk the client would not have seen with usage:null passes as is.
        let mut filter = InjectedUsageFilter::default();
        let chunk = Bytes::from_static(CHUNK.as_bytes());
        let out = filter.push(chunk.clone());
        assert_eq!(out, chunk);
        assert_eq!(
            out.as_ptr(),
            chunk.as_ptr(),
            "passed through without a copy"
        );
    }

    #[test]
    fn an_unfinished_event_is_released_at_the_end() {
        let mut filter = InjectedUsageFilter::default();
        assert!(
            filter
                .push(Bytes::from_static(b"data: {\"choices\":[]"))
                .is_empty()
        );
        assert!(!filter.is_empty());
        assert_eq!(filter.finish().unwrap(), &b"data: {\"choices\":[]"[..]);
        assert!(filter.is_empty());
    }
}

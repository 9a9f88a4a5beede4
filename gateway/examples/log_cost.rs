//! Drivers for counting the instructions of the logging hot paths, one
//! per function, under callgrind (wall time on a shared machine is noise):
//!
//!     cargo build --profile profiling -p apx-gateway --example log_cost
//!     valgrind --tool=callgrind --toggle-collect='log_cost::run_*' \
//!         target/profiling/examples/log_cost encode 20480
//!
//! Instructions collected / N = cost per call. Parts:
//! `encode` (the store writer's block encoding, per call), `tap-json` and
//! `tap-sse` (reading token usage from the benchmark's responses, per
//! response), `tap-mock-json` and `tap-anthropic` (the same for the bodies
//! the mock upstream sends: its JSON has its keys sorted, so `usage` comes
//! last), `tap-anthropic-sse` (the mock's Anthropic stream).

#[path = "common/bench_calls.rs"]
mod bench_calls;

use std::hint::black_box;

use apx_gateway::logging::record::CallEntry;
use apx_gateway::logging::usage::{TapMode, UsageTap};
use apx_gateway::store::logs::block::BlockEncoder;
use bytes::Bytes;

/// The mock upstream's answer to the benchmark's chat call.
const JSON_BODY: &str = r#"{"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion","created":1760000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"This is the mock upstream answering the benchmark request with a few words.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":13,"total_tokens":25,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_mock"}"#;

/// The mock upstream's own chat answer (serde_json without
/// `preserve_order` sorts the keys).
const MOCK_JSON_BODY: &str = r#"{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"annotations":[],"content":"Hello from bench-model! You said: hello there how are you","refusal":null,"role":"assistant"}}],"created":1796530349,"id":"chatcmpl-cJPackAWI3IN8EkTl6l5Z6pvArIFg","model":"bench-model","object":"chat.completion","service_tier":"default","system_fingerprint":"fp_mock","usage":{"completion_tokens":10,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0},"prompt_tokens":5,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},"total_tokens":15}}"#;

/// The mock upstream's answer to an Anthropic messages call.
const ANTHROPIC_BODY: &str = r#"{"content":[{"text":"Hello from claude-bench! You said: hello there how are you","type":"text"}],"id":"msg_01z6hFPGjmi8C4BTMA9OLB2D","model":"claude-bench","role":"assistant","stop_reason":"end_turn","stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":5,"output_tokens":10,"service_tier":"standard"}}"#;

/// The mock upstream's Anthropic stream, one frame per event.
fn anthropic_sse_frames() -> Vec<Bytes> {
    let event = |kind: &str, data: &str| Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
    let mut frames = vec![
        event(
            "message_start",
            r#"{"message":{"content":[],"id":"msg_01CV8qaBJxwBKyMXZHQrjkgL","model":"claude-bench","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":5,"output_tokens":1,"service_tier":"standard"}},"type":"message_start"}"#,
        ),
        event(
            "content_block_start",
            r#"{"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}"#,
        ),
        event("ping", r#"{"type":"ping"}"#),
    ];
    for word in [
        "Hello ",
        "from ",
        "claude-bench! ",
        "You ",
        "said: ",
        "hello ",
        "there ",
        "how ",
        "are ",
        "you",
    ] {
        frames.push(event(
            "content_block_delta",
            &format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{word}"}}}}"#),
        ));
    }
    frames.push(event(
        "content_block_stop",
        r#"{"index":0,"type":"content_block_stop"}"#,
    ));
    frames.push(event(
        "message_delta",
        r#"{"delta":{"stop_reason":"end_turn","stop_sequence":null},"type":"message_delta","usage":{"output_tokens":10}}"#,
    ));
    frames.push(event("message_stop", r#"{"type":"message_stop"}"#));
    frames
}

/// A streamed answer with usage, as frames.
fn sse_frames() -> Vec<Bytes> {
    let prefix = r#"{"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion.chunk","created":1760000000,"model":"bench-model","system_fingerprint":"fp_mock","choices":"#;
    let mut frames = vec![Bytes::from(format!(
        "data: {prefix}[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    ))];
    for word in ["This ", "is ", "the ", "mock ", "upstream."] {
        frames.push(Bytes::from(format!(
            "data: {prefix}[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        )));
    }
    frames.push(Bytes::from(format!(
        "data: {prefix}[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    )));
    frames.push(Bytes::from(format!(
        "data: {prefix}[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17,\"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}}}}\n\ndata: [DONE]\n\n"
    )));
    frames
}

#[inline(never)]
fn run_encode(encoder: &mut BlockEncoder, calls: &[CallEntry]) -> usize {
    let mut bytes = 0;
    for batch in calls.chunks(512) {
        let (block, summary) = encoder.encode(batch);
        bytes += block.len() + summary.terms.len();
    }
    bytes
}

#[inline(never)]
fn run_tap(mode: TapMode, frames: &[Bytes], times: usize) -> u64 {
    let mut tokens = 0;
    for _ in 0..times {
        let mut tap = UsageTap::new(mode);
        for frame in frames {
            tap.observe(black_box(frame));
        }
        tap.finish();
        tokens += tap.input_tokens.unwrap_or(0) + tap.output_tokens.unwrap_or(0);
    }
    tokens
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let part = args.next().unwrap_or_default();
    let n: usize = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10_000);
    match part.as_str() {
        "encode" => {
            let calls = bench_calls::bench_calls(n, 1_760_000_000_000_000_000);
            let mut encoder = BlockEncoder::default();
            println!("encode bytes={}", run_encode(&mut encoder, &calls));
        }
        "tap-json" => {
            let frames = [Bytes::from_static(JSON_BODY.as_bytes())];
            println!("tap-json tokens={}", run_tap(TapMode::Json, &frames, n));
        }
        "tap-sse" => {
            println!("tap-sse tokens={}", run_tap(TapMode::Sse, &sse_frames(), n));
        }
        "tap-mock-json" => {
            let frames = [Bytes::from_static(MOCK_JSON_BODY.as_bytes())];
            println!(
                "tap-mock-json tokens={}",
                run_tap(TapMode::Json, &frames, n)
            );
        }
        "tap-anthropic" => {
            let frames = [Bytes::from_static(ANTHROPIC_BODY.as_bytes())];
            println!(
                "tap-anthropic tokens={}",
                run_tap(TapMode::Json, &frames, n)
            );
        }
        "tap-anthropic-sse" => {
            let frames = anthropic_sse_frames();
            println!(
                "tap-anthropic-sse tokens={}",
                run_tap(TapMode::Sse, &frames, n)
            );
        }
        _ => {
            return Err(
                "usage: log_cost encode|tap-json|tap-sse|tap-mock-json|tap-anthropic|tap-anthropic-sse [N]"
                    .into(),
            );
        }
    }
    Ok(())
}

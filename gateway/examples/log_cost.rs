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
//! response).

#[path = "common/bench_calls.rs"]
mod bench_calls;

use std::hint::black_box;

use apx_gateway::logging::record::CallEntry;
use apx_gateway::logging::usage::{TapMode, UsageTap};
use apx_gateway::store::logs::block::BlockEncoder;
use bytes::Bytes;

/// The mock upstream's answer to the benchmark's chat call.
const JSON_BODY: &str = r#"{"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion","created":1760000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"This is the mock upstream answering the benchmark request with a few words.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":13,"total_tokens":25,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_mock"}"#;

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
        _ => return Err("usage: log_cost encode|tap-json|tap-sse [N]".into()),
    }
    Ok(())
}

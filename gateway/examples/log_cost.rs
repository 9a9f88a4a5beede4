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

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;

use apx_gateway::logging::record::{CallEntry, Capture, CredentialEntry, GatewayFacts};
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

/// Calls as the eBPF drain and the gateway make them: shared header
/// names and gateway facts, a path and header values of their own.
fn entries(rows: usize) -> Vec<CallEntry> {
    let names: Vec<Arc<str>> = ["host", "user-agent", "content-type", "content-length"]
        .into_iter()
        .map(Arc::from)
        .collect();
    let facts = GatewayFacts {
        key_id: Some(Arc::from("key_0123456789")),
        key_name: Some(Arc::from("bench")),
        model: Some(Arc::from("bench-model")),
        upstream_model: Some(Arc::from("bench-model")),
        provider: Some(Arc::from("mock")),
        provider_kind: Some("openai"),
        upstream_status: Some(200),
        ..GatewayFacts::default()
    };
    (0..rows)
        .map(|i| CallEntry {
            capture: Some(Capture::Ebpf),
            time_unix_ns: 1_760_000_000_000_000_000 + i as i64 * 50_000,
            client: Some((
                "127.0.0.1".parse().expect("literal address"),
                40_000 + (i % 20_000) as u16,
            )),
            server_port: Some(8080),
            method: Cow::Borrowed("POST"),
            path: "/v1/chat/completions".to_string(),
            http_version: Cow::Borrowed("HTTP/1.1"),
            status: Some(200),
            duration_ns: Some(900_000),
            response_start_ns: Some(850_000),
            first_chunk_ns: Some(840_000),
            request_bytes: Some(84),
            response_bytes: Some(310),
            headers: vec![
                (names[0].clone(), "127.0.0.1:8080".to_string()),
                (names[1].clone(), "OpenAI/Python 3.51.0".to_string()),
                (names[2].clone(), "application/json".to_string()),
                (names[3].clone(), "84".to_string()),
            ],
            credentials: vec![CredentialEntry {
                header: "authorization",
                scheme: "bearer",
                fingerprint: 0x0123_4567_89ab_cdef,
            }],
            facts: facts.clone(),
            input_tokens: Some(12),
            output_tokens: Some(30),
            ..CallEntry::default()
        })
        .collect()
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
            let calls = entries(n);
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

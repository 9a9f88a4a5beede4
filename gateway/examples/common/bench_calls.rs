//! The calls the log-cost examples write: what the eBPF drain and the
//! gateway make for the benchmark's chat call (shared header names and
//! gateway facts, a path and header values of each call's own).

use apx_gateway::logging::record::{CallEntry, Capture, CredentialEntry, GatewayFacts};
use std::borrow::Cow;

/// `rows` calls starting at `base_unix_ns`, 50 µs apart.
pub fn bench_calls(rows: usize, base_unix_ns: i64) -> Vec<CallEntry> {
    let names = ["host", "user-agent", "content-type", "content-length"];
    let facts = GatewayFacts {
        key_id: Some("key_0123456789"),
        key_name: Some("bench"),
        model: Some("bench-model"),
        upstream_model: Some("bench-model"),
        provider: Some("mock"),
        provider_kind: Some("openai"),
        upstream_status: Some(200),
        ..GatewayFacts::default()
    };
    (0..rows)
        .map(|i| CallEntry {
            capture: Some(Capture::Ebpf),
            time_unix_ns: base_unix_ns + i as i64 * 50_000,
            client: Some((
                "127.0.0.1".parse().expect("literal address"),
                40_000 + (i % 20_000) as u16,
            )),
            server_port: Some(8080),
            method: Cow::Borrowed("POST"),
            path: "/v1/chat/completions".into(),
            http_version: Cow::Borrowed("HTTP/1.1"),
            status: Some(200),
            duration_ns: Some(900_000),
            response_start_ns: Some(850_000),
            first_chunk_ns: Some(840_000),
            request_bytes: Some(84),
            response_bytes: Some(310),
            headers: vec![
                (names[0], "127.0.0.1:8080".into()),
                (names[1], "OpenAI/Python 3.51.0".into()),
                (names[2], "application/json".into()),
                (names[3], "84".into()),
            ],
            credentials: vec![CredentialEntry {
                header: "authorization",
                scheme: "bearer",
                fingerprint: 0x0123_4567_89ab_cdef,
            }],
            facts,
            input_tokens: Some(12),
            output_tokens: Some(30),
            ..CallEntry::default()
        })
        .collect()
}

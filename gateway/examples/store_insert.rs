//! What one stored call costs the log store, alone: CPU time per row of
//! `LogStore::insert` (the collector's write path), batches of 512 as the
//! collector writes them, into a fresh `logs.db` in a temporary directory.
//!
//!     cargo run --release -p apx-gateway --example store_insert [ROWS]
//!
//! Prints one line: `store_insert rows=N cpu_us_per_row=X wall_us_per_row=Y`.
//! The benchmark (`tests/bench/run.py`) runs it to put the store's share of
//! the logging cost next to the per-request numbers.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use apx_gateway::logging::record::{CallEntry, Capture, CredentialEntry, GatewayFacts};
use apx_gateway::store::logs::LogStore;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("apx-store-insert-{}", std::process::id()));
    let mut store = LogStore::open(&dir.join("logs.db"))?;
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
    let base = apx_gateway::time::unix_nanos(std::time::SystemTime::now());
    let entry = |i: usize| CallEntry {
        capture: Some(Capture::Ebpf),
        time_unix_ns: base + i as i64 * 50_000,
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
    };
    let batches: Vec<Vec<CallEntry>> = (0..rows)
        .collect::<Vec<_>>()
        .chunks(512)
        .map(|chunk| chunk.iter().map(|i| entry(*i)).collect())
        .collect();
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    for batch in &batches {
        store.insert(batch, &[])?;
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    println!(
        "store_insert rows={rows} cpu_us_per_row={:.2} wall_us_per_row={:.2}",
        cpu / rows as f64 * 1e6,
        wall / rows as f64 * 1e6
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

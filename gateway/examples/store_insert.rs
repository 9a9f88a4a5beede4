//! What one stored call costs the log store, alone: CPU time per row of
//! `LogStore::insert` (the collector's write path), batches of 512 as the
//! collector writes them, into a fresh `logs.db` in a temporary directory.
//!
//!     cargo run --release -p apx-gateway --example store_insert [ROWS]
//!
//! Prints one line: `store_insert rows=N cpu_us_per_row=X wall_us_per_row=Y`.
//! The benchmark (`tests/bench/run.py`) runs it to put the store's share of
//! the logging cost next to the per-request numbers.

#[path = "common/bench_calls.rs"]
mod bench_calls;

use std::time::Instant;

use apx_gateway::logging::record::CallEntry;
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
    let base = apx_gateway::time::unix_nanos(std::time::SystemTime::now());
    let calls = bench_calls::bench_calls(rows, base);
    let batches: Vec<&[CallEntry]> = calls.chunks(512).collect();
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

//! `apx serve` with eBPF capture: the programs are loaded by a short-lived
//! loader process (`apx __ebpf-loader`), so the kernel BTF that loading
//! parses never counts in the gateway's memory, and the capture it hands
//! over works: calls are recorded from the kernel.
//!
//! Needs root (loading eBPF programs); skipped otherwise, unless `CI` is
//! set: there it must run.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::ebpf_gate::ebpf_tests_run;
use common::*;
use serde_json::Value;

fn get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn status_kib(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_loader_process_loads_the_programs_and_the_gateway_records_calls() {
    if !ebpf_tests_run("a_loader_process_loads_the_programs_and_the_gateway_records_calls") {
        return;
    }
    let mock = mock();
    let home = Home::new("ebpf-loader");
    home.init_with_mock_capturing(&mock.addr, "ebpf");
    let out = home.run(&["start"]);
    assert_ok(&out, "start");
    let pid: i32 = std::fs::read_to_string(home.state_dir().join("apx.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let ready = get(home.port, "/readyz");
    assert!(
        ready.contains("\"capture_mode\":\"ebpf\"") && ready.contains("by a loader process"),
        "{ready}"
    );
    // The loader has ended; the gateway holds what keeps the programs attached.
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    assert_eq!(children.trim(), "", "the loader process is still there");
    let links = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("bpf"))
        .count();
    assert!(links >= 5, "{links} bpf fds in the gateway");

    for i in 0..5 {
        let out = home.run(&["call", "openai", "--no-stream", &format!("call {i}")]);
        assert_ok(&out, "call");
    }
    let mut records: Vec<Value> = Vec::new();
    let found = eventually(Duration::from_secs(5), || {
        let out = home.run(&["logs", "--json", "--limit", "50"]);
        records = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["url.path"] == "/v1/chat/completions")
            .collect();
        records.len() >= 5
    });
    assert!(found, "{} records", records.len());
    for record in &records {
        assert_eq!(record["apx.capture"], "ebpf", "{record}");
        assert_eq!(record["http.response.status_code"], 200, "{record}");
        assert!(record["gen_ai.usage.input_tokens"].is_u64(), "{record}");
    }

    // Loading in this process parsed the kernel's BTF here, ≈ 13 MB of
    // heap at the peak. The peak less the file-backed pages (the binary,
    // larger in a debug build, and the ring buffer's mapping) is about the
    // heap's peak: 1–8 MiB with the loader process, ≥ 13 MiB without.
    let peak = status_kib(pid, "VmHWM");
    let file = status_kib(pid, "RssFile");
    eprintln!("gateway peak {peak} KiB, file-backed now {file} KiB");
    assert!(
        peak.saturating_sub(file) < 10 * 1024,
        "gateway peak memory {peak} KiB, of which file-backed now {file} KiB"
    );

    let out = home.run(&["stop"]);
    assert_ok(&out, "stop");
}

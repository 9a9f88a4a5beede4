//! apx-capture-probe: load the prebuilt apx eBPF object against a running
//! process and print one JSON line per HTTP request it serves.
//!
//! usage: apx-capture-probe --pid PID [--duration SECS] [--header NAME]...
//!        [--key HEX32] [--known-key ID=TOKEN]... [--raw] [--quiet] [--prog-stats] [--object FILE]
//!        [--layer auto|sockets|syscalls]
//!
//! Stats (drops, records, load/attach time) go to stderr as JSON at exit.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use apx_capture::common::user::fp_hex;
use apx_capture::common::*;
use apx_capture::{Capture, Config, Exchange, HookLayer, Joiner, Record};

const FLAG_NAMES: &[(u32, &str)] = &[
    (F_PARTIAL, "partial"),
    (F_PATH_TRUNC, "path_truncated"),
    (F_VALUE_TRUNC, "value_truncated"),
    (F_MALFORMED, "malformed"),
    (F_NOT_HTTP, "not_http"),
    (F_PEER_EOF, "peer_eof"),
    (F_CLOSED, "closed"),
    (F_BUDGET, "parse_budget"),
    (F_CHUNKED, "chunked"),
    (F_END_AT_CLOSE, "end_at_close"),
    (F_ADDR_UNKNOWN, "addr_unknown"),
    (F_LOCAL_UNKNOWN, "local_unknown"),
    (F_UPGRADE, "upgrade"),
    (F_H2, "h2"),
    (F_READ_ERROR, "read_error"),
    (F_HEAD, "head"),
    (F_INTERIM_SEEN, "interim"),
    (F_DUP_HEADER, "dup_header"),
];

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn flags(out: &mut String, f: u32) {
    out.push('[');
    let mut first = true;
    for (bit, name) in FLAG_NAMES {
        if f & bit != 0 {
            if !first {
                out.push(',');
            }
            first = false;
            json_str(out, name);
        }
    }
    out.push(']');
}

fn conn_json(out: &mut String, c: &ConnInfo) {
    out.push_str("\"peer\":");
    match c.peer_ip() {
        Some(ip) => json_str(out, &ip.to_string()),
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"peer_port\":{},\"local_port\":{}",
        c.peer_port, c.local_port
    );
}

struct Printer {
    key_ids: HashMap<u64, String>,
    boot_offset_ns: i128,
}

impl Printer {
    fn ms(&self, a: u64, b: u64) -> String {
        if a == 0 || b == 0 || b < a {
            "null".into()
        } else {
            format!("{:.3}", (b - a) as f64 / 1e6)
        }
    }

    fn request(&self, out: &mut String, r: &RequestRecord) {
        out.push_str("\"request\":{");
        conn_json(out, &r.conn);
        out.push_str(",\"method\":");
        json_str(out, &r.method());
        out.push_str(",\"path\":");
        json_str(out, &r.path());
        out.push_str(",\"version\":");
        json_str(out, &r.version());
        let _ = write!(
            out,
            ",\"path_len\":{},\"bytes\":{},\"header_bytes\":{},\"header_count\":{},\"content_length\":{}",
            r.path_len,
            r.bytes,
            r.header_bytes,
            r.header_count,
            if r.content_length == u64::MAX { "null".to_string() } else { r.content_length.to_string() }
        );
        let _ = write!(
            out,
            ",\"ts_first_ns\":{},\"ts_headers_ns\":{},\"ts_end_ns\":{},\"wall_first\":{}",
            r.ts_first_ns,
            r.ts_headers_ns,
            r.ts_end_ns,
            self.wall(r.ts_first_ns)
        );
        out.push_str(",\"flags\":");
        flags(out, r.hdr.flags);
        out.push_str(",\"headers\":{");
        let mut first = true;
        for i in 0..FIELD_SLOTS {
            if let Some(v) = r.field(i) {
                if !first {
                    out.push(',');
                }
                first = false;
                let name = match FIELD_NAMES.get(i) {
                    Some(name) => name.to_string(),
                    None => format!("extra{}", i - FIELD_NAMES.len()),
                };
                json_str(out, &name);
                out.push(':');
                json_str(out, &v);
            }
        }
        out.push_str("},\"credentials\":{");
        let mut first = true;
        for (i, c) in r.creds.iter().enumerate() {
            if c.count == 0 {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            json_str(out, CRED_NAMES[i]);
            let scheme = match c.scheme {
                SCHEME_BEARER => "bearer",
                SCHEME_BASIC => "basic",
                SCHEME_OTHER => "other",
                _ => "none",
            };
            let _ = write!(
                out,
                ":{{\"present\":true,\"count\":{},\"scheme\":\"{}\",\"token_len\":{},\"fp\":\"{}\",\"key_id\":",
                c.count,
                scheme,
                c.token_len,
                fp_hex(c.fp)
            );
            match self.key_ids.get(&c.fp) {
                Some(id) => json_str(out, id),
                None => out.push_str("null"),
            }
            out.push('}');
        }
        out.push_str("}}");
    }

    fn response(&self, out: &mut String, r: &ResponseRecord) {
        let _ = write!(
            out,
            "\"response\":{{\"status\":{},\"interim\":{},\"bytes\":{},\"content_length\":{},\"ts_first_ns\":{},\"ts_headers_ns\":{},\"ts_end_ns\":{},\"flags\":",
            r.status,
            r.interim,
            r.bytes,
            if r.content_length == u64::MAX { "null".to_string() } else { r.content_length.to_string() },
            r.ts_first_ns,
            r.ts_headers_ns,
            r.ts_end_ns
        );
        flags(out, r.hdr.flags);
        out.push('}');
    }

    fn close(&self, out: &mut String, c: &CloseRecord) {
        let _ = write!(
            out,
            "\"close\":{{\"requests\":{},\"responses\":{},\"bytes_in\":{},\"bytes_out\":{},\"ts_close_ns\":{},\"flags\":",
            c.requests, c.responses, c.bytes_in, c.bytes_out, c.ts_close_ns
        );
        flags(out, c.hdr.flags);
        out.push('}');
    }

    fn wall(&self, mono: u64) -> String {
        if mono == 0 {
            return "null".into();
        }
        let ns = mono as i128 + self.boot_offset_ns;
        format!("{:.6}", ns as f64 / 1e9)
    }

    fn exchange(&self, e: &Exchange) -> String {
        let mut out = String::with_capacity(1024);
        let _ = write!(
            out,
            "{{\"conn_id\":\"{:016x}\",\"seq\":{}",
            e.conn_id, e.seq
        );
        if let (Some(q), Some(s)) = (&e.request, &e.response) {
            let _ = write!(
                out,
                ",\"ttfb_ms\":{},\"total_ms\":{}",
                self.ms(q.ts_first_ns, s.ts_first_ns),
                self.ms(q.ts_first_ns, s.ts_end_ns)
            );
        }
        if let Some(q) = &e.request {
            out.push(',');
            self.request(&mut out, q);
        }
        if let Some(s) = &e.response {
            out.push(',');
            self.response(&mut out, s);
        }
        if let Some(c) = &e.close {
            out.push(',');
            self.close(&mut out, c);
        }
        out.push('}');
        out
    }

    fn raw(&self, r: &Record) -> String {
        let mut out = String::with_capacity(1024);
        let h = r.header();
        let _ = write!(
            out,
            "{{\"kind\":{},\"conn_id\":\"{:016x}\",\"seq\":{},\"fd\":{},",
            h.kind, h.conn_id, h.seq, h.fd
        );
        match r {
            Record::Request(q) => self.request(&mut out, q),
            Record::Response(s) => self.response(&mut out, s),
            Record::Close(c) => self.close(&mut out, c),
            Record::Exchange(q, s) => {
                self.request(&mut out, q);
                out.push(',');
                self.response(&mut out, s);
            }
        }
        out.push('}');
        out
    }
}

fn mono_to_wall_offset() -> i128 {
    let mut mono = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut real = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono);
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut real);
    }
    let m = mono.tv_sec as i128 * 1_000_000_000 + mono.tv_nsec as i128;
    let r = real.tv_sec as i128 * 1_000_000_000 + real.tv_nsec as i128;
    r - m
}

fn parse_hex_key(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut k = [0u8; 16];
    for i in 0..16 {
        k[i] = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut pid = 0u32;
    let mut duration: Option<Duration> = None;
    let mut raw = false;
    let mut quiet = false;
    let mut prog_stats = false;
    let mut cfg = Config::for_pid(0);
    let mut known: Vec<(String, String)> = Vec::new();
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--pid" => pid = val().parse().unwrap_or_else(|_| die("bad --pid")),
            "--duration" => {
                duration = Some(Duration::from_secs_f64(
                    val().parse().unwrap_or_else(|_| die("bad --duration")),
                ))
            }
            "--header" => cfg.extra_headers.push(val()),
            "--key" => {
                cfg.fingerprint_key =
                    parse_hex_key(&val()).unwrap_or_else(|| die("--key wants 32 hex digits"))
            }
            "--known-key" => {
                let v = val();
                let (id, tok) = v
                    .split_once('=')
                    .unwrap_or_else(|| die("--known-key wants ID=TOKEN"));
                known.push((id.to_string(), tok.to_string()));
            }
            "--object" => {
                cfg.object =
                    Some(std::fs::read(val()).unwrap_or_else(|e| die(&format!("--object: {e}"))))
            }
            "--raw" => raw = true,
            "--layer" => {
                cfg.layer = match val().as_str() {
                    "auto" => HookLayer::Auto,
                    "sockets" => HookLayer::Sockets,
                    "syscalls" => HookLayer::Syscalls,
                    _ => die("--layer wants auto, sockets or syscalls"),
                }
            }
            "--wakeup-bytes" => {
                cfg.wakeup_bytes = Some(val().parse().unwrap_or_else(|_| die("bad --wakeup-bytes")))
            }
            "--quiet" => quiet = true,
            "--no-read-write" => cfg.plain_read_write = false,
            "--prog-stats" => prog_stats = true,
            "-h" | "--help" => {
                eprintln!("usage: apx-capture-probe --pid PID [--duration SECS] [--header NAME]... [--key HEX32] [--known-key ID=TOKEN]... [--raw] [--quiet] [--prog-stats] [--wakeup-bytes N] [--object FILE] [--no-read-write] [--layer auto|sockets|syscalls]");
                return;
            }
            _ => die(&format!("unknown argument {a}")),
        }
    }
    if pid == 0 {
        die("--pid is required");
    }
    cfg.tgid = pid;
    let (k0, k1) = key_from_bytes(&cfg.fingerprint_key);
    let key_ids: HashMap<u64, String> = known
        .into_iter()
        .map(|(id, tok)| (fingerprint(k0, k1, tok.as_bytes()), id))
        .collect();
    let printer = Printer {
        key_ids,
        boot_offset_ns: mono_to_wall_offset(),
    };

    let _stats_fd = if prog_stats {
        Some(Capture::enable_run_stats().unwrap_or_else(|e| die(&e.to_string())))
    } else {
        None
    };
    let mut cap = Capture::start(&cfg).unwrap_or_else(|e| die(&e.to_string()));
    eprintln!(
        "{{\"event\":\"attached\",\"pid\":{pid},\"layer\":\"{}\",\"load_ms\":{:.1},\"load_attach_ms\":{:.1},\"listeners\":[{}]}}",
        cap.layer().name(),
        cap.load_time.as_secs_f64() * 1e3,
        cap.attach_time.as_secs_f64() * 1e3,
        apx_capture::discover_listeners(pid)
            .iter()
            .map(|(fd, port)| format!("[{fd},{port}]"))
            .collect::<Vec<_>>()
            .join(",")
    );
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let start = Instant::now();
    let mut joiner = Joiner::new();
    let mut exchanges = 0u64;
    let mut lines = String::new();
    use std::io::Write;
    let stdout = std::io::stdout();
    loop {
        let stopping = STOP.load(std::sync::atomic::Ordering::SeqCst)
            || duration.is_some_and(|d| start.elapsed() >= d);
        let mut pfd = libc::pollfd {
            fd: cap.ring_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        unsafe { libc::poll(&mut pfd, 1, 100) };
        cap.poll(|rec| {
            if raw {
                if !quiet {
                    lines.push_str(&printer.raw(&rec));
                    lines.push('\n');
                }
                exchanges += 1;
                return;
            }
            for e in joiner.push(rec) {
                exchanges += 1;
                if !quiet {
                    lines.push_str(&printer.exchange(&e));
                    lines.push('\n');
                }
            }
        });
        if !lines.is_empty() {
            let mut o = stdout.lock();
            let _ = o.write_all(lines.as_bytes());
            let _ = o.flush();
            lines.clear();
        }
        if stopping {
            break;
        }
    }
    if prog_stats {
        print_prog_stats(&cap);
    }
    let s = cap.stats().unwrap_or_default();
    eprintln!(
        "{{\"event\":\"stats\",\"lines\":{exchanges},\"pending\":{},\"records\":{},\"ringbuf_drops\":{},\"conn_map_full\":{},\"args_map_full\":{},\"conns\":{},\"parsed_syscalls\":{}}}",
        joiner.pending(),
        s.records,
        s.ringbuf_drops,
        s.conn_map_full,
        s.args_map_full,
        s.conns,
        s.parsed_syscalls
    );
}

fn print_prog_stats(cap: &Capture) {
    for p in cap.program_stats() {
        let avg = if p.run_count > 0 {
            p.run_time_ns as f64 / p.run_count as f64
        } else {
            0.0
        };
        eprintln!(
            "{{\"event\":\"program\",\"name\":\"{}\",\"verify_ms\":{:.1},\"verified_insns\":{},\"run_count\":{},\"run_time_ns\":{},\"avg_ns\":{:.0}}}",
            p.name,
            p.load_time.as_secs_f64() * 1e3,
            p.verified_insns,
            p.run_count,
            p.run_time_ns,
            avg
        );
    }
}

fn die(msg: &str) -> ! {
    eprintln!("apx-capture-probe: {msg}");
    std::process::exit(2)
}

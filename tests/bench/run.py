#!/usr/bin/env python3
"""apx benchmark: direct to the mock upstream vs nginx vs apx, in one run.

    python3 tests/bench/run.py [--out results.json] [--no-build] ...

For every target (the mock itself, nginx as a plain reverse proxy, and apx in
each variant of tests/bench/variants/) and every connection count it runs
wrk against POST /v1/chat/completions and records requests/s, p50/p99
latency, the proxy's CPU time per request (utime+stime from /proc) and its
memory. Then it measures streaming time-to-first-chunk with a small
keep-alive client. It prints markdown tables and PASS/MISS per target, and
writes everything as JSON to --out. It exits 0 whether or not the targets
are met (non-zero only when the bench itself cannot run).

An apx "variant" is one config file in tests/bench/variants/NAME.toml
(a template: ${listen} ${state_dir} ${mock_url} ${upstream_key} ${key_hash}).
Adding a variant = adding a file; it gets its own rows and target checks.

Needs: wrk, nginx (nginx-light), a Rust toolchain (unless --no-build).
Optional: perf, for --profile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
UPSTREAM_KEY = "sk-upstream-openai-test"
CLIENT_KEY = "apx-bench-0123456789abcdef0123456789abcdef"
PATH = "/v1/chat/completions"
# The request wrk sends: a workload's body and the headers it adds to
# Content-Type and Authorization (`--workload`, set by `use_workload`).
BODY = ""
EXTRA_HEADERS: list[str] = []
# "small": the least a client can send, so the gateway's own cost shows.
# "sdk": a call as the official Python SDK (openai 3.51.0) sends it: its
# thirteen headers besides Host, Authorization, Content-Type and
# Content-Length, and a short conversation with a system prompt (≈ 1.2 KB).
SDK_SYSTEM = (
    "You are the support assistant of a hosting company. Answer in at most three short "
    "paragraphs, cite the documentation page you rely on by its title, never invent "
    "commands or flags, and ask one clarifying question when the customer's plan, region "
    "or operating system matters to the answer. If the question is about billing, say "
    "that a human will follow up and summarise what you understood. Keep a friendly, "
    "plain tone; no marketing language, no emoji."
)
WORKLOADS = {
    "small": (
        {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello"}]},
        [],
    ),
    "sdk": (
        {
            "messages": [
                {"role": "system", "content": SDK_SYSTEM},
                {"role": "user", "content": "My deploy fails with 'permission denied (publickey)' "
                 "since this morning. Nothing changed on my side. What should I check first?"},
                {"role": "assistant", "content": "That message comes from SSH: the server did "
                 "not accept any key your client offered. First check that the key you use is "
                 "still listed under Account > SSH keys, then run `ssh -v` against the deploy "
                 "host and look at which identity files are tried. Which operating system do "
                 "you deploy from?"},
                {"role": "user", "content": "Ubuntu 24.04, and ssh -v says it offers "
                 "~/.ssh/id_ed25519 and the server says no. The key is listed in my account."},
            ],
            "model": "bench-model",
            "max_tokens": 512,
            "temperature": 0.2,
        },
        [
            "Accept-Encoding: gzip, deflate, br",
            "Connection: keep-alive",
            "Accept: application/json",
            "User-Agent: OpenAI/Python 3.51.0",
            "X-Stainless-Lang: python",
            "X-Stainless-Package-Version: 3.51.0",
            "X-Stainless-OS: Linux",
            "X-Stainless-Arch: x64",
            "X-Stainless-Runtime: CPython",
            "X-Stainless-Runtime-Version: 3.11.7",
            "X-Stainless-Async: false",
            "X-Stainless-Retry-Count: 0",
            "X-Stainless-Read-Timeout: 600",
        ],
    ),
}


def use_workload(name: str) -> None:
    """Makes `name` the request every wrk cell sends."""
    global BODY, EXTRA_HEADERS
    body, headers = WORKLOADS[name]
    BODY = json.dumps(body, separators=(",", ":"))
    EXTRA_HEADERS = headers


use_workload("small")
STREAM_BODY = json.dumps(
    {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
    },
    separators=(",", ":"),
)
BASELINE_VARIANT = "logging-off"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets (issue text): checked for every apx variant.
CPU_RATIO_MAX = 1.2  # apx CPU/request <= 1.2 x nginx's, at every conn count
P99_ADDED_MAX_US = 300.0  # apx p99 - direct p99 at 16 connections
P99_CONNS = 16
TTFC_ADDED_MAX_US = 200.0  # apx median TTFC - direct median TTFC
RSS_MAX_KIB = 20 * 1024  # apx VmHWM after the whole run
NODELAY_P50_MAX_US = 1000.0  # 1-connection p50: delayed-ACK stalls show as ~40 ms
# Logging targets (issue text): the eBPF-capture variant against logging off,
# at these connection counts, and against user-space capture.
LOGGING_CONNS = (16, 64)
LOGGING_RPS_DROP_MAX = 0.05  # throughput at most 5 % below logging off
LOGGING_CPU_RISE_MAX = 0.10  # CPU per request at most 10 % above logging off
# Record completeness: every request answered during a wrk run at this many
# connections has its row in <state_dir>/logs.db (or a drop counter says why not).
COMPLETENESS_CONNS = 64
DROP_COUNTERS = (
    "gateway.channel_drops", "gateway.store_backlog_drops", "gateway.write_failures",
    "kernel.ringbuf_drops",
    "kernel.conn_map_full", "kernel.args_map_full", "kernel.unjoined_evicted",
)
# A cell during which processes outside the bench used more CPU than this
# (cores) is marked as untrustworthy.
OTHER_LOAD_WARN = 0.15


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def proc_stat_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of a whole process (all its threads, live and exited)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]), int(fields[12])


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(")") + 2 :].split()[1]) == pid:
            kids.append(int(entry))
    return kids


@dataclass
class Server:
    """A process we started (or a process tree: nginx master + workers)."""

    name: str
    proc: subprocess.Popen
    port: int
    tree: bool = False  # count children too (nginx workers)

    def pids(self) -> list[int]:
        if self.tree:
            return [self.proc.pid] + children_of(self.proc.pid)
        return [self.proc.pid]

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the process tree."""
        user = system = 0
        for pid in self.pids():
            try:
                u, s = proc_stat_ticks(pid)
            except OSError:
                continue
            user += u
            system += s
        return user / CLK_TCK, system / CLK_TCK

    def cpu_seconds(self) -> float:
        return sum(self.cpu_split())

    def kib(self, key: str) -> int:
        """Sum over the process tree of a /proc status field (VmRSS, VmHWM)."""
        total = 0
        for pid in self.pids():
            try:
                total += proc_status_kib(pid, key)
            except OSError:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RssSampler(threading.Thread):
    """Samples VmRSS of a server every 50 ms while a load cell runs."""

    def __init__(self, server: Server | None):
        super().__init__(daemon=True)
        self.server = server
        self.peak_kib = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while self.server is not None and not self.halt.is_set():
            self.peak_kib = max(self.peak_kib, self.server.kib("VmRSS"))
            self.halt.wait(0.05)

    def finish(self) -> int:
        self.halt.set()
        self.join()
        return self.peak_kib


# ------------------------------------------------------------------- starting


def start_mock(bin_dir: Path, tmp: Path) -> Server:
    log_file = open(tmp / "mock.log", "w")
    proc = subprocess.Popen(
        [str(bin_dir / "apx-mock-upstream"), "--listen", "127.0.0.1:0", "--no-record"],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"mock upstream did not start: {line!r}")
    return Server("mock", proc, int(m.group(1)))


def start_nginx(tmp: Path, mock_port: int) -> Server:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    ntmp = tmp / "nginx"
    ntmp.mkdir()
    conf = string.Template((HERE / "nginx.conf.in").read_text()).substitute(
        tmp=ntmp,
        listen=f"127.0.0.1:{port}",
        mock_addr=f"127.0.0.1:{mock_port}",
        upstream_key=UPSTREAM_KEY,
    )
    conf_path = ntmp / "nginx.conf"
    conf_path.write_text(conf)
    proc = subprocess.Popen(
        [nginx, "-p", str(ntmp), "-e", str(ntmp / "nginx-error.log"), "-c", str(conf_path),
         "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=open(ntmp / "nginx-stderr.log", "w"),
    )
    server = Server("nginx", proc, port, tree=True)
    wait_port(port, proc, "nginx")
    return server


def variant_capture(variant: Path) -> str:
    """The variant's `[logging] capture` ("off" when absent). The template's
    ${...} fields sit inside strings, so the file parses as TOML as it is."""
    try:
        doc = tomllib.loads(variant.read_text())
    except tomllib.TOMLDecodeError:
        return "off"
    return str(doc.get("logging", {}).get("capture", "off"))


def state_dir(tmp: Path, variant: Path, tag: str = "") -> Path:
    return tmp / f"state-{variant.stem}{tag}"


def apx_config(variant: Path, tmp: Path, port: int, mock_port: int, tag: str = "") -> Path:
    """Writes the variant's config; each tag gets its own state dir (and so
    its own logs.db)."""
    state = state_dir(tmp, variant, tag)
    state.mkdir(exist_ok=True)
    text = string.Template(variant.read_text()).substitute(
        listen=f"127.0.0.1:{port}",
        state_dir=state,
        mock_url=f"http://127.0.0.1:{mock_port}/v1",
        upstream_key=UPSTREAM_KEY,
        key_hash="sha256:" + hashlib.sha256(CLIENT_KEY.encode()).hexdigest(),
    )
    path = tmp / f"apx-{variant.stem}{tag}.toml"
    path.write_text(text)
    return path


def start_apx(apx_bin: Path, variant: Path, tmp: Path, mock_port: int, tag: str = "") -> Server:
    port = free_port()
    config = apx_config(variant, tmp, port, mock_port, tag)
    env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
    proc = subprocess.Popen(
        [str(apx_bin), "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"apx-{variant.stem}{tag}.log", "w"),
        env=env,
    )
    server = Server(f"apx[{variant.stem}]", proc, port)
    wait_port(port, proc, server.name)
    return server


# ---------------------------------------------------------------- measuring


def auth_for(target: str) -> str:
    # direct and nginx get the upstream key from the client / from nginx;
    # apx gets its own client key and swaps it.
    if target == "direct":
        return f"Bearer {UPSTREAM_KEY}"
    if target == "nginx":
        return ""
    return f"Bearer {CLIENT_KEY}"


def sanity_check(target: str, port: int) -> None:
    """One request each way so a misconfigured target fails loudly, not as fast 401s."""
    for body in (BODY, STREAM_BODY):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}{PATH}", data=body.encode(), method="POST"
        )
        req.add_header("Content-Type", "application/json")
        auth = auth_for(target)
        if auth:
            req.add_header("Authorization", auth)
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = resp.read()
            if resp.status != 200 or b"chat.completion" not in data:
                raise RuntimeError(f"{target}: unexpected reply {resp.status}: {data[:200]!r}")


def run_wrk(port: int, target: str, conns: int, seconds: int, threads: int,
            pace_ms: int = 0) -> dict:
    env = dict(
        os.environ,
        BENCH_PATH=PATH,
        BENCH_AUTH=auth_for(target),
        BENCH_BODY=BODY,
        BENCH_HEADERS="\n".join(EXTRA_HEADERS),
        BENCH_DELAY_MS=str(pace_ms),
    )
    cmd = [
        "wrk", "-t", str(min(threads, conns)), "-c", str(conns), "-d", f"{seconds}s",
        "--timeout", "5s", "-s", str(HERE / "post.lua"), f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError(f"wrk gave no result (exit {out.returncode}): {out.stdout}{out.stderr}")


def system_busy_seconds() -> tuple[float, float]:
    """(busy, steal): CPU time all cores spent running something (not idle,
    iowait or stolen by the hypervisor), and time stolen, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this script's finished children (wrk)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def load_cell(args, target: str, port: int, conns: int, proxy: Server | None,
              mock: Server, pace_ms: int = 0) -> dict:
    """One wrk run; pace_ms > 0 makes each connection wait that long between
    requests (an unsaturated load: latency without queueing)."""
    if args.warmup > 0:
        run_wrk(port, target, conns, args.warmup, args.wrk_threads, pace_ms)
    sampler = RssSampler(proxy)
    sampler.start()
    split0 = proxy.cpu_split() if proxy else (0.0, 0.0)
    cpu0 = sum(split0)
    mock0 = mock.cpu_seconds()
    (busy0, steal0), wrk0, self0 = system_busy_seconds(), children_cpu_seconds(), time.process_time()
    t0 = time.monotonic()
    res = run_wrk(port, target, conns, args.duration, args.wrk_threads, pace_ms)
    wall = time.monotonic() - t0
    split1 = proxy.cpu_split() if proxy else (0.0, 0.0)
    cpu1 = sum(split1)
    mock1 = mock.cpu_seconds()
    (busy1, steal1), wrk1, self1 = system_busy_seconds(), children_cpu_seconds(), time.process_time()
    rss_peak = sampler.finish()
    n = max(res["requests"], 1)
    errors = sum(res[k] for k in res if k.startswith("errors_"))
    # Whatever else ran on the machine meanwhile (other builds, tests): the
    # cell's numbers are only trustworthy when this stays near zero.
    foreign = (busy1 - busy0) - (cpu1 - cpu0) - (mock1 - mock0) - (wrk1 - wrk0) - (self1 - self0)
    row = {
        "target": target,
        "conns": conns,
        "pace_ms": pace_ms,
        "requests": res["requests"],
        "rps": res["requests"] / (res["duration_us"] / 1e6),
        "p50_us": res["p50_us"],
        "p90_us": res["p90_us"],
        "p99_us": res["p99_us"],
        "p999_us": res["p999_us"],
        "mean_us": res["mean_us"],
        "max_us": res["max_us"],
        "errors": errors,
        "mock_cpu_us_per_req": (mock1 - mock0) * 1e6 / n,
        "wrk_cpu_util": (wrk1 - wrk0) / wall,
        "other_cpu_util": max(foreign, 0.0) / wall,
        "steal_cpu_util": (steal1 - steal0) / wall,
        "wall_s": wall,
        "wrk": res,
    }
    if proxy:
        row["proxy_cpu_s"] = cpu1 - cpu0
        row["proxy_cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / n
        row["proxy_user_us_per_req"] = (split1[0] - split0[0]) * 1e6 / n
        row["proxy_sys_us_per_req"] = (split1[1] - split0[1]) * 1e6 / n
        row["proxy_cpu_util"] = (cpu1 - cpu0) / wall  # in cores
        row["proxy_rss_load_kib"] = rss_peak
    log(
        f"{target:>22} c={conns:<3}{f' paced {pace_ms}ms' if pace_ms else ''} {row['rps']:>9.0f} req/s  p50 {row['p50_us']}us "
        f"p99 {row['p99_us']}us  cpu/req "
        f"{row.get('proxy_cpu_us_per_req', row['mock_cpu_us_per_req']):.1f}us  "
        f"other load {row['other_cpu_util']:.2f} cores  steal {row['steal_cpu_util']:.2f}  "
        f"errors {errors}"
    )
    return row


def noisy_cell(row: dict) -> bool:
    """Did other processes (or the hypervisor) take CPU during this cell?"""
    return row["other_cpu_util"] + row.get("steal_cpu_util", 0.0) > OTHER_LOAD_WARN


def median_row(all_runs: list[dict]) -> dict:
    """One row per cell: the median of each number over the repetitions,
    counting only the runs without other load when there are any."""
    quiet = [r for r in all_runs if not noisy_cell(r)]
    runs = quiet or all_runs
    if len(all_runs) == 1:
        return dict(all_runs[0], repeats=1, used_runs=1)
    row = {"target": runs[0]["target"], "conns": runs[0]["conns"],
           "pace_ms": runs[0]["pace_ms"], "repeats": len(all_runs), "used_runs": len(runs)}
    for key, value in runs[0].items():
        if key in row or not isinstance(value, (int, float)):
            continue
        row[key] = statistics.median(r[key] for r in runs)
    row["errors"] = sum(r["errors"] for r in all_runs)
    row["runs"] = all_runs
    return row


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int | None, bytearray]:
    """Reads one HTTP/1.1 response; returns (ns when the first body chunk was
    complete, leftover bytes). Handles chunked and content-length bodies."""

    def fill() -> None:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed mid-response")
        buf.extend(data)

    while b"\r\n\r\n" not in buf:
        fill()
    head_end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
    del buf[: head_end + 4]
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status != 200:
        raise RuntimeError(f"stream request got HTTP {status}")
    first_ns = None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buf:
                fill()
            line_end = buf.index(b"\r\n")
            size = int(bytes(buf[:line_end]).split(b";")[0], 16)
            while len(buf) < line_end + 2 + size + 2:
                fill()
            if first_ns is None and size > 0:
                first_ns = time.perf_counter_ns()
            del buf[: line_end + 2 + size + 2]
            if size == 0:
                # No trailers are expected; the last-chunk's CRLF was consumed.
                return first_ns, buf
    length = int(headers.get("content-length", "-1"))
    if length < 0:
        raise RuntimeError("stream response has neither chunked encoding nor a length")
    while len(buf) < min(length, 1):
        fill()
    first_ns = time.perf_counter_ns()
    while len(buf) < length:
        fill()
    del buf[:length]
    return first_ns, buf


class TtfcClient:
    """Sends stream requests over one kept-alive connection and times each
    from sending the request to holding its first body chunk."""

    def __init__(self, target: str, port: int, words: int):
        self.target = target
        lines = [
            f"POST {PATH} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            f"Content-Length: {len(STREAM_BODY)}",
            f"x-mock-scenario: words:{words}",
        ]
        auth = auth_for(target)
        if auth:
            lines.append(f"Authorization: {auth}")
        self.request = ("\r\n".join(lines) + "\r\n\r\n" + STREAM_BODY).encode()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.samples: list[float] = []

    def run(self, count: int, keep: bool = True) -> None:
        for _ in range(count):
            t0 = time.perf_counter_ns()
            self.sock.sendall(self.request)
            first_ns, self.buf = read_response(self.sock, self.buf)
            if first_ns is None:
                raise RuntimeError(f"{self.target}: stream had no body")
            if keep:
                self.samples.append((first_ns - t0) / 1000.0)

    def close(self) -> None:
        self.sock.close()

    def summary(self) -> dict:
        samples = sorted(self.samples)
        row = {
            "target": self.target,
            "n": len(samples),
            "median_us": statistics.median(samples),
            "p99_us": samples[max(0, min(len(samples) - 1, int(round(0.99 * len(samples))) - 1))],
            "min_us": samples[0],
            "max_us": samples[-1],
        }
        log(f"{self.target:>22} ttfc median {row['median_us']:.0f}us p99 {row['p99_us']:.0f}us")
        return row


def ttfc_all(targets: list[tuple[str, int]], n: int, words: int, rounds: int = 5) -> list[dict]:
    """n samples per target, taken in interleaved rounds so that a burst of
    background load hits every target alike."""
    clients = [TtfcClient(name, port, words) for name, port in targets]
    try:
        for c in clients:
            c.run(20, keep=False)  # warm-up: connections, pools, caches
        per_round = max(1, n // rounds)
        done = 0
        while done < n:
            count = min(per_round, n - done)
            for c in clients:
                c.run(count)
            done += count
        return [c.summary() for c in clients]
    finally:
        for c in clients:
            c.close()


# ---------------------------------------------------------------- profiling


def perf_reports(data: Path, out_dir: Path, prefix: str) -> dict:
    reports = {}
    for name, extra in (
        ("flat", ["--no-children", "--sort", "symbol", "-g", "none"]),
        ("children", ["--children", "--sort", "symbol", "-g", "none"]),
        ("dso", ["--no-children", "--sort", "dso", "-g", "none"]),
        ("callers", ["--no-children", "--sort", "symbol", "-g", "caller,0.5,callee,function,percent",
                     "--percent-limit", "3"]),
    ):
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--percent-limit", "0.5", *extra],
            capture_output=True, text=True,
        )
        text = "\n".join(re.sub(r"(\s+-)*\s*$", "", l) for l in out.stdout.splitlines()
                         if l.strip() and not l.startswith("#"))
        path = out_dir / f"{prefix}-{name}.txt"
        path.write_text(text + "\n")
        reports[name] = str(path)
    return reports


def perf_record(pids: list[int], tmp: Path, name: str) -> tuple[subprocess.Popen, Path]:
    data = tmp / f"{name}.perf.data"
    proc = subprocess.Popen(
        ["perf", "record", "-e", "cpu-clock", "-F", "999", "--call-graph", "dwarf,16384",
         "-o", str(data), "-p", ",".join(str(p) for p in pids)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"{name}.perf-record.log", "w"),
    )
    time.sleep(0.5)
    return proc, data


def perf_stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)


def profile_apx(args, apx_bin: Path, variant: Path, tmp: Path, mock: Server,
                nginx: Server | None, out_dir: Path) -> dict:
    """perf record (cpu-clock, DWARF call graphs) under 16-connection load of
    apx, of nginx (for comparison) and of the mock when its profiling build
    exists."""
    if not shutil.which("perf"):
        return {"error": "perf not installed (apt-get install linux-perf)"}
    result: dict = {"binary": str(apx_bin), "variant": variant.stem, "conns": P99_CONNS}
    server = start_apx(apx_bin, variant, tmp, mock.port, tag="-profile")
    try:
        sanity_check("apx", server.port)
        run_wrk(server.port, "apx", P99_CONNS, max(args.warmup, 1), args.wrk_threads)
        perf, data = perf_record([server.proc.pid], tmp, "apx")
        res = run_wrk(server.port, "apx", P99_CONNS, args.duration, args.wrk_threads)
        perf_stop(perf)
        result["requests"] = res["requests"]
    finally:
        server.stop()
    result.update(perf_reports(data, out_dir, "perf-apx"))
    mock_bin = apx_bin.parent / "apx-mock-upstream"
    if mock_bin.exists():
        # The mock as the direct target: what one upstream request costs it.
        pmock = start_mock(apx_bin.parent, tmp)
        try:
            run_wrk(pmock.port, "direct", P99_CONNS, max(args.warmup, 1), args.wrk_threads)
            perf, data = perf_record([pmock.proc.pid], tmp, "mock")
            run_wrk(pmock.port, "direct", P99_CONNS, args.duration, args.wrk_threads)
            perf_stop(perf)
        finally:
            pmock.stop()
        result["mock"] = perf_reports(data, out_dir, "perf-mock")
    if nginx is not None:
        run_wrk(nginx.port, "nginx", P99_CONNS, max(args.warmup, 1), args.wrk_threads)
        perf, data = perf_record(nginx.pids(), tmp, "nginx")
        run_wrk(nginx.port, "nginx", P99_CONNS, args.duration, args.wrk_threads)
        perf_stop(perf)
        result["nginx"] = perf_reports(data, out_dir, "perf-nginx")
    return result


# ------------------------------------------------------------ completeness


def store_insert_cost(bin_dir: Path) -> dict | None:
    """CPU per row of the log store alone (gateway/examples/store_insert.rs):
    the floor under any logging variant's added CPU per request."""
    exe = bin_dir / "examples" / "store_insert"
    if not exe.exists():
        return None
    out = subprocess.run([str(exe), "100000"], capture_output=True, text=True, timeout=300)
    m = re.search(r"cpu_us_per_row=([\d.]+) wall_us_per_row=([\d.]+)", out.stdout)
    if not m:
        return {"error": (out.stdout + out.stderr).strip()}
    return {"rows": 100000, "cpu_us_per_row": float(m.group(1)),
            "wall_us_per_row": float(m.group(2))}


def read_logs_db(db: Path) -> dict:
    """Call counts of a gateway's logs.db (from the block table and its
    term index: see gateway/src/store/logs/) and its `counters` table."""
    out = {"records": 0, "status_200": 0, "partial": 0, "by_capture": {}, "counters": {}}
    if not db.exists():
        return out
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "log_blocks" in tables:
            out["records"] = conn.execute(
                "SELECT COALESCE(SUM(count), 0) FROM log_blocks").fetchone()[0]
            terms = {str(k): v for k, v in conn.execute(
                "SELECT term, SUM(calls) FROM log_terms GROUP BY term")}
            out["status_200"] = terms.get("status:200", 0)
            out["partial"] = terms.get("partial", 0)
            out["by_capture"] = {k.removeprefix("capture:"): v for k, v in terms.items()
                                 if k.startswith("capture:")}
        if "counters" in tables:
            out["counters"] = {str(k): v for k, v in conn.execute(
                "SELECT name, value FROM counters")}
    finally:
        conn.close()
    return out


def completeness_run(args, apx_bin: Path, variant: Path, tmp: Path, mock: Server) -> dict:
    """A gateway with a fresh state dir, wrk at COMPLETENESS_CONNS for
    --completeness-secs, SIGTERM (which flushes every pending record), then
    rows in logs.db vs the requests wrk completed.

    wrk counts completed requests; up to one request per connection is in
    flight when it stops, and the gateway may answer (and record) those too,
    so the gateway answered between `completed` and `completed + conns`."""
    conns = COMPLETENESS_CONNS
    server = start_apx(apx_bin, variant, tmp, mock.port, tag="-complete")
    db = state_dir(tmp, variant, "-complete") / "logs.db"
    try:
        cpu0 = server.cpu_seconds()
        res = run_wrk(server.port, server.name, conns, args.completeness_secs, args.wrk_threads)
        cpu1 = server.cpu_seconds()
        time.sleep(1.0)  # the collector writes within ~50 ms
        before = read_logs_db(db)["records"]
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            rc = server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            rc = f"killed (no exit within 30 s of SIGTERM): {server.proc.wait()}"
        stop_s = time.monotonic() - t0
    finally:
        server.stop()
    db_state = read_logs_db(db)
    completed = res["requests"]
    errors = sum(res[k] for k in res if k.startswith("errors_"))
    records = db_state["records"]
    drops = {k: db_state["counters"].get(k) for k in DROP_COUNTERS if k in db_state["counters"]}
    drop_total = sum(v or 0 for v in drops.values())
    # Every completed request needs a record or a counted drop; any records
    # beyond `completed` must be in-flight requests (at most one per conn).
    unexplained = max(0, completed - records - drop_total)
    extra = records - completed
    ok = errors == 0 and unexplained == 0 and extra <= conns
    row = {
        "variant": variant.stem, "capture": variant_capture(variant), "conns": conns,
        "seconds": args.completeness_secs, "completed": completed,
        "rps": completed / (res["duration_us"] / 1e6), "wrk_errors": errors,
        "apx_cpu_us_per_req": (cpu1 - cpu0) * 1e6 / max(completed, 1),
        "records_before_sigterm": before, "records": records,
        "records_minus_completed": extra, "status_200": db_state["status_200"],
        "partial": db_state["partial"], "by_capture": db_state["by_capture"],
        "drops": drops, "drop_total": drop_total, "unexplained_missing": unexplained,
        "counters": db_state["counters"], "exit": rc, "stop_s": stop_s,
        "records_ge_completed": records >= completed, "ok": ok,
    }
    log(f"{server.name:>22} completeness: {completed} completed, {records} records "
        f"({before} before SIGTERM), diff {extra:+d}, drops {drop_total}, exit {rc} "
        f"after {stop_s:.2f}s -> {'PASS' if ok else 'MISS'}")
    return row


# ------------------------------------------------------------------ reporting


def us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 10000 else f"{v:.0f} µs"


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def report(results: dict) -> str:
    rows = results["load"]
    direct = {(r["conns"], r["pace_ms"]): r for r in rows if r["target"] == "direct"}
    out = []
    st = results["settings"]
    out.append("### Load: POST /v1/chat/completions (non-streaming), wrk "
               f"{st['duration_s']} s per cell after {st['warmup_s']} s warm-up"
               + (f", median of {st['repeat']} runs (of the runs without other load, when "
                  "there are some)" if st["repeat"] > 1 else "") + "\n")
    out.append("| target | conns | req/s | p50 | p99 | p99 added vs direct | proxy CPU/req "
               "| (user + sys) | proxy CPU (cores) | mock CPU/req | proxy RSS under load | other load (cores) "
               "| errors |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d = direct.get((r["conns"], r["pace_ms"]))
        added = None if r["target"] == "direct" or d is None else r["p99_us"] - d["p99_us"]
        cpu = r.get("proxy_cpu_us_per_req")
        cells = [
            r["target"], str(r["conns"]) + (f" paced {r['pace_ms']} ms" if r["pace_ms"] else ""),
            f"{r['rps']:.0f}", us(r["p50_us"]), us(r["p99_us"]),
            "-" if added is None else us(added),
            "-" if cpu is None else f"{cpu:.1f} µs",
            "-" if cpu is None else
            f"{r['proxy_user_us_per_req']:.1f} + {r['proxy_sys_us_per_req']:.1f}",
            "-" if cpu is None else f"{r['proxy_cpu_util']:.2f}",
            f"{r['mock_cpu_us_per_req']:.1f} µs",
            mib(r.get("proxy_rss_load_kib")),
            f"{r['other_cpu_util']:.2f}"
            + (f" +{r['steal_cpu_util']:.2f} stolen" if r.get("steal_cpu_util", 0) >= 0.05 else "")
            + (" ⚠" if noisy_cell(r) else ""),
            str(r["errors"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
    noisy = [r for r in rows if noisy_cell(r)]
    if noisy:
        out.append(f"\n⚠ Other processes (or the hypervisor) took more than {OTHER_LOAD_WARN} "
                   f"cores during "
                   f"{len(noisy)} of {len(rows)} cells: their latencies and rates are not "
                   "trustworthy; rerun on a quiet machine.")
    out.append("")
    out.append(f"### Streaming time to first chunk ({results['settings']['ttfc_n']} sequential "
               "stream requests per target on one kept-alive connection, targets interleaved "
               "in 5 rounds)\n")
    out.append("| target | median | p99 | min | median added vs direct |")
    out.append("|---|---:|---:|---:|---:|")
    t_direct = next((t for t in results["ttfc"] if t["target"] == "direct"), None)
    for t in results["ttfc"]:
        added = None if t["target"] == "direct" or not t_direct else t["median_us"] - t_direct["median_us"]
        out.append(f"| {t['target']} | {t['median_us']:.0f} µs | {t['p99_us']:.0f} µs | "
                   f"{t['min_us']:.0f} µs | {'-' if added is None else f'{added:.0f} µs'} |")
    out.append("")
    out.append("### Memory after the run\n")
    out.append("| process | peak RSS (VmHWM) | RSS now |")
    out.append("|---|---:|---:|")
    for name, m in results["memory"].items():
        out.append(f"| {name} | {mib(m['vmhwm_kib'])} | {mib(m['vmrss_kib'])} |")
    out.append("")
    comp = results.get("completeness") or []
    if comp:
        out.append(f"### Record completeness (wrk, {comp[0]['conns']} connections, "
                   f"{comp[0]['seconds']} s, fresh state dir, then SIGTERM)\n")
        out.append("| variant | completed (wrk) | records | records − completed | "
                   "records before SIGTERM | status 200 / partial | drop counters | "
                   "unexplained missing | wrk errors | req/s | apx CPU/req | exit | result |")
        out.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|")
        for c in comp:
            drops = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in c["drops"].items()) or "-"
            out.append(
                f"| {c['variant']} | {c['completed']} | {c['records']} | "
                f"{c['records_minus_completed']:+d} | {c['records_before_sigterm']} | "
                f"{c['status_200']} / {c['partial']} | {drops} | {c['unexplained_missing']} | "
                f"{c['wrk_errors']} | {c['rps']:.0f} | {c['apx_cpu_us_per_req']:.1f} µs | "
                f"{c['exit']} ({c['stop_s']:.2f} s) | **{'PASS' if c['ok'] else 'MISS'}** |")
        out.append("\nwrk counts completed requests; up to one request per connection was in "
                   "flight when it stopped, so the gateway answered between `completed` and "
                   f"`completed + {comp[0]['conns']}`: PASS = every completed request has a "
                   "record or a counted drop, and records − completed ≤ connections.\n")
    store = results.get("store")
    if store and "cpu_us_per_row" in store:
        out.append("### Log store alone (gateway/examples/store_insert.rs)\n")
        out.append(f"`LogStore::insert` of {store['rows']} calls in batches of 512 into a fresh "
                   f"logs.db (WAL, one block row per batch): **{store['cpu_us_per_row']:.1f} µs CPU per row** "
                   f"({store['wall_us_per_row']:.1f} µs wall). Every logging variant pays this "
                   "per request on top of its capture cost.\n")
    out.append("### Targets\n")
    out.append("| variant | target | measured | limit | result |")
    out.append("|---|---|---:|---:|---|")
    for t in results["targets"]:
        out.append(f"| {t['variant']} | {t['name']} | {t['measured']} | {t['limit']} | "
                   f"**{t['result']}** |")
    return "\n".join(out)


def check_targets(results: dict, variants: list[str]) -> list[dict]:
    rows = results["load"]

    def row(target: str, conns: int, pace_ms: int = 0) -> dict | None:
        return next((r for r in rows if r["target"] == target and r["conns"] == conns
                     and r["pace_ms"] == pace_ms), None)

    ttfc_rows = {t["target"]: t for t in results["ttfc"]}
    checks = []
    for v in variants:
        name = f"apx[{v}]"

        def add(check: str, ok: bool | None, measured: str, limit: str) -> None:
            result = "N/A" if ok is None else ("PASS" if ok else "MISS")
            checks.append({"variant": v, "name": check, "measured": measured, "limit": limit,
                           "result": result})

        ratios = []
        for c in results["settings"]["conns"]:
            a, n = row(name, c), row("nginx", c)
            if a and n and n.get("proxy_cpu_us_per_req"):
                ratios.append((c, a["proxy_cpu_us_per_req"] / n["proxy_cpu_us_per_req"]))
        worst = max(ratios, key=lambda x: x[1]) if ratios else None
        add("CPU per request vs nginx (worst conn count)",
            None if worst is None else worst[1] <= CPU_RATIO_MAX,
            "-" if worst is None else
            f"{worst[1]:.2f}x at c={worst[0]} (" + ", ".join(f"c={c}: {x:.2f}x" for c, x in ratios) + ")",
            f"<= {CPU_RATIO_MAX}x")

        pace = results["settings"]["paced_ms"]
        for p, label in ((0, "saturated"), (pace, f"paced {pace} ms/conn")):
            if label.startswith("paced") and not p:
                continue
            a, d, n = row(name, P99_CONNS, p), row("direct", P99_CONNS, p), row("nginx", P99_CONNS, p)
            added = None if not (a and d) else a["p99_us"] - d["p99_us"]
            nginx_added = None if not (n and d) else n["p99_us"] - d["p99_us"]
            add(f"p99 added latency at {P99_CONNS} connections, {label}",
                None if added is None else added < P99_ADDED_MAX_US,
                "-" if added is None else
                f"{added:.0f} µs" + ("" if nginx_added is None else f" (nginx: {nginx_added:.0f} µs)"),
                f"< {P99_ADDED_MAX_US:.0f} µs")

        ta, td, tn = ttfc_rows.get(name), ttfc_rows.get("direct"), ttfc_rows.get("nginx")
        tadded = None if not (ta and td) else ta["median_us"] - td["median_us"]
        tnadded = None if not (tn and td) else tn["median_us"] - td["median_us"]
        add("streaming: added time to first chunk (median)",
            None if tadded is None else tadded < TTFC_ADDED_MAX_US,
            "-" if tadded is None else
            f"{tadded:.0f} µs" + ("" if tnadded is None else f" (nginx: {tnadded:.0f} µs)"),
            f"< {TTFC_ADDED_MAX_US:.0f} µs")

        mem = results["memory"].get(name)
        add("peak RSS (VmHWM) under load",
            None if mem is None else mem["vmhwm_kib"] < RSS_MAX_KIB,
            "-" if mem is None else mib(mem["vmhwm_kib"]),
            f"< {RSS_MAX_KIB // 1024} MiB")

        one = row(name, 1)
        add("TCP_NODELAY effective (p50 at 1 connection)",
            None if one is None else one["p50_us"] < NODELAY_P50_MAX_US,
            "-" if one is None else us(one["p50_us"]),
            f"< {NODELAY_P50_MAX_US:.0f} µs")
    checks += logging_targets(results, row)
    return checks


def logging_targets(results: dict, row) -> list[dict]:
    """Logging cost (issue text): the eBPF-capture variant vs logging off at
    LOGGING_CONNS (throughput and CPU per request) and vs user-space capture
    (CPU per request); user-space capture vs logging off is shown as info.
    Plus record completeness of every variant that had a completeness run."""
    captures = results["settings"].get("captures", {})
    base = next((v for v, c in captures.items() if c == "off"), None)
    user = next((v for v, c in captures.items() if c == "userspace"), None)
    checks = []

    def add(v: str, check: str, ok: bool | None, measured: str, limit: str,
            info: bool = False) -> None:
        result = "N/A" if ok is None else ("info" if info else ("PASS" if ok else "MISS"))
        checks.append({"variant": v, "name": check, "measured": measured, "limit": limit,
                       "result": result})

    for v, cap in captures.items():
        if cap == "off" or base is None:
            continue
        name, info = f"apx[{v}]", cap != "ebpf"
        for c in LOGGING_CONNS:
            a, b = row(name, c), row(f"apx[{base}]", c)
            if not (a and b):
                continue
            drop = 1 - a["rps"] / b["rps"]
            add(v, f"throughput drop vs {base} at {c} connections", drop <= LOGGING_RPS_DROP_MAX,
                f"{drop * 100:+.1f} % ({a['rps']:.0f} vs {b['rps']:.0f} req/s)",
                f"<= {LOGGING_RPS_DROP_MAX * 100:.0f} %", info)
            rise = a["proxy_cpu_us_per_req"] / b["proxy_cpu_us_per_req"] - 1
            add(v, f"CPU/request increase vs {base} at {c} connections",
                rise <= LOGGING_CPU_RISE_MAX,
                f"{rise * 100:+.1f} % ({a['proxy_cpu_us_per_req']:.1f} vs "
                f"{b['proxy_cpu_us_per_req']:.1f} µs)",
                f"<= {LOGGING_CPU_RISE_MAX * 100:.0f} %", info)
        if cap == "ebpf" and user is not None:
            for c in LOGGING_CONNS:
                a, u = row(name, c), row(f"apx[{user}]", c)
                if not (a and u):
                    continue
                add(v, f"CPU/request vs {user} at {c} connections",
                    a["proxy_cpu_us_per_req"] <= u["proxy_cpu_us_per_req"],
                    f"{a['proxy_cpu_us_per_req']:.1f} vs {u['proxy_cpu_us_per_req']:.1f} µs",
                    "<= user-space")
    for comp in results.get("completeness", []):
        add(comp["variant"], f"record completeness ({comp['conns']} connections, "
            f"{comp['seconds']} s)", comp["ok"],
            f"{comp['records']} records / {comp['completed']} completed "
            f"({comp['records_minus_completed']:+d}), drops {comp['drop_total']}",
            "records + drops >= completed")
    return checks


# ----------------------------------------------------------------------- main


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for tool, cmd in (("nginx", ["nginx", "-v"]), ("wrk", ["wrk", "-v"])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
            info[tool] = (out.stdout + out.stderr).splitlines()[0].strip()
        except (OSError, IndexError):
            info[tool] = None
    try:
        info["git"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="write JSON results here (default: target/bench/results.json)")
    p.add_argument("--duration", type=int, default=5, help="seconds measured per cell (whole)")
    p.add_argument("--warmup", type=int, default=2,
                   help="seconds of warm-up per cell (whole; 0 = none)")
    p.add_argument("--conns", default="1,16,64", help="connection counts, comma-separated")
    p.add_argument("--wrk-threads", type=int, default=1,
                   help="wrk threads (capped at the connection count); 1 leaves the cores to "
                        "the servers")
    p.add_argument("--paced-ms", type=int, default=2,
                   help=f"also run {P99_CONNS} connections that each wait this many ms between "
                        "requests (unsaturated: latency without queueing); 0 = skip")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the load matrix this many times (interleaved) and report each "
                        "cell's median")
    p.add_argument("--ttfc-n", type=int, default=200, help="stream requests per TTFC target")
    p.add_argument("--ttfc-words", type=int, default=16, help="words in each streamed reply")
    p.add_argument("--variants", default=None,
                   help="comma-separated apx variants (names in tests/bench/variants/); "
                        "default: all, logging-off first")
    p.add_argument("--completeness", choices=("auto", "all", "none"), default="auto",
                   help="record-completeness run (fresh gateway, wrk at "
                        f"{COMPLETENESS_CONNS} connections, SIGTERM, count rows in logs.db) for: "
                        "auto = variants whose capture is not off (default), all, none")
    p.add_argument("--completeness-secs", type=int, default=30,
                   help="seconds of wrk per completeness run (default 30)")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="small",
                   help="the request wrk sends: 'small' (one short message, few headers) or "
                        "'sdk' (the official Python SDK's headers, a 1.2 KB conversation)")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx rows")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release",
                   help="where apx and apx-mock-upstream are")
    p.add_argument("--profile-bin-dir", type=Path, default=REPO / "target" / "profiling",
                   help="where the symbol-carrying apx (and mock) for --profile are")
    p.add_argument("--profile", action="store_true",
                   help="also perf-record apx (profiling build, with symbols) under "
                        f"{P99_CONNS}-connection load and save the top functions")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    use_workload(args.workload)
    args.conns_list = [int(c) for c in args.conns.split(",") if c.strip()]
    out_path = args.out or REPO / "target" / "bench" / "results.json"
    out_path = out_path.resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)

    variant_dir = HERE / "variants"
    if args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
    else:
        names = sorted(p.stem for p in variant_dir.glob("*.toml"))
        if BASELINE_VARIANT in names:
            names.remove(BASELINE_VARIANT)
            names.insert(0, BASELINE_VARIANT)
    variants = []
    for n in names:
        path = variant_dir / f"{n}.toml"
        if not path.is_file():
            print(f"unknown variant {n}: no {path}", file=sys.stderr)
            return 2
        variants.append(path)

    for tool in ["wrk"] + ([] if args.no_nginx else ["nginx"]):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is not installed (apt-get install -y wrk nginx-light)", file=sys.stderr)
            return 2

    if not args.no_build:
        cmd = ["cargo", "build", "--release", "-p", "apx-cli", "-p", "apx-mock-upstream"]
        log(" ".join(cmd))
        subprocess.run(cmd, cwd=REPO, check=True)
        cmd = ["cargo", "build", "--release", "-p", "apx-gateway", "--example", "store_insert"]
        log(" ".join(cmd))
        subprocess.run(cmd, cwd=REPO, check=True)
        if args.profile:
            cmd = ["cargo", "build", "--profile", "profiling", "-p", "apx-cli", "-p",
                   "apx-mock-upstream"]
            log(" ".join(cmd))
            subprocess.run(cmd, cwd=REPO, check=True)
    apx_bin = args.bin_dir / "apx"
    for b in (apx_bin, args.bin_dir / "apx-mock-upstream"):
        if not b.exists():
            print(f"missing {b}: build it or drop --no-build", file=sys.stderr)
            return 2

    started = time.monotonic()
    results: dict = {
        "machine": machine_info(),
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "conns": args.conns_list,
            "wrk_threads": args.wrk_threads, "repeat": args.repeat,
            "paced_ms": args.paced_ms, "ttfc_n": args.ttfc_n, "ttfc_words": args.ttfc_words,
            "variants": [v.stem for v in variants], "nginx_workers": None,
            "captures": {v.stem: variant_capture(v) for v in variants},
            "completeness": args.completeness, "completeness_secs": args.completeness_secs,
            "workload": args.workload, "request_body": BODY,
            "request_headers": EXTRA_HEADERS, "path": PATH,
        },
        "load": [], "ttfc": [], "memory": {}, "completeness": [], "targets": [], "profile": None,
    }
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="apx-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            mock = start_mock(args.bin_dir, tmp)
            servers.append(mock)
            targets: list[tuple[str, Server | None]] = [("direct", None)]
            if not args.no_nginx:
                nginx = start_nginx(tmp, mock.port)
                servers.append(nginx)
                targets.append(("nginx", nginx))
                time.sleep(0.2)
                results["settings"]["nginx_workers"] = len(nginx.pids()) - 1
            # An eBPF-capture gateway's programs run for every process's
            # socket I/O (syscall I/O on kernels before 6.4), returning at
            # once for other processes: it is started only for its own
            # cells, so it does not tax the other targets' numbers.
            ebpf_variants = {f"apx[{v.stem}]": v for v in variants
                             if variant_capture(v) == "ebpf"}
            for v in variants:
                if f"apx[{v.stem}]" in ebpf_variants:
                    targets.append((f"apx[{v.stem}]", None))
                    continue
                s = start_apx(apx_bin, v, tmp, mock.port)
                servers.append(s)
                targets.append((s.name, s))
            for name, server in targets:
                if name not in ebpf_variants:
                    sanity_check(name, (server or mock).port)

            def start_ebpf(name: str) -> Server:
                s = start_apx(apx_bin, ebpf_variants[name], tmp, mock.port)
                sanity_check(name, s.port)
                return s

            cells: dict[tuple[str, int], list[dict]] = {}
            for round_no in range(args.repeat):
                for name, server in targets:
                    ebpf_server = start_ebpf(name) if name in ebpf_variants else None
                    server = ebpf_server or server
                    port = (server or mock).port
                    try:
                        for c in args.conns_list:
                            cells.setdefault((name, c, 0), []).append(
                                load_cell(args, name, port, c, server, mock))
                        if args.paced_ms > 0:
                            cells.setdefault((name, P99_CONNS, args.paced_ms), []).append(
                                load_cell(args, name, port, P99_CONNS, server, mock,
                                          args.paced_ms))
                        if ebpf_server is not None and round_no == args.repeat - 1:
                            results["memory"][name] = {
                                "vmhwm_kib": ebpf_server.kib("VmHWM"),
                                "vmrss_kib": ebpf_server.kib("VmRSS"),
                                "processes": len(ebpf_server.pids()),
                            }
                    finally:
                        if ebpf_server is not None:
                            ebpf_server.stop()
            results["load"] = [median_row(runs) for runs in cells.values()]
            # Time to first chunk interleaves all targets: the eBPF ones run
            # again for it (a latency measurement, sequential requests).
            ttfc_targets = []
            for name, server in targets:
                if name in ebpf_variants:
                    server = start_ebpf(name)
                    servers.append(server)
                ttfc_targets.append((name, server))
            results["ttfc"] = ttfc_all([(name, (server or mock).port)
                                        for name, server in ttfc_targets],
                                       args.ttfc_n, args.ttfc_words)
            for name, server in ttfc_targets:
                if name in ebpf_variants:
                    server.stop()
                    continue  # memory was read right after its load cells
                s = server or mock
                results["memory"][name if server else "mock"] = {
                    "vmhwm_kib": s.kib("VmHWM"), "vmrss_kib": s.kib("VmRSS"),
                    "processes": len(s.pids()),
                }
            # Completeness: after the load matrix and memory, with the load
            # gateways stopped (so a second eBPF capture is not loaded meanwhile).
            comp_variants = [v for v in variants if args.completeness == "all" or (
                args.completeness == "auto" and variant_capture(v) != "off")]
            if comp_variants:
                for name, server in targets:
                    if server is not None and name.startswith("apx["):
                        server.stop()
                for v in comp_variants:
                    results["completeness"].append(completeness_run(args, apx_bin, v, tmp, mock))
            results["store"] = store_insert_cost(args.bin_dir)
            results["targets"] = check_targets(results, [v.stem for v in variants])
            if args.profile:
                prof_bin = args.profile_bin_dir / "apx"
                if prof_bin.exists():
                    results["profile"] = profile_apx(
                        args, prof_bin, variants[0], tmp, mock,
                        None if args.no_nginx else nginx, out_path.parent)
                else:
                    results["profile"] = {"error": f"missing {prof_bin}"}
        finally:
            for s in reversed(servers):
                s.stop()
    results["elapsed_s"] = time.monotonic() - started

    out_path.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    print(f"## apx benchmark ({m.get('nproc')} cores, {m.get('cpu', '?')}; "
          f"nginx workers: {results['settings']['nginx_workers']}; wrk threads: "
          f"{args.wrk_threads}; git {m.get('git', '?')})\n")
    print(report(results))
    prof = results.get("profile")
    if prof:
        print("\n### Profile of apx (perf, cpu-clock) at "
              f"{P99_CONNS} connections\n")
        if "error" in prof:
            print(prof["error"])
        else:
            print("Top functions (self time):\n```")
            print("\n".join(Path(prof["flat"]).read_text().splitlines()[:30]))
            print("```\nBy binary (kernel vs apx vs libc):\n```")
            print("\n".join(Path(prof["dso"]).read_text().splitlines()[:10]))
            print("```")
            print(f"Full reports: {prof['flat']}, {prof['children']}, {prof['callers']}")
            if "nginx" in prof:
                print("nginx by binary, same load:\n```")
                print("\n".join(Path(prof["nginx"]["dso"]).read_text().splitlines()[:6]))
                print("```")
            if "mock" in prof:
                print(f"Mock upstream profile: {prof['mock']['flat']}")
    print(f"\nJSON: {out_path} (bench took {results['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where two or more apx variants differ, by symbol: CPU per request.

    python3 tests/bench/symbol_diff.py SECONDS CONNS NAME=VARIANT@/path/to/apx ... [--top=N] [--workload=sdk]

Starts one mock upstream and every gateway named (VARIANT is a file stem in
tests/bench/variants/), then for each in turn runs wrk for SECONDS and,
from the second second to the last but one, `perf record -e cpu-clock` of
the gateway process. Every symbol's samples become microseconds per
request, and the table lists the symbols whose cost differs most from the
first variant's (kernel programs show as `bpf_prog_<tag>_<name>`).

Session 8 used this to split eBPF capture's cost into the parse callbacks,
the programs' entry, the record output and user-memory reads, and to see
the workers' user-space code run less with eBPF than with user-space
capture. In a VM, cpu-clock samples gather where interrupts are
re-enabled (`_raw_spin_unlock_irqrestore`, `finish_task_switch`): their
absolute sum is ≈ 1.5x the schedstat CPU time; compare symbols between
variants, not totals with other tools. For symbols in apx itself build
with `cargo build --profile profiling` (the release binary is stripped).

Example: where eBPF capture's time goes against logging off,

    python3 tests/bench/symbol_diff.py 10 16 \\
        off=logging-off@target/profiling/apx ebpf=logging-ebpf@target/profiling/apx
"""

from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ab_threads import REPO, load_bench, parse_specs, take_workload

FREQUENCY = 10_000


def profile(bench, server, conns: int, seconds: int, out: Path) -> dict[str, float]:
    """Runs wrk against `server` while perf samples it; returns µs per
    request by symbol."""
    window = max(seconds - 2, 1)
    result: dict = {}
    load = threading.Thread(
        target=lambda: result.update(bench.run_wrk(server.port, "apx", conns, seconds, 1))
    )
    load.start()
    threading.Event().wait(1)
    subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQUENCY),
         "-p", str(server.proc.pid), "-o", str(out), "--", "sleep", str(window)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    load.join()
    per_second = max(result.get("requests", 0), 1) / seconds
    report = subprocess.run(
        ["perf", "report", "-i", str(out), "--no-children", "--sort", "sym",
         "--stdio", "-F", "sample,sym"],
        check=True, capture_output=True, text=True,
    ).stdout
    cost: dict[str, float] = collections.defaultdict(float)
    for line in report.splitlines():
        parts = line.split(None, 1)
        if len(parts) < 2 or line.startswith("#") or not parts[0].isdigit():
            continue
        seconds_on_cpu = int(parts[0]) / FREQUENCY
        cost[parts[1].strip()] += seconds_on_cpu / (per_second * window) * 1e6
    return cost


def main() -> None:
    args, workload = take_workload(sys.argv[1:])
    top = next((int(a[len("--top="):]) for a in args if a.startswith("--top=")), 30)
    args = [a for a in args if not a.startswith("--top=")]
    if len(args) < 4:
        sys.exit(__doc__)
    seconds, conns = int(args[0]), int(args[1])
    specs = parse_specs(args[2:])
    bench = load_bench()
    bench.use_workload(workload)
    tmp = Path(tempfile.mkdtemp(prefix="apx-symdiff-"))
    mock = bench.start_mock(REPO / "target" / "release", tmp)
    servers = []
    costs: dict[str, dict[str, float]] = {}
    try:
        for name, variant, binary in specs:
            server = bench.start_apx(binary, variant, tmp, mock.port, tag=f"-{name}")
            bench.sanity_check("apx", server.port)
            servers.append((name, server))
        for name, server in servers:
            costs[name] = profile(bench, server, conns, seconds, tmp / f"perf-{name}.data")
            print(f"{name}: {sum(costs[name].values()):.1f} us/request in perf samples", flush=True)
    finally:
        for _, server in servers:
            server.stop()
        mock.stop()
    names = [name for name, _, _ in specs]
    base = costs[names[0]]
    symbols = set().union(*(c.keys() for c in costs.values()))

    def spread(sym: str) -> float:
        return max(abs(costs[n].get(sym, 0.0) - base.get(sym, 0.0)) for n in names[1:])

    header = f"{'symbol':70s}" + "".join(f" {n:>9s}" for n in names)
    header += "".join(f" {n + '-' + names[0]:>12s}" for n in names[1:])
    print(header)
    for sym in sorted(symbols, key=spread, reverse=True)[:top]:
        row = f"{sym[:70]:70s}" + "".join(f" {costs[n].get(sym, 0.0):9.3f}" for n in names)
        row += "".join(f" {costs[n].get(sym, 0.0) - base.get(sym, 0.0):12.3f}" for n in names[1:])
        print(row)


if __name__ == "__main__":
    main()

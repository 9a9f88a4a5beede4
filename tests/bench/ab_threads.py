"""Interleaved A/B of apx builds and variants, CPU per request per thread.

    python3 tests/bench/ab_threads.py ROUNDS SECONDS CONNS NAME=VARIANT@/path/to/apx ... [--workload=sdk]

Starts one mock upstream and every gateway named (VARIANT is a file stem in
tests/bench/variants/), then, ROUNDS times, runs wrk against each gateway
in turn and prints its CPU per request split by thread name (from
/proc/PID/task/*/schedstat, nanosecond run time): the tokio workers, the
log collector, the store writer. On a shared VM the whole-process CPU per
request drifts by 1-1.5 us between runs; one thread's share of it, in
interleaved rounds, resolves changes of a tenth of a microsecond.
`--workload=sdk` sends the official SDK's headers and a longer body
instead of the small request (run.py's `--workload`).

Example: the collector before and after a change, eBPF logging, 16 connections:

    python3 tests/bench/ab_threads.py 3 5 16 \\
        old=logging-ebpf@/tmp/apx-old new=logging-ebpf@target/release/apx
"""

from __future__ import annotations

import collections
import importlib.util
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def load_bench():
    """The benchmark module (run.py): its mock, gateway and wrk helpers."""
    spec = importlib.util.spec_from_file_location("apx_bench", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["apx_bench"] = module
    spec.loader.exec_module(module)
    return module


def thread_run_ns(pid: int) -> collections.Counter:
    """Run time so far of each thread of `pid`, summed by name (digits and
    a trailing separator stripped, so numbered workers add up)."""
    out: collections.Counter = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            ran = int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = re.sub(r"[-_]?\d+$", "", stat[stat.index("(") + 1 : stat.rindex(")")])
        out[name] += ran
    return out


def parse_specs(args: list[str]) -> list[tuple[str, Path, Path]]:
    """`NAME=VARIANT@/path/to/apx` arguments as (name, variant file, binary)."""
    specs = []
    for arg in args:
        name, rest = arg.split("=", 1)
        variant, binary = rest.split("@", 1)
        specs.append((name, HERE / "variants" / f"{variant}.toml", Path(binary)))
    return specs


def take_workload(args: list[str]) -> tuple[list[str], str]:
    """The arguments without `--workload=NAME`, and the request wrk sends
    (run.py's `--workload`): "small" unless named."""
    workloads = [a.split("=", 1)[1] for a in args if a.startswith("--workload=")]
    rest = [a for a in args if not a.startswith("--workload=")]
    return rest, workloads[-1] if workloads else "small"


def main() -> None:
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    args, workload = take_workload(sys.argv[1:])
    rounds, seconds, conns = int(args[0]), int(args[1]), int(args[2])
    specs = parse_specs(args[3:])
    bench = load_bench()
    bench.use_workload(workload)
    tmp = Path(tempfile.mkdtemp(prefix="apx-ab-"))
    mock = bench.start_mock(REPO / "target" / "release", tmp)
    servers = []
    try:
        for name, variant, binary in specs:
            server = bench.start_apx(binary, variant, tmp, mock.port, tag=f"-{name}")
            bench.sanity_check("apx", server.port)
            servers.append((name, server))
        totals = collections.defaultdict(list)
        for r in range(rounds):
            for name, server in servers:
                before = thread_run_ns(server.proc.pid)
                result = bench.run_wrk(server.port, "apx", conns, seconds, 1)
                after = thread_run_ns(server.proc.pid)
                n = max(result["requests"], 1)
                per = {k: (after[k] - before.get(k, 0)) / 1e3 / n for k in after}
                total = sum(per.values())
                totals[name].append((total, n / seconds))
                threads = " ".join(
                    f"{k}={v:.2f}" for k, v in sorted(per.items()) if v > 0.05
                )
                print(f"r{r} {name:10s} {total:6.2f} us/req {n / seconds:8.0f} req/s  {threads}",
                      flush=True)
        print("--- medians")
        for name, rows in totals.items():
            print(f"{name:10s} {statistics.median(t for t, _ in rows):6.2f} us/req "
                  f"{statistics.median(q for _, q in rows):8.0f} req/s")
    finally:
        for _, server in servers:
            server.stop()
        mock.stop()


if __name__ == "__main__":
    main()

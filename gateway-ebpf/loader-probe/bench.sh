#!/usr/bin/env bash
# Cost of the capture programs (root; needs wrk and the built probe + example):
#   cargo build --release --bin apx-capture-probe --example hyper_server
#   bash gateway-ebpf/loader-probe/bench.sh [SECONDS]
# Prints, for the hyper example server under `wrk -t1 -c16`: requests/s and
# server CPU per request, without and with the probe attached; per-program
# in-kernel run time (BPF_ENABLE_STATS); and the cost for an unrelated
# process (dd doing 1-byte read/write syscalls, which the tracepoints also see).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
secs="${1:-10}"
port=38421
probe="$here/target/release/apx-capture-probe"
server_bin="$here/target/release/examples/hyper_server"
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null

"$server_bin" "127.0.0.1:$port" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 0.5

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run_wrk() { # label
    local t0 t1 out rps reqs
    t0=$(cpu_ticks $server)
    out=$(wrk -t1 -c16 -d"${secs}s" "http://127.0.0.1:$port/" 2>&1)
    t1=$(cpu_ticks $server)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    lat=$(echo "$out" | awk '/Latency/ {print $2}')
    echo "$1: ${rps} req/s, avg latency ${lat}, server CPU $(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$hz" 'BEGIN {printf "%.2f", (b - a) / hz * 1e6 / n}') us/request"
}

dd_time() {
    local s e
    s=$(date +%s%N)
    dd if=/dev/zero of=/dev/null bs=1 count=2000000 status=none
    e=$(date +%s%N)
    echo $(( (e - s) / 1000000 ))
}

echo "== baseline (no probe)"
run_wrk "without probe"
echo "dd 2M x (read+write) 1 byte: $(dd_time) ms"

echo "== probe attached (records drained, not printed)"
"$probe" --pid $server --quiet --duration $((secs * 2 + 30)) 2>/tmp/apx-bench-probe.err &
probe_pid=$!
for _ in $(seq 100); do grep -q attached /tmp/apx-bench-probe.err 2>/dev/null && break; sleep 0.1; done
head -1 /tmp/apx-bench-probe.err
run_wrk "with probe"
echo "dd 2M x (read+write) 1 byte: $(dd_time) ms"
kill -INT $probe_pid; wait $probe_pid || true
tail -1 /tmp/apx-bench-probe.err

echo "== again without probe"
run_wrk "without probe"

echo "== per-program in-kernel cost (BPF_ENABLE_STATS on; adds its own clock reads)"
"$probe" --pid $server --quiet --prog-stats --duration $((secs + 8)) 2>/tmp/apx-bench-probe.err &
probe_pid=$!
for _ in $(seq 100); do grep -q attached /tmp/apx-bench-probe.err 2>/dev/null && break; sleep 0.1; done
run_wrk "with probe + stats"
echo "dd 2M x (read+write) 1 byte: $(dd_time) ms"
kill -INT $probe_pid; wait $probe_pid || true
grep -E '"program"|"stats"' /tmp/apx-bench-probe.err

#!/usr/bin/env bash
# Gateway CPU per request with request capture off / userspace / ebpf, and
# where the eBPF time goes (root; needs wrk and release builds):
#   cargo build --release -p apx-cli -p apx-mock-upstream
#   bash gateway-ebpf/loader-probe/bench-gateway.sh [ROUNDS] [SECONDS] [json|stream]
# For each round and mode: a fresh `apx serve` (state in a temp dir) in front
# of apx-mock-upstream, `wrk -c16` for 2 s of warm-up then SECONDS measured
# with a POST /v1/chat/completions (small JSON answer, or a stream of ~9 SSE
# events); gateway CPU = utime+stime of the apx process from /proc before and
# after, over the requests wrk completed. The modes alternate within a round,
# so machine noise spreads over all three. Then one more ebpf run with
# kernel.bpf_stats_enabled=1 gives each program's run count and time per
# request (the gateway's own programs, read from /proc/PID/fdinfo).
set -euo pipefail
rounds="${1:-3}"
secs="${2:-5}"
kind="${3:-json}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="$root/target/release"
gw_port=38461
mock_port=38462
key=apx-bench-key-0123456789
work=$(mktemp -d)
command -v wrk >/dev/null || { echo "bench-gateway.sh: wrk is needed" >&2; exit 2; }
for b in apx apx-mock-upstream; do
    [ -x "$bin/$b" ] || { echo "bench-gateway.sh: build $bin/$b first (cargo build --release -p apx-cli -p apx-mock-upstream)" >&2; exit 2; }
done

"$bin/apx-mock-upstream" --listen "127.0.0.1:$mock_port" --no-record >"$work/mock.log" 2>&1 &
mock=$!
gw=
cleanup() {
    [ -n "$gw" ] && kill "$gw" 2>/dev/null || true
    kill "$mock" 2>/dev/null || true
    sysctl -q kernel.bpf_stats_enabled=0 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

stream=false
[ "$kind" = stream ] && stream=true
cat >"$work/post.lua" <<EOF
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = '{"model":"gpt-test","stream":$stream,"messages":[{"role":"user","content":"hello gateway"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
wrk.headers["User-Agent"] = "wrk-bench/1.0"
wrk.headers["X-Request-Id"] = "bench-1"
EOF

config() { # mode
    cat >"$work/$1.toml" <<EOF
listen = "127.0.0.1:$gw_port"
[providers.mock]
kind = "openai"
base_url = "http://127.0.0.1:$mock_port/v1"
api_key = "sk-upstream-openai-test"
[[models]]
name = "gpt-test"
provider = "mock"
[[keys]]
name = "bench"
hash = "sha256:$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
[storage]
dir = "$work/state-$1"
[logging]
capture = "$1"
EOF
}

start_gateway() { # mode
    rm -rf "$work/state-$1"
    config "$1"
    "$bin/apx" serve --config "$work/$1.toml" >"$work/gw-$1.log" 2>&1 &
    gw=$!
    for _ in $(seq 200); do
        curl -sf "127.0.0.1:$gw_port/healthz" >/dev/null 2>&1 && return 0
        kill -0 "$gw" 2>/dev/null || break
        sleep 0.05
    done
    echo "bench-gateway.sh: the gateway ($1) did not start:" >&2
    cat "$work/gw-$1.log" >&2
    exit 1
}

stop_gateway() {
    kill "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    gw=
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

measure() { # mode → "mode rps cpu_us_per_request"
    start_gateway "$1"
    wrk -c16 -d2s -s "$work/post.lua" "http://127.0.0.1:$gw_port" >/dev/null 2>&1
    local t0 t1 out reqs rps bad
    t0=$(cpu_ticks "$gw")
    out=$(wrk -c16 -d"${secs}s" -s "$work/post.lua" "http://127.0.0.1:$gw_port" 2>&1)
    t1=$(cpu_ticks "$gw")
    stop_gateway
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    [ -z "$bad" ] || { echo "bench-gateway.sh: $bad non-2xx answers ($1)" >&2; exit 1; }
    awk -v m="$1" -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$hz" -v r="$rps" \
        'BEGIN {printf "%s %s %.2f\n", m, r, (b - a) / hz * 1e6 / n}'
}

echo "== gateway CPU per request ($kind, wrk -c16 -d${secs}s, $rounds rounds)"
for r in $(seq "$rounds"); do
    for mode in off userspace ebpf; do
        measure "$mode"
    done
done | tee "$work/results" | awk '{printf "  %-9s %9s req/s  %7.2f us/request\n", $1, $2, $3}'
echo "  median:"
for mode in off userspace ebpf; do
    awk -v m="$mode" '$1 == m {print $3}' "$work/results" | sort -n |
        awk -v m="$mode" '{v[NR] = $1} END {printf "  %-9s %7.2f us/request\n", m, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
done

# Each bpf-prog fd of the gateway, named by the kernel (bpftool, the name
# truncated to 15 characters), with its run count and time.
command -v bpftool >/dev/null || { echo "bench-gateway.sh: bpftool is needed for the program table" >&2; exit 2; }
prog_stats() { # pid → "name run_cnt run_time_ns" lines
    local fd id name
    for fd in $(ls "/proc/$1/fd" | sort -n); do
        [ "$(readlink "/proc/$1/fd/$fd" 2>/dev/null)" = "anon_inode:bpf-prog" ] || continue
        id=$(awk '/^prog_id/ {print $2}' "/proc/$1/fdinfo/$fd")
        name=$(bpftool prog show id "$id" 2>/dev/null | awk 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == "name") print $(i + 1)}')
        awk -v n="${name:-prog$id}" '/^run_cnt/ {c = $2} /^run_time_ns/ {t = $2} END {print n, c, t}' "/proc/$1/fdinfo/$fd"
    done
}

echo "== where the eBPF time goes (kernel.bpf_stats_enabled=1 adds two clock reads per run)"
start_gateway ebpf
wrk -c16 -d2s -s "$work/post.lua" "http://127.0.0.1:$gw_port" >/dev/null 2>&1
sysctl -q kernel.bpf_stats_enabled=1
prog_stats "$gw" >"$work/before"
out=$(wrk -c16 -d"${secs}s" -s "$work/post.lua" "http://127.0.0.1:$gw_port" 2>&1)
prog_stats "$gw" >"$work/after"
sysctl -q kernel.bpf_stats_enabled=0
stop_gateway
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
printf "  %-15s %9s %8s %9s\n" program runs/req ns/run ns/req
join <(sort "$work/before") <(sort "$work/after") | awk -v n="$reqs" '
    { c = $4 - $2; t = $5 - $3; total += t
      if (c > 0) printf "  %-15s %9.2f %8.0f %9.0f\n", $1, c / n, t / c, t / n }
    END { printf "  all programs: %.2f us/request\n", total / n / 1000 }'

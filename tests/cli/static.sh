#!/usr/bin/env bash
# Builds the one static `apx` binary (x86_64-unknown-linux-musl: musl libc,
# rustls, SQLite compiled in) and checks that it is static and runs.
#
# Usage: bash tests/cli/static.sh
# Needs: the Rust musl target (`rustup target add x86_64-unknown-linux-musl`)
# and a musl C compiler for the bundled C code of SQLite and ring
# (`apt-get install musl-tools`); both are installed here when missing.
# Prints the binary's path and size.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
ARCH=$(uname -m)
TARGET="$ARCH-unknown-linux-musl"

if ! rustup target list --installed | grep -qx "$TARGET"; then
	echo "adding the Rust target $TARGET" >&2
	rustup target add "$TARGET"
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
	echo "installing musl-tools (musl-gcc)" >&2
	apt-get install -y musl-tools >/dev/null 2>&1 ||
		{ apt-get update >/dev/null && apt-get install -y musl-tools >/dev/null; }
fi

t0=$(date +%s)
# APX_STATIC_PROFILE=static-check (CI) builds without LTO; same linking.
PROFILE="${APX_STATIC_PROFILE:-release}"
cargo build --profile "$PROFILE" --locked -p apx-cli --target "$TARGET"
t1=$(date +%s)
BIN="$ROOT/target/$TARGET/$PROFILE/apx"

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# ldd says "not a dynamic executable" (glibc's ldd) or "statically linked".
ldd_out=$(ldd "$BIN" 2>&1 || true)
case "$ldd_out" in
*"not a dynamic executable"* | *"statically linked"*) ;;
*) fail "$BIN is dynamically linked: $ldd_out" ;;
esac
if command -v readelf >/dev/null 2>&1 && readelf -l "$BIN" | grep -q "INTERP"; then
	fail "$BIN asks for a program interpreter"
fi
"$BIN" --version >/dev/null || fail "the static binary does not run"
"$BIN" completions bash >/dev/null || fail "the static binary cannot print completions"
tmp=$(mktemp -d)
APX_CONFIG="$tmp/apx.toml" APX_STATE_DIR="$tmp/state" APX_SYSTEMD=0 \
	"$BIN" init --yes --dry-run --provider vllm >/dev/null || fail "init --dry-run with the static binary"
rm -rf "$tmp"

# The embedded eBPF programs load from the static binary (root only).
if [[ $(id -u) -eq 0 ]]; then
	tmp=$(mktemp -d)
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	cat >"$tmp/apx.toml" <<CONFIG
listen = "127.0.0.1:$port"
[storage]
dir = "$tmp/state"
[logging]
capture = "ebpf"
[providers.echo]
kind = "echo"
[[models]]
name = "echo"
provider = "echo"
CONFIG
	"$BIN" serve --config "$tmp/apx.toml" >"$tmp/log" 2>&1 &
	pid=$!
	mode=""
	for _ in $(seq 1 100); do
		mode=$(curl -fsS "http://127.0.0.1:$port/readyz" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["capture_mode"])' 2>/dev/null || true)
		[[ -n "$mode" ]] && break
		sleep 0.1
	done
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	[[ "$mode" == "ebpf" ]] || { cat "$tmp/log" >&2; fail "the static binary did not start eBPF capture (mode: ${mode:-none})"; }
	echo "embedded eBPF programs: loaded and attached by the static binary"
	rm -rf "$tmp"
fi

size=$(stat -c %s "$BIN")
echo "static binary: $BIN"
echo "ldd: $ldd_out"
echo "size: $size bytes ($((size / 1048576)) MiB), built in $((t1 - t0)) s"

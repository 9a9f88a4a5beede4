#!/usr/bin/env bash
# Verify the committed eBPF object gateway-ebpf/prebuilt/apx-capture.bpf.o.
#
#   bash gateway-ebpf/check.sh          unit tests of the shared crate; rebuild the
#                                       object (installing the toolchain if missing)
#                                       and compare it byte for byte with the committed one
#   bash gateway-ebpf/check.sh --e2e    also load the committed object into the kernel
#                                       (root) and run loader-probe/e2e.py against a
#                                       Python server and the hyper example server
#   --no-build                          skip the rebuild (stable-only machines)
#
# The byte comparison is strict when the toolchain is the one recorded in
# prebuilt/TOOLCHAIN (nightly rustc, bpf-linker, LLVM); with another toolchain
# the bytes may legitimately differ, so it is reported and the --e2e
# functional check is what counts.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
e2e=0
build=1
for a in "$@"; do
    case "$a" in
        --e2e) e2e=1 ;;
        --no-build) build=0 ;;
        *) echo "check.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done
pass=0
fail=0
ok() { echo "ok   $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

obj="$here/prebuilt/apx-capture.bpf.o"
recorded_sha=$(sed -n 's/^sha256: //p' "$here/prebuilt/TOOLCHAIN")
actual_sha=$(sha256sum "$obj" | cut -d' ' -f1)
if [ "$recorded_sha" = "$actual_sha" ]; then
    ok "prebuilt object matches prebuilt/TOOLCHAIN ($actual_sha)"
else
    bad "prebuilt object sha256 $actual_sha != recorded $recorded_sha (run build.sh and commit both)"
fi

echo "== shared crate unit tests (stable)"
if (cd "$here/common" && cargo +stable test --features std --quiet 2>&1 | tail -3); then
    ok "apx-capture-common tests"
else
    bad "apx-capture-common tests"
fi

if [ "$build" = 1 ]; then
    echo "== rebuild the object and compare"
    tmp=$(mktemp -d)
    if bash "$here/build.sh" --out "$tmp/rebuilt.o"; then
        rebuilt_sha=$(sha256sum "$tmp/rebuilt.o" | cut -d' ' -f1)
        want_rustc=$(sed -n 's/^rustc: //p' "$here/prebuilt/TOOLCHAIN")
        have_rustc=$(rustc +nightly -V)
        want_llvm=$(sed -n 's/^llvm: //p' "$here/prebuilt/TOOLCHAIN")
        have_llvm=$(dpkg-query -W -f='${Version}' llvm-22-dev 2>/dev/null || true)
        if [ "$rebuilt_sha" = "$actual_sha" ]; then
            ok "rebuilt object is byte-identical to the committed one"
        elif [ "$want_rustc" = "$have_rustc" ] && [ "$want_llvm" = "$have_llvm" ]; then
            bad "rebuilt object differs with the same toolchain: the committed object is stale (run gateway-ebpf/build.sh, commit prebuilt/)"
        else
            echo "note: toolchain differs ($have_rustc / llvm $have_llvm vs recorded $want_rustc / llvm $want_llvm): bytes differ, not an error; see --e2e"
        fi
    else
        echo "note: the eBPF toolchain is not available here; the committed object is used as is"
    fi
    rm -rf "$tmp"
fi

if [ "$e2e" = 1 ]; then
    echo "== load the committed object and capture real traffic (root)"
    (cd "$here/loader-probe" && cargo +stable build --release --quiet --bin apx-capture-probe --example hyper_server)
    # Free ports, picked now: fixed ones may be taken on a busy machine.
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    # Each hook layer on its own (`auto` picks the socket layer where the
    # kernel has it; a kernel without it fails the sockets runs).
    for layer in sockets syscalls; do
        if python3 "$here/loader-probe/e2e.py" --port "$(free_port)" --layer "$layer" --out "/tmp/apx-e2e-$layer.jsonl"; then
            ok "e2e against a Python HTTP/1.1 server ($layer)"
        else
            bad "e2e against a Python HTTP/1.1 server ($layer)"
        fi
        if python3 "$here/loader-probe/e2e.py" --port "$(free_port)" --layer "$layer" --hyper "$here/loader-probe/target/release/examples/hyper_server" --out "/tmp/apx-e2e-hyper-$layer.jsonl"; then
            ok "e2e against the hyper example server ($layer)"
        else
            bad "e2e against the hyper example server ($layer)"
        fi
    done
fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]

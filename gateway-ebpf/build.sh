#!/usr/bin/env bash
# Build the apx eBPF object and copy it to gateway-ebpf/prebuilt/.
#
#   bash gateway-ebpf/build.sh              install the toolchain if missing, build, copy
#   bash gateway-ebpf/build.sh --install    only install the toolchain
#   bash gateway-ebpf/build.sh --out FILE   build, write the object to FILE instead
#
# Idempotent: each install step is skipped when its result is already there.
# Toolchain (see docs/ebpf-design.md, "Build"):
#   - apt: llvm-22-dev (bpf-linker links libLLVM.so.22.1 at run time: keep it)
#   - rustup: the installed `nightly` toolchain + rust-src (nightly cannot be
#     fetched on our machines, only its components)
#   - cargo install bpf-linker 0.13.0 --features llvm-22
# The build is reproducible: paths are remapped, so the same toolchain gives
# the same bytes in any checkout (check.sh relies on it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/prebuilt/apx-capture.bpf.o"
install_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --install) install_only=1 ;;
        --out) out="$2"; shift ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

export PATH="$HOME/.cargo/bin:$PATH"
log() { echo "[ebpf-build] $*" >&2; }

install_toolchain() {
    if ! dpkg-query -W -f='${Status}' llvm-22-dev 2>/dev/null | grep -q "install ok installed"; then
        log "apt-get install llvm-22-dev"
        if ! apt-get install -y -qq llvm-22-dev >/dev/null 2>&1; then
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-22-dev >/dev/null
        fi
    fi
    if ! rustup toolchain list | grep -q '^nightly'; then
        log "no nightly toolchain installed (and none can be fetched here): cannot build the eBPF object;"
        log "the committed prebuilt/apx-capture.bpf.o stays in use"
        return 1
    fi
    if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
        log "rustup component add rust-src --toolchain nightly"
        rustup component add rust-src --toolchain nightly >/dev/null
    fi
    if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
        log "cargo install bpf-linker 0.13.0 (llvm-22), about a minute"
        # LLVM_PREFIX: bpf-linker's build script otherwise takes the llvm-config
        # on PATH (Debian's default LLVM) and fails to link -lLLVM.
        LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
            cargo +stable install bpf-linker --version 0.13.0 --locked \
            --no-default-features --features llvm-22 >/dev/null 2>&1 ||
        LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
            cargo +stable install bpf-linker --version 0.13.0 \
            --no-default-features --features llvm-22
    fi
}

install_toolchain || { [ "$install_only" = 1 ] && exit 0; exit 3; }
[ "$install_only" = 1 ] && exit 0

# Cargo hashes a path package's location into its symbol names, so the sources
# are staged at one fixed path: any checkout then builds the same bytes.
stage="${APX_EBPF_STAGE:-/tmp/apx-ebpf-build}/gateway-ebpf"
mkdir -p "$stage/kernel" "$stage/common"
for d in kernel common; do
    (cd "$here/$d" && tar --exclude=./target -cf - .) | (cd "$stage/$d" && tar -xf -)
done
# Remove sources that no longer exist in the checkout.
(cd "$stage" && find kernel/src common/src -type f) | while read -r f; do
    [ -e "$here/$f" ] || rm -f "$stage/$f"
done
cd "$stage/kernel"
# aya-ebpf 0.2.1 pulls aya-build 0.2.1 (rust 1.98); the lock file pins 0.2.0.
if grep -A1 'name = "aya-build"' Cargo.lock | grep -q '0.2.1'; then
    cargo +nightly update aya-build --precise 0.2.0 >/dev/null 2>&1
fi
# Same flags as .cargo/config.toml plus path remapping for reproducibility.
export RUSTFLAGS="-C debuginfo=2 -C link-arg=--btf --remap-path-prefix=$stage=/apx/gateway-ebpf --remap-path-prefix=$HOME/.cargo=/cargo"
log "cargo +nightly build --release (bpfel-unknown-none) in $stage"
cargo +nightly build --release --locked
obj="$stage/kernel/target/bpfel-unknown-none/release/apx-capture"
mkdir -p "$(dirname "$out")"
# DWARF is only the input bpf-linker makes BTF from: the loader reads .BTF
# and .BTF.ext (types, function and line info for the verifier) and never
# the .debug_* sections, which were 3/4 of the object embedded in apx
# (1.9 MB -> 0.5 MB of binary, and as much less memory while loading).
/usr/lib/llvm-22/bin/llvm-objcopy --strip-debug "$obj" "$out"
if [ "$out" = "$here/prebuilt/apx-capture.bpf.o" ]; then
    {
        echo "# Toolchain that built apx-capture.bpf.o (check.sh compares bytes only when it matches)"
        echo "rustc: $(rustc +nightly -V)"
        echo "bpf-linker: $(bpf-linker --version | head -1)"
        echo "llvm: $(dpkg-query -W -f='${Version}' llvm-22-dev 2>/dev/null)"
        echo "sha256: $(sha256sum "$out" | cut -d' ' -f1)"
    } > "$here/prebuilt/TOOLCHAIN"
fi
log "wrote $out ($(stat -c %s "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16)…)"

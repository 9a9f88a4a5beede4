#!/usr/bin/env bash
# Installs what the test suite (tests/run-all.sh) needs on a Debian 12 machine
# that already has Rust stable and Python 3 + pip. Idempotent: a second run
# installs nothing and takes a second or two.
#
#   tests/install-deps.sh          # apt packages, Rust components, Python packages
#   tests/install-deps.sh --bench  # also what `tests/run-all.sh --bench --profile` can use (perf)
#
# To add an apt package, add it to APT_PACKAGES below.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  ca-certificates
  curl
  nginx-light # the benchmark's reference reverse proxy
  wrk         # the benchmark's load generator
  tmux        # terminal-level tests of the CLI
)
BENCH_EXTRA=()

for arg in "$@"; do
  case "$arg" in
    --bench) BENCH_EXTRA=(linux-perf) ;;
    -h | --help)
      sed -n '2,9p' "$0"
      exit 0
      ;;
    *)
      echo "install-deps: unknown argument $arg" >&2
      exit 2
      ;;
  esac
done

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then SUDO=(sudo); else
    echo "install-deps: not root and no sudo; install by hand: ${APT_PACKAGES[*]}" >&2
  fi
fi

# --- apt: only what is missing, so a warm machine does not touch the network.
missing=()
for pkg in "${APT_PACKAGES[@]}" "${BENCH_EXTRA[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install ${missing[*]}"
  # Packages like nginx start their service on install; the tests start their
  # own instances, so keep the system one from starting (and taking port 80).
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d && $(id -u) -eq 0 ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
else
  echo "install-deps: apt packages present (${APT_PACKAGES[*]} ${BENCH_EXTRA[*]})"
fi

# --- Rust: rustfmt and clippy are part of the default rustup profile, but a
# minimal toolchain lacks them.
if command -v rustup >/dev/null; then
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  fi
fi

# --- Python: the SDK compatibility suite's pinned packages.
if [[ -f tests/python/requirements.txt ]]; then
  # A distribution Python marks itself externally managed; CI machines are
  # throwaway, so installing into it is fine. pyenv/venv Pythons ignore this.
  PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
    python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
  echo "install-deps: python packages from tests/python/requirements.txt present"
fi

# --- eBPF toolchain (llvm-22-dev, rust-src for nightly, bpf-linker), so CI
# can rebuild the kernel object and check it matches the committed one. Where
# it cannot be had (no nightly, rustup's server unreachable), the check still
# loads and tests the committed object (tests/run-all.sh picks --no-build).
bash gateway-ebpf/build.sh --install ||
  echo "install-deps: warning: eBPF toolchain incomplete; the committed object will be tested without a rebuild"

# --- Static binary: the musl target and musl-gcc for the bundled C code.
if command -v rustup >/dev/null; then
  target="$(uname -m)-unknown-linux-musl"
  rustup target list --installed | grep -qx "$target" || rustup target add "$target" ||
    echo "install-deps: warning: cannot add the Rust target $target; the static-binary check will say so"
fi
if ! command -v musl-gcc >/dev/null; then
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends musl-tools ||
    { "${SUDO[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends musl-tools; }
fi

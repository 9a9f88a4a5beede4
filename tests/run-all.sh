#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run = tests/install-deps.sh + this).
#
#   tests/run-all.sh                 # every check
#   tests/run-all.sh --bench         # every check, then the benchmark (tests/bench/run.py;
#                                    # BENCH_ARGS="--profile" adds flags to it)
#   tests/run-all.sh --only clippy,test
#   tests/run-all.sh --skip python
#   tests/run-all.sh --fail-fast     # stop at the first failing step
#
# Each step prints a header and its duration; a summary closes the run. The
# exit status is non-zero if any step failed.
#
# Adding a step = one `step NAME COMMAND...` line in the list at the bottom.
# A command runs from the repository root in a subshell with `set -e`.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH=0
FAIL_FAST=0
ONLY=""
SKIP=""
while (($#)); do
  case "$1" in
    --bench) BENCH=1 ;;
    --fail-fast) FAIL_FAST=1 ;;
    --only) ONLY="${2:?--only needs step names}"; shift ;;
    --only=*) ONLY="${1#*=}" ;;
    --skip) SKIP="${2:?--skip needs step names}"; shift ;;
    --skip=*) SKIP="${1#*=}" ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "run-all: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

SUMMARY=()
FAILED=0
PASSED=0

in_list() { [[ ",$2," == *",$1,"* ]]; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME COMMAND [ARGS...]: runs one check, prints its header, result and time.
step() {
  local name="$1"
  shift
  if [[ -n "$ONLY" ]] && ! in_list "$name" "$ONLY"; then return 0; fi
  if [[ -n "$SKIP" ]] && in_list "$name" "$SKIP"; then return 0; fi
  if ((FAIL_FAST && FAILED)); then
    SUMMARY+=("$(printf '%-10s %-8s %8s' "$name" "not run" "-")")
    return 0
  fi
  echo
  echo "==> $name: $*"
  local start rc took
  start=$(now)
  set +e
  (set -e; "$@")
  rc=$?
  set -e
  took=$(elapsed "$start")
  if ((rc == 0)); then
    echo "<== $name: ok (${took} s)"
    SUMMARY+=("$(printf '%-10s %-8s %7ss' "$name" "ok" "$took")")
    PASSED=$((PASSED + 1))
  else
    echo "<== $name: FAILED with exit code $rc (${took} s)"
    SUMMARY+=("$(printf '%-10s %-8s %7ss' "$name" "FAILED" "$took")")
    FAILED=$((FAILED + 1))
  fi
}

# pytest exits 5 when it collects nothing: fine while a folder has no test
# files yet, a failure once it has some (they were all skipped by mistake).
pytest_dir() {
  local dir="$1"
  if [[ ! -d "$dir" ]]; then
    echo "($dir does not exist: nothing to run)"
    return 0
  fi
  local rc=0
  python3 -m pytest "$dir" -q || rc=$?
  if ((rc == 5)); then
    if [[ -n "$(find "$dir" \( -name 'test_*.py' -o -name '*_test.py' \) -print -quit)" ]]; then
      echo "pytest collected no tests although $dir has test files" >&2
      return 1
    fi
    echo "($dir has no tests yet)"
    return 0
  fi
  return "$rc"
}

# ---------------------------------------------------------------- the steps
# The eBPF crates are outside the workspace (the kernel one needs nightly and
# the bpf target): their stable crates are checked here too, and the kernel
# crate's formatting when nightly's rustfmt is installed.
fmt_all() {
  cargo fmt --check
  (cd gateway-ebpf/common && cargo fmt --check)
  (cd gateway-ebpf/loader-probe && cargo fmt --check)
  if rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rustfmt'; then
    (cd gateway-ebpf/kernel && cargo +nightly fmt --check)
  fi
}
clippy_all() {
  cargo clippy --workspace --all-targets -- -D warnings
  (cd gateway-ebpf/common && cargo clippy --features std --all-targets -- -D warnings)
  (cd gateway-ebpf/loader-probe && cargo clippy --all-targets -- -D warnings)
}
step fmt fmt_all
step clippy clippy_all
step build cargo build --workspace
step test cargo test --workspace
step python pytest_dir tests/python
step cli bash tests/cli/run.sh
# Rebuilds the object when the eBPF toolchain is there (byte-identical check),
# then loads the real programs into the kernel (root; CI runs as root).
ebpf_check() {
  if command -v bpf-linker >/dev/null &&
    rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    bash gateway-ebpf/check.sh --e2e
  else
    echo "ebpf: toolchain missing, testing the committed object without a rebuild"
    bash gateway-ebpf/check.sh --e2e --no-build
  fi
}
step ebpf ebpf_check
# The release profile's LTO takes minutes; linking is what is checked, so a
# quicker profile builds the same static binary here.
static_check() {
  if rustup target list --installed 2>/dev/null | grep -qx "$(uname -m)-unknown-linux-musl"; then
    APX_STATIC_PROFILE=static-check bash tests/cli/static.sh
  else
    echo "static: the musl target could not be installed on this machine; not checked"
  fi
}
step static static_check
# BENCH_ARGS adds flags to the benchmark, e.g. BENCH_ARGS=--profile.
# shellcheck disable=SC2086
if ((BENCH)); then step bench python3 tests/bench/run.py --out target/bench/results.json ${BENCH_ARGS:-}; fi
# --------------------------------------------------------------------------

echo
echo "==> summary"
for line in "${SUMMARY[@]}"; do echo "    $line"; done
if ((FAILED)); then
  echo "run-all: $FAILED step(s) failed"
else
  echo "run-all: all steps ok"
fi
# The closing line CI reads: steps, each of which ran its own tests.
echo "steps: $PASSED passed, $FAILED failed"
((FAILED == 0))

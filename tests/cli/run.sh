#!/usr/bin/env bash
# End-to-end tests of the apx CLI as a new user meets it:
#   - install.sh into a temporary prefix and HOME: fresh install → first
#     streamed answer (timed), re-run (upgrade in place, config kept, gateway
#     restarted), --uninstall (data kept), --uninstall --purge;
#   - install.sh from a release layout (binary next to it) and piped to sh;
#   - the interactive `apx init` wizard driven through a pseudo-terminal (tmux).
# With --static it also builds the static musl binary and checks it
# (tests/cli/static.sh).
#
# Usage: bash tests/cli/run.sh [--static]
# The Rust tests of the CLI are separate: cargo test -p apx-cli

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
STATIC=0
for arg in "$@"; do
	case "$arg" in
	--static) STATIC=1 ;;
	*) echo "usage: bash tests/cli/run.sh [--static]" >&2; exit 2 ;;
	esac
done

if ! command -v tmux >/dev/null 2>&1; then
	echo "installing tmux (drives the interactive wizard)" >&2
	apt-get install -y tmux >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y tmux >/dev/null; }
fi

cargo build -q -p apx-cli
APX_BIN="$ROOT/target/debug/apx"
WORK=$(mktemp -d /tmp/apx-cli-e2e.XXXXXX)
TMUX_SESSION="apx-wizard-$$"
# Configs whose gateways the cleanup stops (tests run in subshells, so a
# file, not a variable).
CONFIGS="$WORK/configs"
touch "$CONFIGS"

cleanup() {
	tmux kill-session -t "$TMUX_SESSION" 2>/dev/null || true
	while read -r config; do
		APX_CONFIG=$config APX_SYSTEMD=0 "$APX_BIN" stop --force --timeout 5s >/dev/null 2>&1 || true
	done <"$CONFIGS"
	rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# expect FILE TEXT: FILE contains TEXT
expect() {
	grep -qF -- "$2" "$1" || { echo "--- $1:" >&2; cat "$1" >&2; fail "$1 does not contain: $2"; }
}

mode_of() { stat -c %a "$1"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A clean environment for one user: HOME, config and state under $1.
user_env() {
	local d=$1
	echo env -i PATH=/usr/bin:/bin HOME="$d/home" TERM=dumb \
		APX_CONFIG="$d/home/.config/apx/apx.toml" APX_STATE_DIR="$d/state" APX_SYSTEMD=0
}

# ---- tests -------------------------------------------------------------------

test_install_fresh_rerun_uninstall() {
	local d="$WORK/install" port env config
	mkdir -p "$d/home"
	port=$(free_port)
	env=$(user_env "$d")
	config="$d/home/.config/apx/apx.toml"
	echo "$config" >>"$CONFIGS"

	local t0 t1
	t0=$(date +%s%N)
	$env sh install.sh --prefix "$d/prefix" --binary "$APX_BIN" -- --port "$port" >"$d/out1" 2>&1 ||
		{ cat "$d/out1"; fail "fresh install failed"; }
	$env "$d/prefix/bin/apx" call openai "Hello from the quick start" >"$d/answer" 2>"$d/answer.err" ||
		{ cat "$d/answer.err"; fail "first call failed"; }
	t1=$(date +%s%N)
	echo "time from install.sh to first streamed answer: $(((t1 - t0) / 1000000)) ms (binary prebuilt)"
	expect "$d/answer" "Hello from the quick start"
	expect "$d/out1" "installed apx"
	expect "$d/out1" "apx doctor"
	expect "$d/out1" "apx is running"
	expect "$d/out1" "is not on your PATH"
	expect "$d/out1" "Try it:    $d/prefix/bin/apx call echo \"Hello\""
	# … and that exact command answers.
	$env "$d/prefix/bin/apx" call echo "Hello" >"$d/answer0" || fail "the printed next command failed"
	expect "$d/answer0" "Hello"
	[ -x "$d/prefix/bin/apx" ] || fail "no binary installed"
	[ "$(mode_of "$d/home/.config/apx/apx.env")" = 600 ] || fail "apx.env is not 0600"
	[ "$(mode_of "$d/home/.config/apx/client.key")" = 600 ] || fail "client.key is not 0600"
	# The gateway counted that request.
	$env "$d/prefix/bin/apx" status --json >"$d/status" || fail "status after install"
	expect "$d/status" '"running": true'
	if grep -q '"requests_total": 0,' "$d/status"; then fail "status counts no request"; fi

	# Re-run: upgrade in place, keep the config, restart the gateway.
	local before pid_before pid_after
	before=$(cat "$config")
	pid_before=$(cat "$d/state/apx.pid")
	$env sh install.sh --prefix "$d/prefix" --binary "$APX_BIN" >"$d/out2" 2>&1 ||
		{ cat "$d/out2"; fail "second install failed"; }
	expect "$d/out2" "reinstalled apx"
	expect "$d/out2" "keeping your config at $config"
	expect "$d/out2" "restarting the running gateway"
	[ "$(cat "$config")" = "$before" ] || fail "the re-run changed the config"
	pid_after=$(cat "$d/state/apx.pid")
	[ "$pid_after" != "$pid_before" ] || fail "the gateway was not restarted"
	$env "$d/prefix/bin/apx" call anthropic "after the upgrade" >"$d/answer2" || fail "call after upgrade"
	expect "$d/answer2" "after the upgrade"

	# Uninstall: binary gone, gateway stopped, config and data kept.
	$env sh install.sh --prefix "$d/prefix" --uninstall >"$d/out3" 2>&1 ||
		{ cat "$d/out3"; fail "uninstall failed"; }
	[ ! -e "$d/prefix/bin/apx" ] || fail "the binary is still there"
	! port_open "$port" || fail "the gateway still listens on $port"
	[ -f "$config" ] || fail "uninstall removed the config"
	[ -f "$d/state/state.db" ] || fail "uninstall removed the key store"
	expect "$d/out3" "Kept your config"

	# Reinstall keeps using the same config; --purge removes everything.
	$env sh install.sh --prefix "$d/prefix" --binary "$APX_BIN" --no-start >"$d/out4" 2>&1 ||
		{ cat "$d/out4"; fail "reinstall failed"; }
	expect "$d/out4" "keeping your config"
	$env sh install.sh --prefix "$d/prefix" --uninstall --purge >"$d/out5" 2>&1 ||
		{ cat "$d/out5"; fail "purge failed"; }
	[ ! -e "$config" ] || fail "purge kept the config"
	[ ! -e "$d/home/.config/apx/apx.env" ] || fail "purge kept apx.env"
	[ ! -e "$d/state/state.db" ] || fail "purge kept the key store"
}

test_install_from_release_layout_and_pipe() {
	local d="$WORK/release" env
	mkdir -p "$d/home" "$d/dist"
	env=$(user_env "$d")
	cp install.sh "$d/dist/install.sh"
	cp "$APX_BIN" "$d/dist/apx-$(uname -m)-linux"
	$env sh "$d/dist/install.sh" --prefix "$d/prefix" --no-init >"$d/out1" 2>&1 ||
		{ cat "$d/out1"; fail "install from the release layout failed"; }
	expect "$d/out1" "installed apx"
	cmp -s "$d/prefix/bin/apx" "$APX_BIN" || fail "installed binary differs from the artifact"

	# `curl … | sh` without an artifact or checkout: a clear error.
	local rc=0
	(cd "$d" && $env sh -s -- --prefix "$d/prefix2" <"$d/dist/install.sh" >"$d/out2" 2>&1) || rc=$?
	[ "$rc" = 1 ] || fail "piped install without a binary exited $rc"
	expect "$d/out2" "found no apx binary"
	expect "$d/out2" "hint:"
	# … and with APX_BINARY it works.
	(cd "$d" && $env APX_BINARY="$APX_BIN" sh -s -- --prefix "$d/prefix2" --no-init <"$d/dist/install.sh" >"$d/out3" 2>&1) ||
		{ cat "$d/out3"; fail "piped install with APX_BINARY failed"; }
	[ -x "$d/prefix2/bin/apx" ] || fail "piped install put no binary"

	# Bad options say what to do.
	rc=0
	$env sh install.sh --bogus >"$d/out4" 2>&1 || rc=$?
	[ "$rc" = 1 ] || fail "bad option exited $rc"
	expect "$d/out4" "unknown option: --bogus"
}

# wait_screen TEXT: waits until the wizard's screen shows TEXT.
wait_screen() {
	local i
	for i in $(seq 1 100); do
		if tmux capture-pane -p -t "$TMUX_SESSION" | grep -qF -- "$1"; then return 0; fi
		sleep 0.1
	done
	echo "--- screen:" >&2
	tmux capture-pane -p -t "$TMUX_SESSION" >&2
	fail "the wizard never showed: $1"
}

test_init_wizard_in_a_terminal() {
	local d="$WORK/wizard" env port
	mkdir -p "$d/home"
	env=$(user_env "$d" | sed 's/TERM=dumb/TERM=xterm-256color/')
	port=$(free_port)
	echo "$d/home/.config/apx/apx.toml" >>"$CONFIGS"
	tmux new-session -d -s "$TMUX_SESSION" -x 140 -y 50 \
		"$env $APX_BIN init; echo WIZARD-EXIT=\$? > $d/exit; sleep 60"
	wait_screen "Which providers should the gateway serve?"
	wait_screen "Echo"
	# Cursor on OpenAI: select it; down to Ollama (8th) and select it; Echo
	# is preselected because no provider key is in the environment.
	tmux send-keys -t "$TMUX_SESSION" Space Down Down Down Down Down Down Down Space Enter
	wait_screen "Providers · OpenAI, Ollama (local), Echo"
	wait_screen "OpenAI API key (OPENAI_API_KEY"
	tmux send-keys -t "$TMUX_SESSION" "sk-typed-in-secret" Enter
	wait_screen "OpenAI model"
	tmux send-keys -t "$TMUX_SESSION" Enter
	wait_screen "Ollama (local) base URL"
	tmux send-keys -t "$TMUX_SESSION" Enter
	wait_screen "Ollama (local) model"
	tmux send-keys -t "$TMUX_SESSION" "qwen2.5" Enter
	wait_screen "Port for the gateway"
	tmux send-keys -t "$TMUX_SESSION" "$port" Enter
	wait_screen "Request capture"
	tmux send-keys -t "$TMUX_SESSION" Down Down Enter
	wait_screen "Request capture · userspace"
	wait_screen "Keep request records for"
	tmux send-keys -t "$TMUX_SESSION" "7d" Enter
	wait_screen "Next: apx start"
	[ -f "$d/exit" ] || sleep 0.5
	expect "$d/exit" "WIZARD-EXIT=0"
	tmux capture-pane -p -t "$TMUX_SESSION" >"$d/screen"
	if grep -qF "sk-typed-in-secret" "$d/screen"; then fail "the API key was echoed on screen"; fi
	tmux kill-session -t "$TMUX_SESSION"

	local config="$d/home/.config/apx/apx.toml" envfile="$d/home/.config/apx/apx.env"
	expect "$config" "[providers.openai]"
	expect "$config" "[providers.ollama]"
	expect "$config" "[providers.echo]"
	expect "$config" 'name = "qwen2.5"'
	expect "$config" "listen = \"127.0.0.1:$port\""
	expect "$config" 'capture = "userspace"'
	expect "$config" 'retention = "7d"'
	expect "$envfile" 'OPENAI_API_KEY="sk-typed-in-secret"'
	if grep -qF "sk-typed-in-secret" "$config"; then fail "the key is in the config"; fi
	[ "$(mode_of "$envfile")" = 600 ] || fail "apx.env is not 0600"
	$env "$APX_BIN" check >/dev/null || fail "the wizard's config does not load"
}

# ---- runner ------------------------------------------------------------------

PASSED=0
FAILED=0
run_test() {
	local name=$1 rc t0 t1
	t0=$(date +%s%N)
	set +e
	(set -e; "$name") >"$WORK/$name.log" 2>&1
	rc=$?
	set -e
	t1=$(date +%s%N)
	if [ "$rc" = 0 ]; then
		PASSED=$((PASSED + 1))
		echo "ok    $name ($(((t1 - t0) / 1000000)) ms)"
		grep -h "^time from" "$WORK/$name.log" || true
	else
		FAILED=$((FAILED + 1))
		echo "FAIL  $name"
		sed 's/^/      /' "$WORK/$name.log"
	fi
}

run_test test_install_fresh_rerun_uninstall
run_test test_install_from_release_layout_and_pipe
run_test test_init_wizard_in_a_terminal
if [ "$STATIC" = 1 ]; then
	if bash tests/cli/static.sh; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]

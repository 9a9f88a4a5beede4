#!/bin/sh
# apx installer.
#
#   curl -fsSL <release>/install.sh | sh      # from a release (binary next to it)
#   ./install.sh                               # from a release archive or a source checkout
#   ./install.sh --uninstall [--purge]
#
# Installs the `apx` binary (a release artifact next to this script when there
# is one, else built from the checkout with cargo), then runs `apx doctor`,
# `apx init` (asking questions only on a terminal) and `apx start`, and prints
# the command to try next. Running it again upgrades the binary in place and
# keeps the config. POSIX sh; every failure says what to do.

set -eu

usage() {
	cat <<'EOF'
Usage: install.sh [OPTIONS] [-- APX_INIT_OPTIONS...]

Options:
  --prefix DIR     install to DIR/bin (default: /usr/local/bin as root,
                   else ~/.local/bin)
  --binary FILE    install this apx binary instead of finding or building one
                   (also: APX_BINARY=FILE)
  --from-source    build from the source checkout even if a binary is present
  --no-init        only install the binary (no doctor, init or start)
  --no-start       install and initialise, but do not start the gateway
  -y, --yes        never ask: `apx init --yes` even on a terminal
  --uninstall      stop the gateway and remove what this script installed;
                   the config, secrets, keys and logs are kept
  --purge          with --uninstall: also remove the config, secrets, keys
                   and logs
  -h, --help       this help

Anything after `--` goes to `apx init`, e.g.
  ./install.sh -- --provider openai --port 9000

Environment: APX_CONFIG picks the config file, APX_STATE_DIR the state
directory for a new config; NO_COLOR turns colours off.
EOF
}

# ---- output -----------------------------------------------------------------

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ] && [ "${TERM:-}" != "dumb" ]; then
	BOLD=$(printf '\033[1m') GREEN=$(printf '\033[32m') YELLOW=$(printf '\033[33m')
	RED=$(printf '\033[31m') RESET=$(printf '\033[0m')
else
	BOLD='' GREEN='' YELLOW='' RED='' RESET=''
fi

step() { printf '%s==>%s %s\n' "$BOLD" "$RESET" "$*"; }
ok() { printf '%s✓%s %s\n' "$GREEN" "$RESET" "$*"; }
warn() { printf '%swarning:%s %s\n' "$YELLOW" "$RESET" "$*" >&2; }
# die MESSAGE [HINT]
die() {
	printf '%serror:%s %s\n' "$RED" "$RESET" "$1" >&2
	if [ $# -gt 1 ]; then printf 'hint: %s\n' "$2" >&2; fi
	exit 1
}

# ---- arguments --------------------------------------------------------------

PREFIX=''
BINARY="${APX_BINARY:-}"
FROM_SOURCE=0
NO_INIT=0
NO_START=0
YES=0
UNINSTALL=0
PURGE=0

need_value() {
	if [ $# -lt 2 ] || [ -z "$2" ]; then
		die "$1 needs a value" "see ./install.sh --help"
	fi
}

while [ $# -gt 0 ]; do
	case "$1" in
	--prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
	--prefix=*) PREFIX=${1#--prefix=}; shift ;;
	--binary) need_value "$@"; BINARY=$2; shift 2 ;;
	--binary=*) BINARY=${1#--binary=}; shift ;;
	--from-source) FROM_SOURCE=1; shift ;;
	--no-init) NO_INIT=1; shift ;;
	--no-start) NO_START=1; shift ;;
	-y | --yes) YES=1; shift ;;
	--uninstall) UNINSTALL=1; shift ;;
	--purge) PURGE=1; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	*) die "unknown option: $1" "see ./install.sh --help" ;;
	esac
done
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
	die "--purge only goes with --uninstall" "./install.sh --uninstall --purge"
fi

# ---- where things are -------------------------------------------------------

OS=$(uname -s)
case "$OS" in
Linux) ;;
*) die "apx runs on Linux; this is $OS" "run it on a Linux host or VM" ;;
esac
ARCH=$(uname -m)
case "$ARCH" in
x86_64 | amd64) ARCH=x86_64 ;;
aarch64 | arm64) ARCH=aarch64 ;;
*) die "no apx build for the $ARCH architecture" "apx is built for x86_64 and aarch64 Linux" ;;
esac

SCRIPT_DIR=''
case "$0" in
*install.sh)
	if [ -f "$0" ]; then SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd); fi
	;;
esac

if [ -n "$PREFIX" ]; then
	BIN_DIR="$PREFIX/bin"
elif [ "$(id -u)" = 0 ]; then
	BIN_DIR=/usr/local/bin
else
	[ -n "${HOME:-}" ] || die "HOME is not set" "set HOME, or pass --prefix DIR"
	BIN_DIR="$HOME/.local/bin"
fi
APX="$BIN_DIR/apx"

systemd_is_init() {
	case "${APX_SYSTEMD:-}" in
	0) return 1 ;;
	1) return 0 ;;
	esac
	[ -d /run/systemd/system ]
}

# ---- uninstall --------------------------------------------------------------

# remove_known DIR FILE... : removes the named files in DIR, then DIR if empty.
remove_known() {
	dir=$1
	shift
	[ -d "$dir" ] || return 0
	for name in "$@"; do
		for f in "$dir"/$name; do
			if [ -e "$f" ]; then rm -f "$f" && ok "removed $f"; fi
		done
	done
	rmdir "$dir" 2>/dev/null || true
}

uninstall() {
	if [ ! -x "$APX" ]; then
		warn "there is no apx at $APX (pass the --prefix you installed with)"
		exit 0
	fi
	step "stopping apx"
	"$APX" stop --force || warn "apx stop failed; the gateway may still run"
	unit=$("$APX" paths systemd_unit 2>/dev/null || true)
	if [ -n "$unit" ] && [ -f "$unit" ] && systemd_is_init; then
		if [ "$(id -u)" = 0 ]; then sc=systemctl; else sc='systemctl --user'; fi
		$sc disable --now apx.service >/dev/null 2>&1 || true
		rm -f "$unit"
		$sc daemon-reload >/dev/null 2>&1 || true
		ok "removed the systemd unit $unit"
	fi
	config=$("$APX" paths config)
	state=$("$APX" paths state_dir)
	if [ "$PURGE" = 1 ]; then
		step "removing the config, secrets, keys and logs"
		remove_known "$(dirname "$config")" "$(basename "$config")" "$(basename "$config").bak-*" \
			apx.env client.key apx.service
		remove_known "$state" '*.db' '*.db-wal' '*.db-shm' fingerprint.key apx.pid apx.log apx.log.1
	fi
	rm -f "$APX"
	ok "removed $APX"
	if [ "$PURGE" = 0 ]; then
		printf 'Kept your config (%s) and data (%s).\n' "$config" "$state"
		printf 'Remove them too with: ./install.sh --uninstall --purge\n'
	fi
	exit 0
}

[ "$UNINSTALL" = 1 ] && uninstall

# ---- find or build the binary -----------------------------------------------

build_from_source() {
	dir=$1
	command -v cargo >/dev/null 2>&1 ||
		die "building apx from source needs cargo, which is not installed" \
			"install the Rust toolchain with rustup, then run this script again"
	target=''
	if rustup target list --installed 2>/dev/null | grep -qx "$ARCH-unknown-linux-musl" &&
		command -v musl-gcc >/dev/null 2>&1; then
		target="$ARCH-unknown-linux-musl"
	fi
	step "building apx from source in $dir (the first build takes a few minutes)" >&2
	if [ -n "$target" ]; then
		(cd "$dir" && cargo build --release --locked -p apx-cli --target "$target") >&2 ||
			die "cargo build failed (see above)" "fix the error, or install a release binary with --binary FILE"
		printf '%s\n' "$dir/target/$target/release/apx"
	else
		warn "building a dynamically linked apx; for one static binary:" \
			"rustup target add $ARCH-unknown-linux-musl && apt-get install musl-tools"
		(cd "$dir" && cargo build --release --locked -p apx-cli) >&2 ||
			die "cargo build failed (see above)" "fix the error, or install a release binary with --binary FILE"
		printf '%s\n' "$dir/target/release/apx"
	fi
}

find_binary() {
	if [ -n "$BINARY" ]; then
		[ -f "$BINARY" ] || die "--binary $BINARY: no such file"
		printf '%s\n' "$BINARY"
		return
	fi
	if [ -n "$SCRIPT_DIR" ] && [ "$FROM_SOURCE" = 0 ]; then
		for candidate in "$SCRIPT_DIR/apx-$ARCH-linux" "$SCRIPT_DIR/apx"; do
			if [ -f "$candidate" ] && [ -x "$candidate" ]; then
				printf '%s\n' "$candidate"
				return
			fi
		done
	fi
	if [ -n "$SCRIPT_DIR" ] && [ -f "$SCRIPT_DIR/Cargo.toml" ] && [ -d "$SCRIPT_DIR/cli" ]; then
		build_from_source "$SCRIPT_DIR"
		return
	fi
	die "found no apx binary next to this script and no source checkout" \
		"download the release archive (binary + install.sh) and run its install.sh, or clone the repository and run ./install.sh"
}

SOURCE=$(find_binary)
"$SOURCE" --version >/dev/null 2>&1 ||
	die "$SOURCE does not run on this machine" "it may be built for another architecture; try --from-source"

# ---- install ----------------------------------------------------------------

mkdir -p "$BIN_DIR" || die "cannot create $BIN_DIR" "run as root, or choose a writable --prefix"
OLD_VERSION=''
if [ -x "$APX" ]; then OLD_VERSION=$("$APX" --version 2>/dev/null || true); fi
NEW_VERSION=$("$SOURCE" --version)
# Copy then rename: a running gateway keeps its binary, and no one ever sees
# a half-written file.
TMP="$BIN_DIR/.apx.install.$$"
cp "$SOURCE" "$TMP" || die "cannot write to $BIN_DIR" "run as root, or choose a writable --prefix"
chmod 755 "$TMP"
mv -f "$TMP" "$APX"
if [ -z "$OLD_VERSION" ]; then
	ok "installed $NEW_VERSION to $APX"
elif [ "$OLD_VERSION" = "$NEW_VERSION" ]; then
	ok "reinstalled $NEW_VERSION at $APX"
else
	ok "upgraded $OLD_VERSION → $NEW_VERSION at $APX"
fi

ON_PATH=0
case ":${PATH:-}:" in
*":$BIN_DIR:"*) ON_PATH=1 ;;
esac
if [ "$ON_PATH" = 1 ]; then RUN=apx; else RUN=$APX; fi

if [ "$NO_INIT" = 1 ]; then
	# shellcheck disable=SC2016 # $PATH is for the user to type
	[ "$ON_PATH" = 1 ] || printf 'Add %s to your PATH: export PATH="%s:$PATH"\n' "$BIN_DIR" "$BIN_DIR"
	exit 0
fi

# ---- doctor, init, start ----------------------------------------------------

step "checking this machine (apx doctor)"
if ! "$APX" doctor; then
	warn "apx doctor found problems: the fixes are listed above (continuing)"
fi

CONFIG=$("$APX" paths config)
if [ -f "$CONFIG" ]; then
	step "keeping your config at $CONFIG"
else
	step "setting up apx (apx init)"
	if [ "$YES" = 0 ] && [ -t 1 ] && (exec </dev/tty) 2>/dev/null; then
		"$APX" init "$@" </dev/tty ||
			die "apx init failed (see above)" "run \`$RUN init\` again once fixed"
	else
		"$APX" init --yes "$@" ||
			die "apx init failed (see above)" "pass init options after --, e.g. ./install.sh -- --provider openai"
	fi
fi

if [ "$NO_START" = 0 ]; then
	if "$APX" status >/dev/null 2>&1; then
		step "restarting the running gateway on the new binary"
		"$APX" restart || die "the gateway did not restart (see above)" "\`$RUN doctor\` checks what is wrong"
	else
		step "starting the gateway"
		"$APX" start || die "the gateway did not start (see above)" "\`$RUN doctor\` checks what is wrong"
	fi
fi

printf '\n%sapx is ready.%s\n' "$BOLD" "$RESET"
if [ "$ON_PATH" = 0 ]; then
	# shellcheck disable=SC2016 # $PATH is for the user to type
	printf '%s is not on your PATH; add it with:\n  export PATH="%s:$PATH"   # and in ~/.profile\n' "$BIN_DIR" "$BIN_DIR"
fi
if [ "$NO_START" = 1 ]; then
	printf 'Start it:  %s start\n' "$RUN"
fi
# The first configured provider: `apx call NAME` asks its first model.
FIRST=$(sed -n 's/^\[providers\.\([A-Za-z0-9_-]*\)\].*/\1/p' "$CONFIG" 2>/dev/null | head -n 1)
printf 'Try it:    %s call %s "Hello"\n' "$RUN" "${FIRST:-openai}"

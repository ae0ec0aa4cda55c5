# shellcheck shell=bash
# scripts/lib.sh: helpers shared by run_cluster.sh, scripts/test.sh and
# scripts/postgres.sh. Source it; do not execute it.
#
# Every message goes to stderr so that stdout stays free for machine-readable
# output (a URL, a READY line, cargo test's results).

# Name shown in front of messages: the script that sourced this file.
FASTCHAT_LOG_TAG=${FASTCHAT_LOG_TAG:-$(basename "$0")}

log_info() { printf '[%s] %s\n' "$FASTCHAT_LOG_TAG" "$*" >&2; }
log_warn() { printf '[%s] warning: %s\n' "$FASTCHAT_LOG_TAG" "$*" >&2; }
log_error() { printf '[%s] error: %s\n' "$FASTCHAT_LOG_TAG" "$*" >&2; }

# die MESSAGE...: print an error and exit 1 (EXIT traps still run).
die() {
    log_error "$*"
    exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# True when we may install Debian packages ourselves.
can_apt_install() { is_root && command -v apt-get >/dev/null 2>&1; }

# apt_install PACKAGE...: non-interactive install; runs `apt-get update`
# once per process first (a fresh container has no package lists).
_FASTCHAT_APT_UPDATED=0
apt_install() {
    if [[ $_FASTCHAT_APT_UPDATED -eq 0 ]]; then
        log_info "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        _FASTCHAT_APT_UPDATED=1
    fi
    log_info "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# ensure_cargo: make sure `cargo` is on PATH (CI shells often lack
# ~/.cargo/bin in PATH even though rustup installed it there).
ensure_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    local dir=${CARGO_HOME:-${HOME:-/root}/.cargo}/bin
    if [[ -x $dir/cargo ]]; then
        PATH=$dir:$PATH
        export PATH
        return 0
    fi
    die "cargo not found (install Rust, e.g. with rustup: https://rustup.rs)"
}

# ensure_build_deps: cargo, a C compiler, pkg-config, the OpenSSL headers and a font
# (the `openssl` crate builds against the system library). Installs what is
# missing when running as root with apt-get; otherwise explains and exits 1.
ensure_build_deps() {
    ensure_cargo
    local missing=()
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    # The tests check that every key we write loads with the openssl tool.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # The load tester draws its charts with this font (its tests draw them too).
    [[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
    if ! command -v pkg-config >/dev/null 2>&1; then
        missing+=(pkg-config libssl-dev)
    elif ! pkg-config --exists openssl; then
        missing+=(libssl-dev)
    fi
    [[ ${#missing[@]} -eq 0 ]] && return 0

    if can_apt_install; then
        apt_install "${missing[@]}"
        pkg-config --exists openssl || die "OpenSSL still not found by pkg-config after installing ${missing[*]}"
    else
        log_error "missing build dependencies: ${missing[*]}"
        log_error "install them first, e.g.: sudo apt-get install ${missing[*]}"
        exit 1
    fi
}

# tcp_port_open PORT [HOST]: true if something accepts TCP connections there.
# Uses bash's /dev/tcp, bounded by `timeout` when it is available.
tcp_port_open() {
    local port=$1 host=${2:-127.0.0.1}
    if command -v timeout >/dev/null 2>&1; then
        # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
        timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
    else
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
    fi
}

# is_uint VALUE: a non-empty string of digits.
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

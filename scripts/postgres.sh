#!/usr/bin/env bash
# scripts/postgres.sh: a private PostgreSQL instance for FastChat.
#
# Usage:
#   scripts/postgres.sh start DIR PORT   install if needed, initdb if needed, start;
#                                        prints the URL (only the URL) on stdout
#   scripts/postgres.sh stop DIR         stop it (fast shutdown); fine if not running
#   scripts/postgres.sh url DIR          print the URL
#   scripts/postgres.sh status DIR       exit 0 if running, 3 if not
#
# Layout inside DIR:
#   pg/               data directory (unless relocated, see pg.location)
#   pg.secret         superuser password (mode 0600), generated once
#   pg.port           port of the last start, used by `url`
#   pg.location       only if relocated: absolute path of the data directory
#   logs/postgres.log server log (or a symlink to it)
#
# The server listens on 127.0.0.1:PORT only, over TCP only (no Unix socket, so
# long DIR paths are no problem), with scram-sha-256 password auth for the
# superuser `fastchat`; the URL is postgres://fastchat:PASSWORD@127.0.0.1:PORT/fastchat
#
# As root, PostgreSQL runs as the `postgres` OS user. If that user cannot reach
# DIR (a parent directory is not traversable, e.g. under /root), the data
# directory goes to /var/lib/fastchat/<sha256 of DIR>/pg instead, recorded in
# DIR/pg.location. The distribution's own cluster (e.g. 15/main) is never used.
#
# Environment: PG_BINDIR overrides where the PostgreSQL binaries are looked for.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FASTCHAT_LOG_TAG=postgres.sh
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly DB_USER=fastchat
readonly DB_NAME=fastchat
readonly READY_TIMEOUT=30      # seconds to wait for the server to accept connections
readonly RELOCATE_ROOT=/var/lib/fastchat

usage() {
    sed -n '4,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# ---------------------------------------------------------------------------
# Who runs the server
# ---------------------------------------------------------------------------

# PG_USER: OS user that owns and runs the server; empty = the current user.
PG_USER=
if is_root; then
    PG_USER=postgres
fi

# as_pg CMD...: run a command as the server's OS user. From / as working
# directory, since the postgres user may not be able to access ours.
as_pg() {
    if [[ -z $PG_USER ]]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        (cd / && su "$PG_USER" -s /bin/bash -c "$(printf '%q ' "$@")")
    fi
}

# ---------------------------------------------------------------------------
# Finding (or installing) the PostgreSQL binaries
# ---------------------------------------------------------------------------

has_server_bins() {
    [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres && -x $1/pg_isready && -x $1/psql ]]
}

# find_bindir [VERSION]: print the directory holding initdb/pg_ctl/postgres.
# Order: $PG_BINDIR, the version an existing data directory was made with,
# `pg_config --bindir`, then the highest /usr/lib/postgresql/*/bin.
find_bindir() {
    local want=${1:-} dir
    if [[ -n ${PG_BINDIR:-} ]]; then
        has_server_bins "$PG_BINDIR" || die "PG_BINDIR=$PG_BINDIR does not hold the PostgreSQL server binaries"
        printf '%s\n' "$PG_BINDIR"
        return 0
    fi
    if [[ -n $want ]] && has_server_bins "/usr/lib/postgresql/$want/bin"; then
        printf '%s\n' "/usr/lib/postgresql/$want/bin"
        return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if [[ -n $dir ]] && has_server_bins "$dir"; then
            printf '%s\n' "$dir"
            return 0
        fi
    fi
    # Highest version first (sort -V understands 9.6 < 10 < 15).
    while IFS= read -r dir; do
        if has_server_bins "$dir"; then
            printf '%s\n' "$dir"
            return 0
        fi
    done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
    return 1
}

# ensure_bindir [VERSION]: like find_bindir, installing PostgreSQL when
# possible. The Debian package also creates and starts its own cluster
# ('main' on port 5432): we leave it alone and never use it.
ensure_bindir() {
    local dir
    if dir=$(find_bindir "$@"); then
        printf '%s\n' "$dir"
        return 0
    fi
    can_apt_install || die "PostgreSQL server binaries not found; install PostgreSQL (e.g. apt-get install postgresql) or set PG_BINDIR"
    log_info "PostgreSQL not found: installing it"
    apt_install postgresql
    dir=$(find_bindir "$@") || die "PostgreSQL installed but its binaries were not found under /usr/lib/postgresql"
    printf '%s\n' "$dir"
}

# ---------------------------------------------------------------------------
# Instance layout
# ---------------------------------------------------------------------------

# init_paths DIR: set DIR (absolute), PGDATA, SECRET_FILE, PORT_FILE, ...
# DIR must exist.
init_paths() {
    DIR=$(cd "$1" && pwd -P) || die "cannot access directory $1"
    SECRET_FILE=$DIR/pg.secret
    PORT_FILE=$DIR/pg.port
    LOCATION_FILE=$DIR/pg.location
    LOG_LINK=$DIR/logs/postgres.log
    if [[ -s $LOCATION_FILE ]]; then
        PGDATA=$(<"$LOCATION_FILE")
    else
        PGDATA=$DIR/pg
    fi
}

# True when the data directory has been initialised.
is_initialized() { [[ -f $PGDATA/PG_VERSION ]]; }

# Version the existing data directory was created with (e.g. 15), or empty.
data_version() {
    if is_initialized; then
        cat "$PGDATA/PG_VERSION"
    fi
}

# choose_location: on first start as root, make sure the postgres user can
# reach the data directory; relocate it when a parent is not traversable.
choose_location() {
    [[ -n $PG_USER ]] || return 0
    [[ -s $LOCATION_FILE ]] && return 0     # already decided on an earlier start
    [[ -e $PGDATA ]] && return 0            # DIR/pg exists: keep using it
    if as_pg test -x "$DIR"; then
        return 0
    fi
    local sha
    sha=$(printf '%s' "$DIR" | sha256sum | cut -c1-16)
    PGDATA=$RELOCATE_ROOT/$sha/pg
    log_warn "user $PG_USER cannot traverse $DIR (or one of its parents);"
    log_warn "the data directory goes to $PGDATA instead (recorded in $LOCATION_FILE)"
    install -d -m 0755 "$RELOCATE_ROOT"
    install -d -m 0700 -o "$PG_USER" -g "$(id -gn "$PG_USER")" "$RELOCATE_ROOT/$sha"
    # A note for whoever finds this directory later.
    printf '%s\n' "$DIR" >"$RELOCATE_ROOT/$sha/owner-dir"
    printf '%s\n' "$PGDATA" >"$LOCATION_FILE"
}

# url PORT: the connection URL (the password is hex, so URL-safe).
make_url() {
    printf 'postgres://%s:%s@127.0.0.1:%s/%s\n' "$DB_USER" "$(<"$SECRET_FILE")" "$1" "$DB_NAME"
}

# ensure_secret: generate the superuser password once (48 hex chars).
ensure_secret() {
    [[ -s $SECRET_FILE ]] && return 0
    if is_initialized; then
        die "$PGDATA is initialised but $SECRET_FILE is missing: the password is lost." \
            "Stop that instance and remove $PGDATA (or restore the secret) to start afresh."
    fi
    local secret
    secret=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    [[ ${#secret} -eq 48 ]] || die "could not generate a password"
    (umask 077 && printf '%s\n' "$secret" >"$SECRET_FILE")
    chmod 0600 "$SECRET_FILE"
}

# run_initdb: create the cluster with password auth and include our settings.
run_initdb() {
    if [[ -e $PGDATA ]] && [[ -n $(ls -A "$PGDATA") ]]; then
        die "$PGDATA exists, is not empty and holds no cluster (PG_VERSION missing); remove it by hand"
    fi
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    [[ -z $PG_USER ]] || chown "$PG_USER:" "$PGDATA"

    # initdb reads the password from a file the server user can read.
    local pwfile
    pwfile=$(mktemp)
    # shellcheck disable=SC2064  # expand now: the variable is local
    trap "rm -f '$pwfile'" EXIT
    head -n1 "$SECRET_FILE" >"$pwfile"
    [[ -z $PG_USER ]] || chown "$PG_USER" "$pwfile"

    # initdb's chatter goes to DIR/logs/initdb.log; its errors to stderr.
    mkdir -p "$DIR/logs"
    log_info "initdb $PGDATA (output in $DIR/logs/initdb.log)"
    if ! as_pg "$BINDIR/initdb" -D "$PGDATA" --username="$DB_USER" --pwfile="$pwfile" \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C >"$DIR/logs/initdb.log"; then
        die "initdb failed (see $DIR/logs/initdb.log)"
    fi
    rm -f "$pwfile"
    trap - EXIT

    # Our settings live in fastchat.conf (rewritten at every start, so the
    # port follows the command line); postgresql.conf only includes it.
    printf '\n# FastChat settings (scripts/postgres.sh)\ninclude_if_exists = %s\n' "'fastchat.conf'" |
        as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null
}

# write_settings PORT
write_settings() {
    as_pg tee "$PGDATA/fastchat.conf" >/dev/null <<EOF
# Written by scripts/postgres.sh at every start: edits here are lost.
listen_addresses = '127.0.0.1'
port = $1
unix_socket_directories = ''       # TCP only
max_connections = 200
shared_buffers = 128MB
password_encryption = 'scram-sha-256'
fsync = on
synchronous_commit = on
EOF
}

# prepare_log: print the path pg_ctl should write the server log to.
# Normally DIR/logs/postgres.log itself (owned by the server user); when that
# user cannot write there, a file in the data directory plus a symlink.
prepare_log() {
    mkdir -p "$DIR/logs"
    if [[ -n $PG_USER ]]; then
        if [[ ! -L $LOG_LINK ]]; then
            touch "$LOG_LINK"
            chown "$PG_USER:" "$LOG_LINK"
            chmod 0640 "$LOG_LINK"
        fi
        if ! as_pg test -w "$LOG_LINK"; then
            local target=$PGDATA/postgres.log
            ln -sfn "$target" "$LOG_LINK"
            printf '%s\n' "$target"
            return 0
        fi
    fi
    printf '%s\n' "$LOG_LINK"
}

is_running() { as_pg "$BINDIR/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; }

# show_log_tail FILE
show_log_tail() {
    if [[ -r $1 ]]; then
        log_error "last lines of $1:"
        tail -n 30 "$1" >&2 || true
    fi
}

# ensure_database PORT: create the `fastchat` database if it does not exist.
ensure_database() {
    local port=$1 password exists
    password=$(head -n1 "$SECRET_FILE")
    # The password goes through the environment, never the command line.
    pg_psql() {
        PGPASSWORD=$password PGCONNECT_TIMEOUT=10 \
            "$BINDIR/psql" -X -q -h 127.0.0.1 -p "$port" -U "$DB_USER" -d postgres "$@"
    }
    exists=$(pg_psql -A -t -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ||
        die "cannot connect to PostgreSQL on 127.0.0.1:$port as $DB_USER"
    if [[ $exists != 1 ]]; then
        log_info "creating database $DB_NAME"
        pg_psql -c "CREATE DATABASE $DB_NAME" >&2 || die "CREATE DATABASE $DB_NAME failed"
    fi
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

cmd_start() {
    local port=$2
    if ! is_uint "$port" || ((10#$port < 1 || 10#$port > 65535)); then
        die "invalid port: $port"
    fi
    mkdir -p "$1"
    init_paths "$1"

    BINDIR=$(ensure_bindir "$(data_version)")
    if [[ -n $PG_USER ]] && ! id "$PG_USER" >/dev/null 2>&1; then
        die "running as root but the OS user '$PG_USER' does not exist (PostgreSQL refuses to run as root)"
    fi

    choose_location
    ensure_secret
    if is_initialized && is_running; then
        local running_port
        running_port=$(cat "$PORT_FILE" 2>/dev/null || echo "$port")
        if [[ $running_port != "$port" ]]; then
            log_warn "already running on port $running_port (not $port); stop it first to change the port"
        else
            log_info "already running ($PGDATA)"
        fi
        make_url "$running_port"
        return 0
    fi

    # Something else on the port would make pg_isready lie, and our server fail.
    if tcp_port_open "$port"; then
        die "port $port on 127.0.0.1 is already in use by another process"
    fi

    is_initialized || run_initdb
    write_settings "$port"

    local logfile
    logfile=$(prepare_log)
    log_info "starting PostgreSQL ($BINDIR) on 127.0.0.1:$port, data $PGDATA, log $LOG_LINK"
    # pg_ctl -w waits for the postmaster and notices if it exits early; it
    # detaches the server (setsid), so Ctrl-C in our terminal won't reach it.
    if ! as_pg "$BINDIR/pg_ctl" start -s -D "$PGDATA" -l "$logfile" -w -t "$READY_TIMEOUT" >&2; then
        show_log_tail "$logfile"
        die "PostgreSQL did not start"
    fi

    # Then confirm it accepts TCP connections, bounded.
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2; do
        if ((SECONDS >= deadline)) || ! is_running; then
            show_log_tail "$logfile"
            die "PostgreSQL is not accepting connections on 127.0.0.1:$port after ${READY_TIMEOUT}s"
        fi
        sleep 0.5
    done

    printf '%s\n' "$port" >"$PORT_FILE"
    ensure_database "$port"
    make_url "$port"
}

cmd_stop() {
    [[ -d $1 ]] || { log_info "$1 does not exist: nothing to stop"; return 0; }
    init_paths "$1"
    if ! is_initialized; then
        log_info "no PostgreSQL data directory for $DIR: nothing to stop"
        return 0
    fi
    if ! BINDIR=$(find_bindir "$(data_version)"); then
        log_info "PostgreSQL binaries not found: nothing can be running"
        return 0
    fi
    if ! is_running; then
        log_info "not running ($PGDATA)"
        return 0
    fi
    log_info "stopping PostgreSQL ($PGDATA)"
    as_pg "$BINDIR/pg_ctl" stop -s -D "$PGDATA" -m fast -w -t 60 >&2 || die "pg_ctl stop failed"
}

cmd_url() {
    [[ -d $1 ]] || die "$1 does not exist"
    init_paths "$1"
    [[ -s $SECRET_FILE && -s $PORT_FILE ]] || die "no instance in $DIR yet (run: $0 start $1 PORT)"
    make_url "$(<"$PORT_FILE")"
}

cmd_status() {
    [[ -d $1 ]] || return 3
    init_paths "$1"
    is_initialized || return 3
    BINDIR=$(find_bindir "$(data_version)") || return 3
    is_running || return 3
}

main() {
    [[ $# -ge 1 ]] || usage
    local cmd=$1
    shift
    case $cmd in
        start) [[ $# -eq 2 ]] || usage; cmd_start "$@" ;;
        stop) [[ $# -eq 1 ]] || usage; cmd_stop "$@" ;;
        url) [[ $# -eq 1 ]] || usage; cmd_url "$@" ;;
        status) [[ $# -eq 1 ]] || usage; cmd_status "$@" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"

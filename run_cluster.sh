#!/usr/bin/env bash
# run_cluster.sh: build FastChat and run a local cluster in the foreground:
# one load balancer and N chat servers, backed by PostgreSQL.
#
# Usage: ./run_cluster.sh [--servers N] [--port P] [--data-dir DIR] [--strategy NAME]
#        ./run_cluster.sh --add-server [--data-dir DIR]
#
#   --servers N      number of chat servers (default 3)
#   --port P         balancer on 127.0.0.1:P, servers' client ports P+1..P+N (default 7000)
#   --data-dir DIR   state directory (default .fastchat next to this script)
#   --strategy NAME  balancer assignment strategy (default round-robin)
#   --add-server     ask the cluster already running in DIR to start one more
#                    server (server-K on port P+K); prints
#                    `ADDED server=server-K addr=127.0.0.1:PORT` once it accepts
#                    connections. The running script owns it and stops it with
#                    the rest.
#   -h, --help       show this help
#
# Database: $FASTCHAT_DATABASE_URL if set, otherwise a private PostgreSQL
# instance in DIR (scripts/postgres.sh, port P+432), stopped again on exit.
#
# When everything accepts connections, prints one line on stdout:
#   READY balancer=127.0.0.1:P servers=N
# All other messages go to stderr. Ctrl-C or SIGTERM stops the cluster.
#
# Files in DIR: logs/{balancer,server-I,postgres}.log, run/*.pid,
# run/database.url (mode 0600), tls/ticket.{key,pub} (made by `keygen`), and the
# cluster PKI made by `fastchat-balancer tls` on first start: tls/ca.{pem,key},
# tls/NAME.{pem,key} for the balancer and each server (keys mode 0600), and a copy of
# the CA at DIR/ca.pem for clients (`fastchat --ca DIR/ca.pem`).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FASTCHAT_LOG_TAG=run_cluster
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"

readonly READY_TIMEOUT=60   # seconds for every process to accept connections
readonly STOP_TIMEOUT=10    # seconds between SIGTERM and SIGKILL at shutdown
readonly PG_PORT_OFFSET=432 # private PostgreSQL listens on P+432

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------

SERVERS=3
PORT=7000
DATA_DIR=$REPO/.fastchat
STRATEGY=round-robin
ADD_SERVER=0

# need_value FLAG ARGC: the flag must be followed by a value.
need_value() {
    [[ $2 -ge 2 ]] || { log_error "$1 needs a value (see --help)"; exit 2; }
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --servers) need_value "$1" $#; SERVERS=$2; shift 2 ;;
        --servers=*) SERVERS=${1#*=}; shift ;;
        --port) need_value "$1" $#; PORT=$2; shift 2 ;;
        --port=*) PORT=${1#*=}; shift ;;
        --data-dir) need_value "$1" $#; DATA_DIR=$2; shift 2 ;;
        --data-dir=*) DATA_DIR=${1#*=}; shift ;;
        --strategy) need_value "$1" $#; STRATEGY=$2; shift 2 ;;
        --strategy=*) STRATEGY=${1#*=}; shift ;;
        --add-server) ADD_SERVER=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) log_error "unknown argument: $1 (see --help)"; exit 2 ;;
    esac
done

is_uint "$SERVERS" || { log_error "--servers must be a number, got '$SERVERS'"; exit 2; }
is_uint "$PORT" || { log_error "--port must be a number, got '$PORT'"; exit 2; }
SERVERS=$((10#$SERVERS))
PORT=$((10#$PORT))
if ((SERVERS < 1 || SERVERS >= PG_PORT_OFFSET)); then
    log_error "--servers must be between 1 and $((PG_PORT_OFFSET - 1))"
    exit 2
fi
if ((PORT < 1 || PORT + PG_PORT_OFFSET > 65535)); then
    log_error "--port must be between 1 and $((65535 - PG_PORT_OFFSET))"
    exit 2
fi
[[ -n $STRATEGY ]] || { log_error "--strategy must not be empty"; exit 2; }
[[ -n $DATA_DIR ]] || { log_error "--data-dir must not be empty"; exit 2; }

mkdir -p "$DATA_DIR"
DATA_DIR=$(cd "$DATA_DIR" && pwd)
RUN_DIR=$DATA_DIR/run
LOG_DIR=$DATA_DIR/logs
TLS_DIR=$DATA_DIR/tls
BIN_DIR=$REPO/target/release
mkdir -p "$RUN_DIR" "$LOG_DIR"

# --add-server: hand the request to the running script (its pid is in
# run/run_cluster.pid) with SIGUSR1, and wait for its answer in run/add-server.result.
if ((ADD_SERVER == 1)); then
    owner=$(head -n1 "$RUN_DIR/run_cluster.pid" 2>/dev/null || true)
    # Only signal a live run_cluster.sh: a stale pid may belong to anything now.
    is_uint "$owner" && kill -0 "$owner" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$owner/cmdline" 2>/dev/null | grep -q run_cluster.sh ||
        die "no run_cluster.sh is running for $DATA_DIR"
    rm -f "$RUN_DIR/add-server.result"
    kill -USR1 "$owner"
    for ((t = 0; t < (READY_TIMEOUT + 10) * 4; t++)); do
        if [[ -s $RUN_DIR/add-server.result ]]; then
            result=$(cat "$RUN_DIR/add-server.result")
            rm -f "$RUN_DIR/add-server.result"
            case $result in
                ADDED*) echo "$result"; exit 0 ;;
                *) die "$result" ;;
            esac
        fi
        sleep 0.25
    done
    die "the running cluster did not answer within $((READY_TIMEOUT + 10))s"
fi

# ---------------------------------------------------------------------------
# Process bookkeeping and shutdown
# ---------------------------------------------------------------------------

# Parallel arrays, one entry per process we started.
PROC_NAMES=()
PROC_PIDS=()
PROC_PORTS=()
PROC_ALIVE=()      # 1 while running, 0 once it exited
STARTED_PG=0       # 1 if we started the private PostgreSQL (we stop it)
SLEEP_PID=
CLEANED_UP=0

# stop_children: SIGTERM everyone still alive, wait up to STOP_TIMEOUT, then SIGKILL.
stop_children() {
    local i pid deadline remaining
    for i in "${!PROC_PIDS[@]}"; do
        [[ ${PROC_ALIVE[i]} -eq 1 ]] || continue
        kill -TERM "${PROC_PIDS[i]}" 2>/dev/null || true
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while :; do
        remaining=0
        for i in "${!PROC_PIDS[@]}"; do
            [[ ${PROC_ALIVE[i]} -eq 1 ]] || continue
            if kill -0 "${PROC_PIDS[i]}" 2>/dev/null; then
                remaining=$((remaining + 1))
            else
                PROC_ALIVE[i]=0
            fi
        done
        ((remaining > 0)) || break
        if ((SECONDS >= deadline)); then
            for i in "${!PROC_PIDS[@]}"; do
                [[ ${PROC_ALIVE[i]} -eq 1 ]] || continue
                log_warn "${PROC_NAMES[i]} (pid ${PROC_PIDS[i]}) ignored SIGTERM for ${STOP_TIMEOUT}s: SIGKILL"
                kill -KILL "${PROC_PIDS[i]}" 2>/dev/null || true
                PROC_ALIVE[i]=0
            done
            break
        fi
        sleep 0.2
    done
    # Reap them (they are our children; statuses are not interesting here).
    for pid in "${PROC_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

# cleanup: runs once, from the EXIT trap (also reached via the signal traps).
cleanup() {
    local status=$?
    ((CLEANED_UP == 0)) || return 0
    CLEANED_UP=1
    trap '' INT TERM       # a second Ctrl-C must not interrupt the shutdown
    [[ -z $SLEEP_PID ]] || kill "$SLEEP_PID" 2>/dev/null || true
    if ((${#PROC_PIDS[@]} > 0)); then
        log_info "stopping the cluster"
        stop_children
    fi
    local name
    for name in "${PROC_NAMES[@]}"; do
        rm -f "$RUN_DIR/$name.pid"
    done
    rm -f "$RUN_DIR/run_cluster.pid"
    if ((STARTED_PG == 1)); then
        if "$REPO/scripts/postgres.sh" stop "$DATA_DIR" 9>&-; then
            rm -f "$RUN_DIR/postgres.owner"
        else
            log_warn "could not stop PostgreSQL"
        fi
    fi
    if ((${#PROC_PIDS[@]} > 0 || STARTED_PG == 1)); then
        log_info "stopped"
    fi
    return "$status"
}

on_signal() {
    log_info "received $1, shutting down"
    cleanup
    exit 0
}

trap cleanup EXIT
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# is_our_binary PID: the process is alive and runs fastchat-balancer/-server.
is_our_binary() {
    local pid=$1 arg0=
    kill -0 "$pid" 2>/dev/null || return 1
    IFS= read -r -d '' arg0 <"/proc/$pid/cmdline" 2>/dev/null || true
    case ${arg0##*/} in
        fastchat-balancer | fastchat-server) return 0 ;;
        *) return 1 ;;
    esac
}

# check_stale_pidfiles: refuse to run while a previous cluster in DATA_DIR
# is alive; otherwise clear leftovers of a crashed run.
check_stale_pidfiles() {
    local f pid
    for f in "$RUN_DIR"/balancer.pid "$RUN_DIR"/server-*.pid; do
        [[ -f $f ]] || continue
        pid=$(head -n1 "$f" 2>/dev/null || true)
        if is_uint "$pid" && is_our_binary "$pid"; then
            die "$(basename "$f" .pid) from an earlier run is still running (pid $pid, $f); stop it first"
        fi
        log_info "removing stale pid file $f"
        rm -f "$f"
    done
}

# wait_balancer_sees_servers: until the balancer lists every server as live (the
# last "live servers:" line of its log since this start), so that a client can be
# placed as soon as READY is printed: listening is not enough, the balancer learns of
# a server from its first heartbeat, up to a second later.
wait_balancer_sees_servers() {
    local deadline=$((SECONDS + READY_TIMEOUT)) live i missing
    while :; do
        live=$(awk '/^==== /{l=""} /live servers: /{l=$0} END{print l}' "$LOG_DIR/balancer.log")
        live=", ${live#*live servers: }, "
        missing=()
        for ((i = 1; i <= SERVERS; i++)); do
            [[ $live == *", server-$i, "* ]] || missing+=("server-$i")
        done
        ((${#missing[@]} == 0)) && return 0
        if ! kill -0 "${PROC_PIDS[0]}" 2>/dev/null || ((SECONDS >= deadline)); then
            tail_log balancer
            die "the balancer did not list ${missing[*]} as live (see $LOG_DIR/balancer.log)"
        fi
        sleep 0.1
    done
}

# tail_log NAME: show the end of a process's log.
tail_log() {
    local log=$LOG_DIR/$1.log
    [[ -r $log ]] || return 0
    log_error "last lines of $log:"
    tail -n 30 "$log" >&2 || true
}

# launch NAME PORT CMD...: start CMD in the background, with the database URL
# in its environment (not on the command line, where `ps` would show the
# password), output appended to logs/NAME.log, pid in run/NAME.pid.
launch() {
    local name=$1 port=$2 log
    shift 2
    log=$LOG_DIR/$name.log
    printf '==== %s: starting %s\n' "$(date '+%F %T')" "$*" >>"$log"
    FASTCHAT_DATABASE_URL=$DATABASE_URL "$@" </dev/null >>"$log" 2>&1 9>&- &
    local pid=$!
    printf '%s\n' "$pid" >"$RUN_DIR/$name.pid"
    PROC_NAMES+=("$name")
    PROC_PIDS+=("$pid")
    PROC_PORTS+=("$port")
    PROC_ALIVE+=(1)
    log_info "started $name (pid $pid) on 127.0.0.1:$port, log $log"
}

start_balancer() {
    launch balancer "$PORT" "$BIN_DIR/fastchat-balancer" \
        --listen "127.0.0.1:$PORT" \
        --ticket-key "$TLS_DIR/ticket.key" \
        --tls-dir "$TLS_DIR" \
        --strategy "$STRATEGY"
}

# start_server I: chat server I on client port P+I.
start_server() {
    local i=$1 port=$((PORT + $1))
    launch "server-$i" "$port" "$BIN_DIR/fastchat-server" \
        --name "server-$i" \
        --listen "127.0.0.1:$port" \
        --peer-listen 127.0.0.1:0 \
        --tls-dir "$TLS_DIR" \
        --ticket-pubkey "$TLS_DIR/ticket.pub"
}

# wait_ready: until every process accepts TCP connections on its port.
# Fails (after showing the log) if one exits or the deadline passes.
wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT)) i pending status
    local -a ready=()
    for i in "${!PROC_PIDS[@]}"; do ready[i]=0; done
    while :; do
        pending=0
        for i in "${!PROC_PIDS[@]}"; do
            ((ready[i] == 0)) || continue
            if ! kill -0 "${PROC_PIDS[i]}" 2>/dev/null; then
                PROC_ALIVE[i]=0
                status=0
                wait "${PROC_PIDS[i]}" 2>/dev/null || status=$?
                tail_log "${PROC_NAMES[i]}"
                die "${PROC_NAMES[i]} exited during startup (status $status)"
            fi
            if tcp_port_open "${PROC_PORTS[i]}"; then
                ready[i]=1
            else
                pending=$((pending + 1))
            fi
        done
        ((pending > 0)) || return 0
        if ((SECONDS >= deadline)); then
            for i in "${!PROC_PIDS[@]}"; do
                ((ready[i] == 1)) || { tail_log "${PROC_NAMES[i]}"; log_error "${PROC_NAMES[i]} not listening on 127.0.0.1:${PROC_PORTS[i]}"; }
            done
            die "cluster not ready after ${READY_TIMEOUT}s"
        fi
        sleep 0.25
    done
}

# add_server: start server-(N+1) into the running cluster (on SIGUSR1 from
# `run_cluster.sh --add-server`), and write the outcome to run/add-server.result.
add_server() {
    local i=$((SERVERS + 1)) port idx result
    port=$((PORT + i))
    if ((i >= PG_PORT_OFFSET)); then
        result="error: no port left for server-$i"
    elif tcp_port_open "$port"; then
        result="error: port $port on 127.0.0.1 is already in use"
    elif ! "$BIN_DIR/fastchat-balancer" tls --dir "$TLS_DIR" "server-$i" >&2 9>&-; then
        result="error: could not issue a certificate for server-$i"
    else
        start_server "$i"
        SERVERS=$i
        idx=$((${#PROC_PIDS[@]} - 1))
        result="error: server-$i did not accept connections within ${READY_TIMEOUT}s (see $LOG_DIR/server-$i.log)"
        for ((t = 0; t < READY_TIMEOUT * 4; t++)); do
            if ! kill -0 "${PROC_PIDS[idx]}" 2>/dev/null; then
                result="error: server-$i exited during startup (see $LOG_DIR/server-$i.log)"
                break
            fi
            if tcp_port_open "$port"; then
                result="ADDED server=server-$i addr=127.0.0.1:$port"
                log_info "added server-$i on 127.0.0.1:$port"
                break
            fi
            sleep 0.25
        done
    fi
    printf '%s\n' "$result" >"$RUN_DIR/add-server.result.tmp"
    mv "$RUN_DIR/add-server.result.tmp" "$RUN_DIR/add-server.result"
}

# supervise: stay in the foreground; report children that die (servers may
# come and go, so this is not fatal); start a server when asked (SIGUSR1). The
# short sleep in the background keeps the signal traps responsive.
supervise() {
    local i status
    while :; do
        sleep 1 &
        SLEEP_PID=$!
        wait "$SLEEP_PID" 2>/dev/null || true
        SLEEP_PID=
        if ((ADD_REQUESTED == 1)); then
            ADD_REQUESTED=0
            add_server
        fi
        for i in "${!PROC_PIDS[@]}"; do
            ((PROC_ALIVE[i] == 1)) || continue
            kill -0 "${PROC_PIDS[i]}" 2>/dev/null && continue
            PROC_ALIVE[i]=0
            status=0
            wait "${PROC_PIDS[i]}" 2>/dev/null || status=$?
            rm -f "$RUN_DIR/${PROC_NAMES[i]}.pid"
            log_warn "${PROC_NAMES[i]} (pid ${PROC_PIDS[i]}) exited with status $status; see $LOG_DIR/${PROC_NAMES[i]}.log"
        done
    done
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

# One run_cluster.sh per data directory: hold a lock on fd 9 while we live.
# Children get `9>&-` so that none of them keeps the lock after we exit.
exec 9>"$RUN_DIR/lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
    die "another run_cluster.sh is already using $DATA_DIR"
fi

check_stale_pidfiles

# Ports must be free, otherwise the readiness check would see someone else.
for ((i = 0; i <= SERVERS; i++)); do
    if tcp_port_open $((PORT + i)); then
        die "port $((PORT + i)) on 127.0.0.1 is already in use"
    fi
done

# 1. Build.
ensure_build_deps
if [[ "${FASTCHAT_SKIP_BUILD:-}" == 1 ]]; then
  # The test suite builds once and then starts this script; a nested cargo would
  # wait on the build lock held by `cargo test`.
  log_info "FASTCHAT_SKIP_BUILD=1: using the binaries in target/release as they are"
else
  log_info "building (cargo build --release --bins)"
  (cd "$REPO" && cargo build --release --bins) >&2 9>&- || die "build failed"
fi
for bin in fastchat-balancer fastchat-server; do
    [[ -x $BIN_DIR/$bin ]] || die "$BIN_DIR/$bin missing after the build"
done

# 2. Database.
if [[ -n ${FASTCHAT_DATABASE_URL:-} ]]; then
    DATABASE_URL=$FASTCHAT_DATABASE_URL
    log_info "using the database from FASTCHAT_DATABASE_URL"
else
    # We stop the private instance on exit only if we started it, or if an
    # earlier run_cluster.sh started it and died (run/postgres.owner left
    # behind; we hold the lock, so that run is gone).
    STARTED_PG=1
    if "$REPO/scripts/postgres.sh" status "$DATA_DIR" 9>&-; then
        if [[ -f $RUN_DIR/postgres.owner ]]; then
            log_info "adopting the PostgreSQL instance left running by an earlier run"
        else
            log_info "PostgreSQL in $DATA_DIR was already running: leaving it running at exit"
            STARTED_PG=0
        fi
    fi
    # Recorded before starting: a half-started instance is stopped on exit too.
    ((STARTED_PG == 0)) || printf '%s\n' "$$" >"$RUN_DIR/postgres.owner"
    # 9>&-: the postmaster must not inherit (and keep) our lock.
    DATABASE_URL=$("$REPO/scripts/postgres.sh" start "$DATA_DIR" $((PORT + PG_PORT_OFFSET)) 9>&-) ||
        die "could not start PostgreSQL (see $LOG_DIR/postgres.log)"
fi
(umask 077 && printf '%s\n' "$DATABASE_URL" >"$RUN_DIR/database.url")
chmod 0600 "$RUN_DIR/database.url"

# 3. Keys: the ticket signing key pair, the cluster CA and one certificate per process
# (each made once; existing files are kept).
mkdir -p "$TLS_DIR"
chmod 0700 "$TLS_DIR"
if [[ ! -f $TLS_DIR/ticket.key ]]; then
    log_info "generating keys in $TLS_DIR"
    "$BIN_DIR/fastchat-balancer" keygen --dir "$TLS_DIR" >&2 9>&- || die "keygen failed"
fi
CERT_NAMES=(balancer)
for ((i = 1; i <= SERVERS; i++)); do
    CERT_NAMES+=("server-$i")
done
"$BIN_DIR/fastchat-balancer" tls --dir "$TLS_DIR" "${CERT_NAMES[@]}" >&2 9>&- ||
    die "making the cluster certificates failed"
cp "$TLS_DIR/ca.pem" "$DATA_DIR/ca.pem"

# 4, 5. Balancer, then the servers.
start_balancer
for ((i = 1; i <= SERVERS; i++)); do
    start_server "$i"
done

# 6, 7. Ready.
wait_ready
wait_balancer_sees_servers
log_info "cluster ready: balancer 127.0.0.1:$PORT, servers 127.0.0.1:$((PORT + 1))..$((PORT + SERVERS)); Ctrl-C to stop"
echo "READY balancer=127.0.0.1:$PORT servers=$SERVERS"

# 8. Foreground until SIGINT/SIGTERM; SIGUSR1 asks for one more server.
printf '%s\n' "$$" >"$RUN_DIR/run_cluster.pid"
ADD_REQUESTED=0
trap 'ADD_REQUESTED=1' USR1
supervise

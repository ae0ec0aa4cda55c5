#!/usr/bin/env bash
# tests/bench.sh: the standard benchmark set against a fresh cluster, written up in
# docs/PERFORMANCE.md (machine, date, commit, every figure beside its target, the
# baseline and the ratio, the charts). Not part of the test command.
#
# Usage: tests/bench.sh [--quick]
#   --quick   short runs and few clients: checks the script, not the machine.
# Environment:
#   BENCH_CONNECTIONS  idle clients in the `connections` scenario (default 1000)
#   BENCH_PORT         the balancer's port (default 7600; servers on the next ones)
#
# The figures go to docs/perf/*.json, the charts to docs/perf/*.png. Everything
# after the "hand-written" marker in docs/PERFORMANCE.md (the profile and its
# reading) is kept as it is.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FASTCHAT_LOG_TAG=bench.sh
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
exec </dev/null
cd "$REPO"

QUICK=0
[[ ${1:-} == --quick ]] && QUICK=1
CONNECTIONS=${BENCH_CONNECTIONS:-1000}
PORT=${BENCH_PORT:-7600}
OUT=$REPO/docs/perf
DOC=$REPO/docs/PERFORMANCE.md
MARKER='<!-- hand-written below: tests/bench.sh keeps it -->'

# The commit the binaries are built from (before this script rewrites docs/perf/).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"

ensure_build_deps
log_info "building (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins
LT=$REPO/target/release/fastchat-loadtest

# Thousands of sockets and threads: raise the descriptor limit where allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

WORK=$(mktemp -d /tmp/fastchat-bench.XXXXXX)
CLUSTER_PID=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [[ -n $CLUSTER_PID ]] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
        kill -TERM "$CLUSTER_PID" 2>/dev/null || true
        wait "$CLUSTER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log_info "starting a fresh cluster of 3 servers (balancer on port $PORT)"
./run_cluster.sh --servers 3 --port "$PORT" --data-dir "$WORK/cluster" >"$WORK/cluster.out" 2>&1 &
CLUSTER_PID=$!
for _ in $(seq 1 240); do
    grep -q '^READY' "$WORK/cluster.out" && break
    kill -0 "$CLUSTER_PID" 2>/dev/null || die "run_cluster.sh ended: $(tail -5 "$WORK/cluster.out")"
    sleep 0.5
done
grep -q '^READY' "$WORK/cluster.out" || die "the cluster did not start in 120 s"

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.png
CLUSTER=(--balancer "127.0.0.1:$PORT" --ca "$WORK/cluster/ca.pem" --data-dir "$WORK/cluster")
# Users are reused across scenarios (bench-0, bench-1...), their keys cached here.
REUSE=(--users bench --homes "$WORK/homes")

if ((QUICK)); then
    SECS=3 WARM=1 MANY=60 GROUPS_OF=20 FILE=20M QUEUED=10000 CONNECTIONS=100
else
    SECS=10 WARM=2 MANY=1000 GROUPS_OF=20 FILE=100M QUEUED=100000
fi

# run NAME ARGS...: one scenario, its report in docs/perf/NAME.json, its charts
# beside it; bounded in time. A failure is logged, and the others still run.
run() {
    local name=$1
    shift
    log_info "scenario $name: fastchat-loadtest $*"
    if ! timeout --foreground "$LIMIT" "$LT" "$@" --out "$OUT/$name.json" --plot "$WORK/plots" \
        >"$WORK/$name.log" 2>&1; then
        log_warn "scenario $name failed: $(tail -3 "$WORK/$name.log")"
    fi
    tail -n 20 "$WORK/$name.log" | grep -v $'\r' | sed "s/^/[$name] /" >&2 || true
    # The chart names carry the scenario; keep them under the run's name.
    for png in "$WORK"/plots/*.png; do
        [[ -e $png ]] || continue
        mv "$png" "$OUT/$name-${png##*-}"
    done
}

# Each scenario is stopped after 20 minutes; logging thousands of users in costs about
# 0.2 s of CPU each (scrypt on both sides, an RSA key for a new one), so `connections`
# gets that on top.
LIMIT=1200
# Each idle client is a reader and a writer thread on each side: at 10,000 clients that
# is more thread ids than the default kernel.pid_max (32768) allows, and more mappings
# than one process may have (vm.max_map_count 65530, two per thread stack). As root,
# raise them for the run (they are not restored: both are limits, not behaviour).
raise_limit() {
    local key=$1 want=$2 have
    have=$(sysctl -n "$key" 2>/dev/null || echo 0)
    ((have >= want)) && return 0
    if sysctl -qw "$key=$want" 2>/dev/null; then
        log_info "raised $key from $have to $want for $CONNECTIONS connections"
    else
        log_warn "$key is $have; $CONNECTIONS connections may need $want (run as root to raise it)"
    fi
}
if ((CONNECTIONS > 3000)); then
    raise_limit kernel.pid_max $((CONNECTIONS * 6 + 10000))
    raise_limit kernel.threads-max $((CONNECTIONS * 6 + 10000))
    raise_limit vm.max_map_count $((CONNECTIONS * 8 + 65530))
fi

# First, on the fresh servers: memory growth per connection is only visible on a heap
# that earlier scenarios have not already grown (it signs the users up, too).
LIMIT=$((1200 + CONNECTIONS / 4)) run connections connections --clients "$CONNECTIONS" --probes 200 \
    "${CLUSTER[@]}" "${REUSE[@]}"
run baseline baseline dm --clients 100 --window 16 --duration "$SECS" --warmup "$WARM"
run dm dm --clients 100 --window 16 --duration "$SECS" --warmup "$WARM" "${CLUSTER[@]}" "${REUSE[@]}"
run dm-open dm --clients "$MANY" --sweep 2500,5000,10000 --duration "$SECS" --warmup "$WARM" \
    "${CLUSTER[@]}" "${REUSE[@]}"
# The ceiling for the open loop: the relay with as many clients at the same rates.
run baseline-open baseline dm --clients "$MANY" --sweep 2500,5000,10000 --duration "$SECS" \
    --warmup "$WARM"
run group group --clients "$MANY" --group-size "$GROUPS_OF" --rate 2000 --duration "$SECS" \
    --warmup "$WARM" "${CLUSTER[@]}" "${REUSE[@]}"
# Its ceiling: the relay fanning out the same groups at the same rate.
run baseline-group baseline group --clients "$MANY" --group-size "$GROUPS_OF" --rate 2000 \
    --duration "$SECS" --warmup "$WARM"
run file file --clients 2 --file-size "$FILE" --duration 0 "${CLUSTER[@]}"
run offline offline --clients 11 --messages "$QUEUED" --window 256 "${CLUSTER[@]}"
run login login --clients 8 --duration "$SECS" "${CLUSTER[@]}" "${REUSE[@]}"

# The write-up.
log_info "writing $DOC"
kept=
if [[ -f $DOC ]]; then
    grep -qF "$MARKER" "$DOC" || die "$DOC has no '$MARKER' line: the hand-written part would be lost"
    kept=$(awk -v m="$MARKER" 'found { print } $0 == m { found = 1 }' "$DOC")
fi
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
table=$("$LT" summary "$OUT") || table="(no reports: every scenario failed)"
{
    echo "# Performance"
    echo
    echo "Written by \`tests/bench.sh\`$( ((QUICK)) && echo ' --quick (short runs: not the standard figures)')."
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Commit: $commit"
    echo "- Machine: $(nproc) cores ($cpu), $mem, Linux $(uname -r)"
    echo "- Set-up: 3 servers, the balancer, PostgreSQL and the load tester on this one machine,"
    echo "  all on loopback; TLS 1.3 on every link and end-to-end encryption on (the real client"
    echo "  library, as \`fastchat\` uses it). Release build. The baseline is the load tester's"
    echo "  built-in relay (plain TCP, the same threading, no crypto, no database), run first."
    echo
    echo "## Figures"
    echo
    echo "$table"
    echo
    echo "Raw reports: [docs/perf/](perf/) (one JSON per scenario, as \`--out\` writes it)."
    echo
    echo "## Charts"
    echo
    for png in "$OUT"/*.png; do
        [[ -e $png ]] || continue
        name=$(basename "$png" .png)
        echo "![$name](perf/$name.png)"
        echo
    done
    echo "$MARKER"
    if [[ -n $kept ]]; then
        echo "$kept"
    fi
} >"$DOC.new"
mv "$DOC.new" "$DOC"
log_info "done: $DOC"

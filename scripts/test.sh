#!/usr/bin/env bash
# scripts/test.sh: build the release binaries and run the whole test suite.
#
# Usage: ./scripts/test.sh [TEST-BINARY ARGS...]
#   Extra arguments go to the test binaries (after cargo's `--`), e.g. a
#   test-name filter or --nocapture.
#
# Database: $FASTCHAT_TEST_DATABASE_URL if set (a superuser URL: each test
# creates and drops its own database); otherwise a private PostgreSQL in
# .fastchat-test/ on port 54329 (scripts/postgres.sh), stopped at exit.
#
# Works unattended (CI=true, no stdin, as root, fresh clone). The exit status
# is cargo test's; CI reads cargo test's own summary lines.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FASTCHAT_LOG_TAG=test.sh
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"

readonly TEST_PG_DIR=$REPO/.fastchat-test
readonly TEST_PG_PORT=54329

# Nothing here reads stdin; make sure no child inherits a closed or
# interactive one.
exec </dev/null

cd "$REPO"

# 1. Build the binaries the tests start.
ensure_build_deps
log_info "building (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins

# 2. Database.
STARTED_PG=0
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if ((STARTED_PG == 1)); then
        "$REPO/scripts/postgres.sh" stop "$TEST_PG_DIR" || log_warn "could not stop the test PostgreSQL"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z ${FASTCHAT_TEST_DATABASE_URL:-} ]]; then
    STARTED_PG=1   # also stops a half-started instance
    FASTCHAT_TEST_DATABASE_URL=$("$REPO/scripts/postgres.sh" start "$TEST_PG_DIR" "$TEST_PG_PORT") ||
        die "could not start the test PostgreSQL (see $TEST_PG_DIR/logs/postgres.log)"
else
    log_info "using the database from FASTCHAT_TEST_DATABASE_URL"
fi
export FASTCHAT_TEST_DATABASE_URL
export FASTCHAT_BIN_DIR=$REPO/target/release

# 3. Tests; our exit status is cargo's (the EXIT trap still stops PostgreSQL).
log_info "running cargo test --release --workspace -- --test-threads 2 $*"
status=0
cargo test --release --workspace -- --test-threads 2 "$@" || status=$?
exit "$status"

#!/usr/bin/env bash
# The project's test command (README): all Rust tests of the workspace, then the release binary
# and a crate built from the README's template, end to end with the official Python MCP SDK
# (tests/e2e_python). Run from anywhere; works in the repo root.
#
# Needs: the Rust toolchain, the PostgreSQL server binaries (initdb, pg_ctl, postgres; installed
# with apt-get when missing and this runs as root on Debian or Ubuntu), python3 (3.11+) with the
# venv module, and access to PyPI.
# The virtualenv lives at target/e2e-venv and is reused between runs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=target/e2e-venv
SERVER_BIN=target/release/mcp-server-stage0

heading() {
    printf '\n==> %s\n' "$*"
}

# The folder of the PostgreSQL server binaries, searched like tests/common/postgres.rs does:
# STAGE0_PG_BIN, then PATH, then the highest /usr/lib/postgresql/<version>/bin (Debian, Ubuntu),
# then the usual other places. Prints nothing when there is none.
find_pg_bin() {
    local dir
    if [ -n "${STAGE0_PG_BIN:-}" ]; then
        dir="$STAGE0_PG_BIN"
    elif dir="$(command -v initdb)"; then
        dir="$(dirname "$dir")"
    else
        dir="$(for d in /usr/lib/postgresql/*/bin; do
            if [ -x "$d/initdb" ]; then echo "$d"; fi
        done | sort -V | tail -n 1)"
        for fallback in /usr/local/pgsql/bin /opt/homebrew/bin /usr/local/bin; do
            [ -z "$dir" ] && [ -x "$fallback/initdb" ] && dir="$fallback"
        done
    fi
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
        echo "$dir"
    fi
}

heading "PostgreSQL server binaries (STAGE0_PG_BIN)"
# The PostgreSQL tests start throw-away clusters; without a server they fail, so CI must have one.
PG_BIN="$(find_pg_bin)"
if [ -z "$PG_BIN" ] && [ -z "${STAGE0_PG_BIN:-}" ] && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
    echo "none found; apt-get install postgresql"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }; then
        echo "apt-get install postgresql failed" >&2
    fi
    PG_BIN="$(find_pg_bin)"
fi
if [ -z "$PG_BIN" ] && [ -n "${STAGE0_PG_BIN:-}" ]; then
    echo "STAGE0_PG_BIN=$STAGE0_PG_BIN holds no initdb, pg_ctl and postgres;" \
        "point it at the bin folder of a PostgreSQL server installation" >&2
    exit 1
elif [ -z "$PG_BIN" ]; then
    echo "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in" \
        "/usr/lib/postgresql/*/bin: install them (apt-get install postgresql," \
        "brew install postgresql) or set STAGE0_PG_BIN to their folder" >&2
    exit 1
fi
export STAGE0_PG_BIN="$PG_BIN"
echo "$STAGE0_PG_BIN: $("$STAGE0_PG_BIN/postgres" --version)"

heading "cargo test --workspace --locked"
cargo test --workspace --locked

heading "cargo build --release --locked --bin mcp-server-stage0"
cargo build --release --locked --bin mcp-server-stage0

heading "the README's template, built as a new crate (target/template)"
# The crate lives outside the repository, as a reuser's would; its build is cached in
# target/template. The workspace's lock file keeps it on the versions the workspace tested.
TEMPLATE_CRATE="$(mktemp -d)"
trap 'rm -rf "$TEMPLATE_CRATE"' EXIT
"$PYTHON" scripts/template_crate.py "$TEMPLATE_CRATE"
cp Cargo.lock "$TEMPLATE_CRATE/"
CARGO_TARGET_DIR="$PWD/target/template" cargo build --manifest-path "$TEMPLATE_CRATE/Cargo.toml"

heading "python virtualenv ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p target
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r tests/e2e_python/requirements.txt

heading "python MCP SDK end-to-end tests (tests/e2e_python)"
# pytest exits 5 when no tests were collected; with set -e that fails this script too.
STAGE0_SERVER_BIN="$SERVER_BIN" STAGE0_TEMPLATE_BIN=target/template/debug/template-check \
    "$VENV/bin/python" -m pytest tests/e2e_python -q

#!/usr/bin/env bash
# The project's test command (README): all Rust tests of the workspace, then the release binary
# and a crate built from the README's template, end to end with the official Python MCP SDK
# (tests/e2e_python). Run from anywhere; works in the repo root.
#
# Needs: the Rust toolchain, python3 (3.11+) with the venv module, and access to PyPI.
# The virtualenv lives at target/e2e-venv and is reused between runs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=target/e2e-venv
SERVER_BIN=target/release/mcp-server-stage0

heading() {
    printf '\n==> %s\n' "$*"
}

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

#!/usr/bin/env bash
# The project's test command (README): all Rust tests, then the release binary end to end
# with the official Python MCP SDK (tests/e2e_python). Run from anywhere; works in the repo root.
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

heading "python virtualenv ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p target
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r tests/e2e_python/requirements.txt

heading "python MCP SDK end-to-end tests (tests/e2e_python)"
# pytest exits 5 when no tests were collected; with set -e that fails this script too.
STAGE0_SERVER_BIN="$SERVER_BIN" "$VENV/bin/python" -m pytest tests/e2e_python -q

"""This server beside the TypeScript original, one client, one run (BENCHMARKS.md, issue 17).

    python3 benches/original.py ORIGINAL_DIST_INDEX_JS [SERVER_BINARY]

ORIGINAL_DIST_INDEX_JS is the original's built entry point (`node dist/index.js` after `npm ci`
and `npx tsc` in a checkout of Starlight143/mcp-server-stage0-authorization; nothing of it is
kept in this repository). SERVER_BINARY defaults to target/release/mcp-server-stage0.

One Python line client writes a JSON-RPC line to the server's stdin and reads the answer line
from its stdout, sequentially: `initialize`, then 300 warm-up and 3,000 timed
`check-authorization` calls that the simulator (and the original's simulator) allows. Each
configuration runs three rounds, alternated, and the table gives the median round: p50, p99 and
calls/s. `cat` is the floor: the same client against a process that echoes each line back, so
"server's own" is the p50 above that floor. Neither server has an API key (simulator mode).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WARM_UP, TIMED, ROUNDS = 300, 3_000, 3

INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "bench", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def call(i: int) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
        "name": "check-authorization", "arguments": {
            "goal": "Summarise the quarterly report", "sideEffects": [],
            "successCriteria": ["A summary exists"]}}}) + "\n"


def run(command: list[str], env: dict[str, str], echo: bool) -> tuple[float, float, float]:
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
    assert process.stdin and process.stdout
    if not echo:
        process.stdin.write(json.dumps(INITIALIZE) + "\n")
        process.stdin.flush()
        process.stdout.readline()
        process.stdin.write(json.dumps(INITIALIZED) + "\n")
        process.stdin.flush()
    times = []
    for i in range(1, WARM_UP + TIMED + 1):
        line = call(i)
        started = time.perf_counter()
        process.stdin.write(line)
        process.stdin.flush()
        answer = process.stdout.readline()
        elapsed = time.perf_counter() - started
        if not echo and "Decision: GO" not in answer:
            raise SystemExit(f"{command[0]}: not an ALLOW: {answer[:300]}")
        if i > WARM_UP:
            times.append(elapsed)
    process.stdin.close()
    process.wait(timeout=30)
    times.sort()
    return (statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6,
            len(times) / sum(times))


def main() -> None:
    original = sys.argv[1]
    server = sys.argv[2] if len(sys.argv) > 2 else "target/release/mcp-server-stage0"
    base = {"PATH": os.environ["PATH"], "RUST_LOG": "warn"}
    with tempfile.TemporaryDirectory() as folder:
        configurations = {
            "cat (the floor)": (["cat"], base, True),
            "the original": (["node", original], base, False),
            "this server, audit log off": ([server], {**base, "STAGE0_AUDIT_LOG": "off"}, False),
            "this server as installed (audit log on, fsync)": (
                [server], {**base, "STAGE0_AUDIT_LOG": os.path.join(folder, "audit.jsonl")},
                False),
        }
        rounds: dict[str, list[tuple[float, float, float]]] = {name: [] for name in configurations}
        for _ in range(ROUNDS):
            for name, (command, env, echo) in configurations.items():
                rounds[name].append(run(command, env, echo))
    print(f"load after: {os.getloadavg()}")
    print("| configuration | p50 (µs) | p99 (µs) | calls/s |")
    print("|---|---:|---:|---:|")
    floor = None
    for name, results in rounds.items():
        p50, p99, rate = sorted(results)[len(results) // 2]
        floor = p50 if floor is None else floor
        print(f"| {name} | {p50:,.0f} | {p99:,.0f} | {rate:,.0f} |")
    print()
    for name, results in rounds.items():
        p50 = sorted(results)[len(results) // 2][0]
        print(f"{name}: {p50 - floor:,.0f} µs above the floor")


if __name__ == "__main__":
    main()

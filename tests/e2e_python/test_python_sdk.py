"""End-to-end test: the official Python MCP SDK drives the release binary over stdio.

The server is started with `stdio_client` + `ClientSession`, exactly as a third-party MCP client
would. It runs with no `STAGE0_API_KEY` (so the deterministic simulator of `docs/contract.md` §4
answers) and with a fresh temporary directory as its working directory (so no `.env` is read).

The binary is `$STAGE0_SERVER_BIN`, default `target/release/mcp-server-stage0` relative to the
repository root; a relative path is resolved against the repository root.

Written against `mcp` 2.x (see requirements.txt): result fields are snake_case (`is_error`,
`structured_content`). The SDK validates `structured_content` of every non-error result against
the tool's `outputSchema`; blocked results (`is_error: true`) are validated explicitly here with the
SDK's own `ClientSession.validate_tool_result`, so every result shape is checked against the
schema the server declares.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import rfc8785
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, get_default_environment, stdio_client

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = "target/release/mcp-server-stage0"

# Every wait in a test (spawn, handshake, each request, shutdown) is bounded by this.
TIMEOUT_SECONDS = 30

EXPECTED_TOOLS = {
    "research-topic",
    "publish-content",
    "deploy-changes",
    "managed-deploy",
    "retry-workflow",
    "check-authorization",
}

VERDICT_FIELDS = {
    "tool",
    "executed",
    "mode",
    "verdict",
    "decision",
    "reason",
    "request_id",
    "policy_version",
}


def server_bin() -> Path:
    path = Path(os.environ.get("STAGE0_SERVER_BIN", DEFAULT_BIN))
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        pytest.fail(
            f"server binary not found at {path}; build it with "
            "`cargo build --release --locked --bin mcp-server-stage0` or set STAGE0_SERVER_BIN"
        )
    return path


@asynccontextmanager
async def connect(
    elicitation_callback: Any = None,
    audit_log: Path | None = None,
) -> AsyncIterator[tuple[ClientSession, types.InitializeResult]]:
    """Start the server in a temp dir, without an API key, and complete the MCP handshake.

    With `elicitation_callback`, the client declares elicitation and answers with it. The audit
    log is `audit_log`, or a file in the temp dir."""
    # `stdio_client` passes the server only a small safe subset of this process's environment
    # (PATH, HOME, ...) plus `env`, so a STAGE0_API_KEY or STAGE0_BASE_URL set around the test
    # cannot reach the server. RUST_LOG keeps its stderr quiet; stdout carries JSON-RPC only.
    inherited = get_default_environment()
    assert not [key for key in inherited if key.startswith("STAGE0_")], sorted(inherited)
    with tempfile.TemporaryDirectory(prefix="stage0-e2e-") as cwd:
        # The audit log goes to the temp dir, never to the developer's own default log.
        log = audit_log or Path(cwd) / "audit.jsonl"
        env = {"RUST_LOG": "warn", "STAGE0_AUDIT_LOG": str(log)}
        params = StdioServerParameters(command=str(server_bin()), args=[], env=env, cwd=cwd)
        async with stdio_client(params) as (read_stream, write_stream):
            async with ClientSession(
                read_stream,
                write_stream,
                read_timeout_seconds=TIMEOUT_SECONDS,
                elicitation_callback=elicitation_callback,
            ) as session:
                init = await session.initialize()
                yield session, init


def text_of(result: types.CallToolResult) -> str:
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    assert texts, f"no text content in {result!r}"
    return "\n".join(texts)


def structured(result: types.CallToolResult) -> dict[str, Any]:
    content = result.structured_content
    assert isinstance(content, dict), f"structured_content missing: {result!r}"
    missing = VERDICT_FIELDS - content.keys()
    assert not missing, f"structured_content lacks {sorted(missing)}: {content!r}"
    assert content["mode"] == "simulator", content
    assert content["policy_version"] == "simulated-v1.0.0", content
    assert isinstance(content["request_id"], str) and content["request_id"], content
    return content


async def call(session: ClientSession, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    result = await session.call_tool(name, arguments)
    assert isinstance(result, types.CallToolResult), f"unexpected result type: {result!r}"
    # The SDK validates non-error results itself; validate blocked ones too, against the same
    # outputSchema the server declared in tools/list.
    await session.validate_tool_result(name, result)
    return result


async def test_initialize_and_list_tools() -> None:
    with anyio.fail_after(TIMEOUT_SECONDS):
        async with connect() as (session, init):
            assert init.server_info.name == "stage0-authorization-server"
            assert session.server_info is not None
            assert session.server_info.name == "stage0-authorization-server"
            assert init.capabilities.tools is not None

            listing = await session.list_tools()
            names = {tool.name for tool in listing.tools}
            assert names == EXPECTED_TOOLS
            assert listing.next_cursor is None
            for tool in listing.tools:
                assert tool.description, tool.name
                assert tool.input_schema.get("type") == "object", tool.name
                assert tool.output_schema is not None, f"{tool.name} declares no outputSchema"
                assert tool.output_schema.get("type") == "object", tool.name

            by_name = {tool.name: tool for tool in listing.tools}
            assert "topic" in by_name["research-topic"].input_schema.get("properties", {})
            retry_props = by_name["retry-workflow"].input_schema.get("properties", {})
            assert {"workflowId", "retryCount"} <= retry_props.keys()


async def test_allow_runs_the_tool() -> None:
    with anyio.fail_after(TIMEOUT_SECONDS):
        async with connect() as (session, _):
            await session.list_tools()
            result = await call(session, "research-topic", {"topic": "Rust async runtimes"})

            assert result.is_error is False
            report = structured(result)
            assert report["tool"] == "research-topic"
            assert report["verdict"] == "ALLOW"
            assert report["decision"] == "GO"
            assert report["executed"] is True
            assert "Rust async runtimes" in report["output"]

            text = text_of(result)
            assert text.startswith("✅ ALLOWED by Stage0"), text
            assert f"Request ID: {report['request_id']}" in text
            assert "Policy Version: simulated-v1.0.0" in text


async def test_deny_blocks_publish() -> None:
    with anyio.fail_after(TIMEOUT_SECONDS):
        async with connect() as (session, _):
            await session.list_tools()
            result = await call(
                session,
                "publish-content",
                {"content": "Release notes for v2", "channel": "blog"},
            )

            assert result.is_error is True
            report = structured(result)
            assert report["tool"] == "publish-content"
            assert report["verdict"] == "DENY"
            assert report["decision"] == "NO_GO"
            assert report["executed"] is False
            assert report["reason"].startswith("SIDE_EFFECTS_NEED_GUARDRAILS"), report["reason"]
            assert report["high_risk"] is True
            assert "output" not in report

            text = text_of(result)
            assert text.startswith("⛔ BLOCKED by Stage0"), text
            assert "published to" not in text


async def test_defer_blocks_retry_loop() -> None:
    with anyio.fail_after(TIMEOUT_SECONDS):
        async with connect() as (session, _):
            await session.list_tools()
            result = await call(session, "retry-workflow", {"workflowId": "nightly-etl", "retryCount": 5})

            assert result.is_error is True
            report = structured(result)
            assert report["tool"] == "retry-workflow"
            assert report["verdict"] == "DEFER"
            assert report["decision"] == "DEFER"
            assert report["executed"] is False
            assert report["reason"].startswith("LOOP_THRESHOLD_EXCEEDED"), report["reason"]
            questions = report.get("defer_questions")
            assert isinstance(questions, list) and questions, report
            assert "output" not in report

            text = text_of(result)
            assert text.startswith("⏸️ DEFERRED by Stage0"), text
            for question in questions:
                assert question in text


async def test_check_authorization_defer_is_not_an_error() -> None:
    with anyio.fail_after(TIMEOUT_SECONDS):
        async with connect() as (session, _):
            await session.list_tools()
            result = await call(
                session,
                "check-authorization",
                {"goal": "Retry workflow nightly-etl", "sideEffects": ["loop"], "retryCount": 5},
            )

            assert result.is_error is False
            report = structured(result)
            assert report["tool"] == "check-authorization"
            assert report["verdict"] == "DEFER"
            assert report["decision"] == "DEFER"
            assert report["executed"] is False
            assert report["reason"].startswith("LOOP_THRESHOLD_EXCEEDED"), report["reason"]
            assert report.get("defer_questions"), report
            assert text_of(result).startswith("⏸️ DEFERRED"), text_of(result)


async def test_sdk_validates_without_prior_listing() -> None:
    """A client that calls a tool before listing gets the schema fetched and checked by the SDK."""
    with anyio.fail_after(TIMEOUT_SECONDS):
        async with connect() as (session, _):
            result = await session.call_tool("research-topic", {"topic": "Rust async runtimes"})
            assert isinstance(result, types.CallToolResult)
            assert result.is_error is False
            assert structured(result)["verdict"] == "ALLOW"


async def test_a_deferred_retry_approved_through_elicitation_runs() -> None:
    """The SDK's elicitation callback is the human: the DEFER is approved, re-checked and run."""
    asked: list[types.ElicitRequestParams] = []

    async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(
            action="accept", content={"approve": True, "name": "Dana", "reason": "root cause fixed"}
        )

    with anyio.fail_after(TIMEOUT_SECONDS):
        async with connect(approve) as (session, _):
            await session.list_tools()
            result = await call(session, "retry-workflow", {"workflowId": "nightly-etl", "retryCount": 5})

            assert result.is_error is False, text_of(result)
            report = structured(result)
            assert report["verdict"] == "ALLOW", report
            assert report["executed"] is True
            assert report["approval"]["outcome"] == "approved"
            assert report["approval"]["approval"]["approved_by"] == "Dana"
            assert "retried successfully" in report["output"]

            assert len(asked) == 1
            form = asked[0]
            assert isinstance(form, types.ElicitRequestFormParams), form
            assert "retry-workflow" in form.message
            assert set(form.requested_schema["properties"]) == {"approve", "name", "reason"}


async def test_a_declined_elicitation_leaves_the_retry_deferred() -> None:
    async def decline(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    with anyio.fail_after(TIMEOUT_SECONDS):
        async with connect(decline) as (session, _):
            await session.list_tools()
            result = await call(session, "retry-workflow", {"workflowId": "nightly-etl", "retryCount": 5})

            assert result.is_error is True
            report = structured(result)
            assert report["verdict"] == "DEFER"
            assert report["executed"] is False
            assert report["approval"]["outcome"] == "declined"
            assert "output" not in report


async def test_the_audit_log_records_an_approved_call_step_by_step_and_verifies() -> None:
    """DEFER, the human's answer, the second verdict and the outcome, chained; `audit verify` agrees."""

    async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"approve": True, "name": "Dana", "reason": "ok"})

    with tempfile.TemporaryDirectory(prefix="stage0-audit-") as folder:
        log = Path(folder) / "audit.jsonl"
        with anyio.fail_after(TIMEOUT_SECONDS):
            async with connect(approve, audit_log=log) as (session, _):
                result = await call(session, "retry-workflow", {"workflowId": "nightly-etl", "retryCount": 5})
                assert result.is_error is False, text_of(result)
                final_request_id = structured(result)["request_id"]

        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        assert [(r["seq"], r["kind"]) for r in records] == [
            (1, "decision"),
            (2, "approval"),
            (3, "decision"),
            (4, "outcome"),
        ]
        deferred, answer, allowed, outcome = records
        assert deferred["verdict"] == "DEFER"
        assert answer["outcome"] == "approved" and answer["approval"]["approved_by"] == "Dana"
        assert allowed["verdict"] == "ALLOW"
        assert allowed["deferred_request_id"] == deferred["request_id"] == answer["request_id"]
        assert allowed["request_id"] == outcome["request_id"] == final_request_id
        assert outcome["executed"] is True and outcome["status"] == "ok"
        assert len({r["call_id"] for r in records}) == 1
        assert "nightly-etl" not in json.dumps(outcome), "arguments are stored only as a hash"

        # An independent RFC 8785 implementation agrees on every line and every hash.
        prev = "0" * 64
        for line, record in zip(log.read_bytes().splitlines(), records):
            assert rfc8785.dumps(record) == line
            unsealed = {key: value for key, value in record.items() if key != "hash"}
            assert record["prev"] == prev
            assert hashlib.sha256(rfc8785.dumps(unsealed)).hexdigest() == record["hash"]
            prev = record["hash"]

        verified = subprocess.run(
            [str(server_bin()), "audit", "verify", str(log)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
        assert verified.returncode == 0, verified
        assert verified.stdout.startswith(f"ok: {log}: 4 records"), verified.stdout

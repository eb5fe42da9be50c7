"""Human approval of a DEFER at both protocol revisions, with the Python SDK's high-level Client.

The default `Client` probes `server/discover` and runs at 2026-07-28, where approval is an MRTR
round: the call returns `input_required` with the approval form and a sealed `requestState`, and
the SDK answers through its elicitation callback and retries. `mode="legacy"` runs the 2025-11-25
`initialize` handshake, where the server sends `elicitation/create` within the call. Both must ask
once, run the body once on approval, and run nothing otherwise.

Raw MRTR rounds (`client.session.call_tool(..., allow_input_required=True)`) check that a
tampered, foreign or replayed `requestState` runs nothing, and that a state survives a restart
(with `STAGE0_REQUEST_STATE_KEY`) exactly once, since spent nonces are replayed from the audit log.
"""

from __future__ import annotations

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
from mcp import types
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, get_default_environment

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 30
REVISIONS = [("auto", "2026-07-28"), ("legacy", "2025-11-25")]
STATE_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
DEFERRED = {"workflowId": "nightly-etl", "retryCount": 5}


def server_bin() -> Path:
    path = Path(os.environ.get("STAGE0_SERVER_BIN", "target/release/mcp-server-stage0"))
    return path if path.is_absolute() else REPO_ROOT / path


class Human:
    """The elicitation callback: answers with `content` (or `action`) and counts the questions."""

    def __init__(self, action: str = "accept", content: dict[str, Any] | None = None) -> None:
        self.action = action
        self.content = content
        self.asked: list[types.ElicitRequestParams] = []

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append(params)
        return types.ElicitResult(action=self.action, content=self.content)


APPROVE = {"approve": True, "name": "Dana", "reason": "root cause fixed"}


@asynccontextmanager
async def client(
    folder: str, human: Human | None, mode: str = "auto", env: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=str(server_bin()),
        args=[],
        env={
            **get_default_environment(),
            "STAGE0_AUDIT_LOG": str(Path(folder) / "audit.jsonl"),
            **(env or {}),
        },
        cwd=folder,
    )
    async with Client(
        params, mode=mode, elicitation_callback=human, read_timeout_seconds=TIMEOUT_SECONDS
    ) as connected:
        yield connected


def records(folder: str) -> list[dict[str, Any]]:
    lines = (Path(folder) / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(("mode", "revision"), REVISIONS)
async def test_an_approved_defer_is_asked_once_and_runs_once(mode: str, revision: str) -> None:
    human = Human(content=APPROVE)
    with tempfile.TemporaryDirectory() as folder, anyio.fail_after(TIMEOUT_SECONDS):
        async with client(folder, human, mode) as connected:
            assert connected.protocol_version == revision
            result = await connected.call_tool("retry-workflow", DEFERRED)
        report = result.structured_content
        assert result.is_error is False, result
        assert (report["verdict"], report["executed"]) == ("ALLOW", True)
        assert report["approval"]["outcome"] == "approved"
        assert report["approval"]["via"] == ("mrtr" if mode == "auto" else "elicitation")
        assert len(human.asked) == 1
        assert "retry-workflow" in human.asked[0].message
        assert sum(1 for r in records(folder) if r["kind"] == "outcome" and r["executed"]) == 1
        # `audit show --request-id` of the deferring check tells the whole story, in order.
        shown = subprocess.run(
            [str(server_bin()), "audit", "show", "--request-id",
             report["approval"]["deferred_request_id"], str(Path(folder) / "audit.jsonl")],
            capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=True,
        ).stdout
        heads = [line.split()[2:5] for line in shown.splitlines() if line.startswith("#")]
        story = [" ".join(head) for head in heads]
        expected_first = "outcome retry-workflow input_required" if mode == "auto" else None
        assert story[0] == "decision retry-workflow DEFER", story
        if expected_first:
            assert story[1] == expected_first, story
        assert story[-3:] == [
            "approval retry-workflow approved",
            "decision retry-workflow ALLOW",
            "outcome retry-workflow ok",
        ], story


@pytest.mark.parametrize(("mode", "revision"), REVISIONS)
@pytest.mark.parametrize(
    ("human", "outcome"),
    [
        (Human(action="decline"), "declined"),
        (Human(content={"approve": False, "name": "Dana", "reason": "not now"}), "rejected"),
    ],
)
async def test_a_declined_or_rejected_defer_runs_nothing(
    mode: str, revision: str, human: Human, outcome: str
) -> None:
    human.asked.clear()
    with tempfile.TemporaryDirectory() as folder, anyio.fail_after(TIMEOUT_SECONDS):
        async with client(folder, human, mode) as connected:
            result = await connected.call_tool("retry-workflow", DEFERRED)
        report = result.structured_content
        assert result.is_error is True
        assert (report["verdict"], report["executed"]) == ("DEFER", False)
        assert report["approval"]["outcome"] == outcome
        assert len(human.asked) == 1
        assert not any(r["kind"] == "outcome" and r["executed"] for r in records(folder))


async def ask(connected: Client, arguments: dict[str, Any]) -> types.InputRequiredResult:
    first = await connected.session.call_tool("retry-workflow", arguments, allow_input_required=True)
    assert isinstance(first, types.InputRequiredResult), first
    assert set(first.input_requests) == {"approval"}
    return first


async def answer(
    connected: Client, arguments: dict[str, Any], state: str, content: dict[str, Any] = APPROVE
) -> types.CallToolResult:
    responses = {"approval": types.ElicitResult(action="accept", content=content)}
    return await connected.session.call_tool(
        "retry-workflow", arguments, input_responses=responses, request_state=state
    )


def refused(result: types.CallToolResult) -> str:
    assert result.is_error is True, result
    assert result.structured_content is None, "a refused state reaches no verdict"
    text = " ".join(block.text for block in result.content if block.type == "text")
    assert "nothing was checked or run" in text, text
    return text


async def test_a_tampered_foreign_or_replayed_state_runs_nothing() -> None:
    with tempfile.TemporaryDirectory() as folder, anyio.fail_after(TIMEOUT_SECONDS):
        async with client(folder, Human(content=APPROVE)) as connected:
            first = await ask(connected, DEFERRED)
            state = first.request_state
            head, body, tag = state.split(".")
            flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
            assert "failed verification" in refused(await answer(connected, DEFERRED, f"{head}.{flipped}.{tag}"))
            assert "failed verification" in refused(await answer(connected, DEFERRED, "garbage"))
            assert "failed verification" in refused(await answer(connected, DEFERRED, "x" * 100_000))
            other = {"workflowId": "another-workflow", "retryCount": 5}
            assert "other arguments" in refused(await answer(connected, other, state))

            accepted = await answer(connected, DEFERRED, state)
            assert accepted.is_error is False, accepted
            assert accepted.structured_content["executed"] is True
            assert "already" in refused(await answer(connected, DEFERRED, state))
        executed = [r for r in records(folder) if r["kind"] == "outcome" and r["executed"]]
        assert len(executed) == 1, "the body ran exactly once"
        spent = [r for r in records(folder) if r["kind"] == "approval"]
        assert [r["via"] for r in spent] == ["mrtr"]
        assert len(spent[0]["nonce_sha256"]) == 64
        assert STATE_KEY not in (Path(folder) / "audit.jsonl").read_text(encoding="utf-8")


async def test_a_state_survives_a_restart_once_with_a_shared_key() -> None:
    env = {"STAGE0_REQUEST_STATE_KEY": STATE_KEY}
    with tempfile.TemporaryDirectory() as folder, anyio.fail_after(3 * TIMEOUT_SECONDS):
        async with client(folder, Human(content=APPROVE), env=env) as connected:
            state = (await ask(connected, DEFERRED)).request_state
        async with client(folder, Human(content=APPROVE), env=env) as connected:
            accepted = await answer(connected, DEFERRED, state)
            assert accepted.is_error is False, accepted
            report = accepted.structured_content
            assert (report["verdict"], report["executed"]) == ("ALLOW", True)
        async with client(folder, Human(content=APPROVE), env=env) as connected:
            assert "already" in refused(await answer(connected, DEFERRED, state))
        async with client(folder, Human(content=APPROVE)) as connected:
            # Without the key, this process's own random key cannot open it.
            assert "failed verification" in refused(await answer(connected, DEFERRED, state))
        executed = [r for r in records(folder) if r["kind"] == "outcome" and r["executed"]]
        assert len(executed) == 1

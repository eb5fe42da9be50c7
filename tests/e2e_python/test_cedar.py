"""The `cedar` policy decision point through the Python SDK's high-level Client, at both revisions.

The server runs with `STAGE0_POLICY` naming the shipped team policy set
(`crates/stage0-guard/policies/team-example.cedar`). A `DEFER` decided by a Cedar policy is put to
a human like any other (MRTR at 2026-07-28, `elicitation/create` at 2025-11-25), and the approval
reaches the policy as `context.approval_status`. Every result, with its `determining_policies`,
is validated by the SDK against the tool's `outputSchema`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, get_default_environment

from test_approval_revisions import APPROVE, REVISIONS, TIMEOUT_SECONDS, Human, server_bin

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
TEAM = REPO_ROOT / "crates/stage0-guard/policies/team-example.cedar"


def params(folder: str) -> StdioServerParameters:
    env: dict[str, Any] = {
        **get_default_environment(),
        "STAGE0_POLICY": str(TEAM),
        "STAGE0_ACTOR_ROLE": "developer",
        "STAGE0_AUDIT_LOG": str(Path(folder) / "audit.jsonl"),
    }
    return StdioServerParameters(command=str(server_bin()), args=[], env=env, cwd=folder)


async def call_once(
    mode: str, revision: str, human: Human, tool: str, arguments: dict[str, Any]
) -> Any:
    """One call of `tool` by a fresh client at `revision`, its result validated by the SDK."""
    with tempfile.TemporaryDirectory() as folder, anyio.fail_after(TIMEOUT_SECONDS):
        async with Client(
            params(folder), mode=mode, elicitation_callback=human,
            read_timeout_seconds=TIMEOUT_SECONDS,
        ) as client:
            assert client.protocol_version == revision
            result = await client.call_tool(tool, arguments)
            await client.session.validate_tool_result(tool, result)
    return result


@pytest.mark.parametrize(("mode", "revision"), REVISIONS)
async def test_a_cedar_defer_is_approved_by_a_human_and_runs_once(mode: str, revision: str) -> None:
    human = Human(content=APPROVE)
    retry = {"workflowId": "payments-nightly", "retryCount": 2}
    result = await call_once(mode, revision, human, "retry-workflow", retry)
    report = result.structured_content
    assert result.is_error is False, result
    assert (report["mode"], report["verdict"], report["executed"]) == ("cedar", "ALLOW", True)
    assert report["determining_policies"] == ["RETRY"]
    assert report["approval"]["outcome"] == "approved"
    assert len(human.asked) == 1
    assert "payment" in human.asked[0].message.lower()


@pytest.mark.parametrize(("mode", "revision"), REVISIONS)
async def test_a_cedar_deny_names_its_policy_and_runs_nothing(mode: str, revision: str) -> None:
    human = Human(content=APPROVE)
    public = {"content": "Launch", "channel": "public"}
    result = await call_once(mode, revision, human, "publish-content", public)
    report = result.structured_content
    assert result.is_error is True
    assert (report["verdict"], report["executed"]) == ("DENY", False)
    assert report["determining_policies"] == ["PUBLIC_CHANNEL_FORBIDDEN"]
    assert report["policy_version"].startswith("cedar:")
    assert human.asked == []

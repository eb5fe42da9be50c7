"""Two replicas of the HTTP mode on one PostgreSQL (docs/deployment.md), through the Python SDK's
streamable HTTP client with a bearer token, at both protocol revisions.

A lying agent alternates between the replicas, claiming a first try each time: the shared attempt
ledger defers its sixth call, which a human approves once, and it runs once. At 2026-07-28 an
approval `requestState` sealed by one replica is answered through the other (the replicas share
`STAGE0_REQUEST_STATE_KEY`), and replaying that answer through the first runs nothing: its nonce is
in the shared chain. The chain verifies with `audit verify --database`.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager

import anyio
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import pg_cluster
from test_approval_revisions import (
    APPROVE, REVISIONS, STATE_KEY, TIMEOUT_SECONDS, Human, answer, ask, server_bin,
)
from test_http import Issuer, http_server

pytestmark = pytest.mark.anyio

LYING = {"workflowId": "nightly-export", "retryCount": 0}


@contextmanager
def two_replicas(issuer: Issuer, database: str) -> Iterator[list[str]]:
    """Two HTTP replicas on `database`; yields their `/mcp` URLs."""
    settings = {"STAGE0_DATABASE_URL": database, "STAGE0_REQUEST_STATE_KEY": STATE_KEY}
    with ExitStack() as stack:
        folders = [stack.enter_context(tempfile.TemporaryDirectory()) for _ in range(2)]
        yield [stack.enter_context(http_server(issuer, folder, settings)) for folder in folders]


@asynccontextmanager
async def connect(url: str, token: str, mode: str, human: Human) -> AsyncIterator[Client]:
    async with create_mcp_http_client(headers={"Authorization": "Bearer " + token}) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(
            transport, mode=mode, elicitation_callback=human,
            read_timeout_seconds=TIMEOUT_SECONDS,
        ) as client:
            yield client


def verify(database: str) -> str:
    done = subprocess.run(
        [str(server_bin()), "audit", "verify", "--database"],
        env={"STAGE0_DATABASE_URL": database}, capture_output=True, text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize(("mode", "revision"), REVISIONS)
async def test_a_lying_agent_across_two_replicas_is_deferred_at_its_sixth_call(
    mode: str, revision: str
) -> None:
    issuer = Issuer()
    human = Human(content=APPROVE)
    token = issuer.token("alice", "developer")
    with pg_cluster.cluster() as database:
        with two_replicas(issuer, database) as urls, anyio.fail_after(TIMEOUT_SECONDS):
            async with connect(urls[0], token, mode, human) as a, \
                    connect(urls[1], token, mode, human) as b:
                assert (a.protocol_version, b.protocol_version) == (revision, revision)
                results = [await (a, b)[n % 2].call_tool("retry-workflow", LYING)
                           for n in range(6)]
        # Once the replicas have stopped: the last outcome rides on a batch after its answer.
        verified = verify(database)
    reports = [result.structured_content for result in results]
    observed = [report["provenance"]["retry_count"]["observed"] for report in reports]
    assert observed == [0, 1, 2, 3, 4, 5]
    assert [report["executed"] for report in reports] == [True] * 6
    assert len(human.asked) == 1, "only the sixth call went to a human"
    assert reports[5]["approval"]["outcome"] == "approved"
    assert "0 call(s) without an outcome yet" in verified, verified


async def test_an_approval_state_sealed_by_one_replica_is_answered_once_through_the_other() -> None:
    issuer = Issuer()
    token = issuer.token("alice", "developer")
    deferred = {"workflowId": "nightly-etl", "retryCount": 5}
    with pg_cluster.cluster() as database:
        with two_replicas(issuer, database) as urls, anyio.fail_after(TIMEOUT_SECONDS):
            async with connect(urls[0], token, "auto", Human()) as a, \
                    connect(urls[1], token, "auto", Human()) as b:
                state = (await ask(a, deferred)).request_state
                through_b = await answer(b, deferred, state)
                replayed_through_a = await answer(a, deferred, state)
        verify(database)
    assert through_b.structured_content["executed"] is True, through_b
    assert replayed_through_a.is_error is True
    assert replayed_through_a.structured_content["executed"] is False
    assert replayed_through_a.structured_content["verdict"] == "DENY"
    assert replayed_through_a.structured_content["issues"][0]["code"] == "STATE_ALREADY_ANSWERED"
    text = " ".join(block.text for block in replayed_through_a.content if block.type == "text")
    assert "answered before" in text, text

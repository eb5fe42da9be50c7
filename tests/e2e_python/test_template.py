"""End-to-end test of the README's template: a crate made of its two code blocks alone.

`scripts/test.sh` writes the crate with `scripts/template_crate.py`, builds it, and passes the
binary as `$STAGE0_TEMPLATE_BIN`. The official Python SDK's high-level `Client` drives it at both
protocol revisions (the default probes `server/discover` and runs at 2026-07-28; `legacy` runs the
2025-11-25 `initialize` handshake), with no `STAGE0_API_KEY` (so the simulator decides) and its
audit log in a temporary folder, which `mcp-server-stage0 audit verify` must accept afterwards.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, get_default_environment

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 30


def binary(variable: str, default: str) -> Path:
    path = Path(os.environ.get(variable, default))
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        pytest.fail(f"{path} not found: run `bash scripts/test.sh`, which builds it ({variable})")
    return path


@pytest.mark.parametrize(
    ("mode", "revision"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")]
)
async def test_the_readme_template_guards_its_tool(mode: str, revision: str) -> None:
    template = binary("STAGE0_TEMPLATE_BIN", "target/template/debug/template-check")
    server = binary("STAGE0_SERVER_BIN", "target/release/mcp-server-stage0")
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "audit.jsonl"
        params = StdioServerParameters(
            command=str(template),
            args=[],
            env={**get_default_environment(), "STAGE0_AUDIT_LOG": str(log)},
            cwd=folder,
        )
        with anyio.fail_after(TIMEOUT_SECONDS):
            async with Client(params, mode=mode, read_timeout_seconds=TIMEOUT_SECONDS) as client:
                assert client.protocol_version == revision
                tools = await client.list_tools()
                assert [tool.name for tool in tools.tools] == ["save-note"]

                private = await client.call_tool(
                    "save-note", {"title": "Groceries for the week", "text": "milk"}
                )
                report = private.structured_content
                assert not private.is_error, private
                assert (report["verdict"], report["executed"], report["mode"]) == (
                    "ALLOW",
                    True,
                    "simulator",
                )
                assert report["output"] == 'Saved "Groceries for the week" (4 bytes)'
                assert report["data"] == {"title": "Groceries for the week"}

                published = await client.call_tool(
                    "save-note",
                    {"title": "Groceries for the week", "text": "milk", "publish": True},
                )
                report = published.structured_content
                assert published.is_error
                assert (report["verdict"], report["executed"]) == ("DENY", False)
                assert "output" not in report and "data" not in report

        verified = subprocess.run(
            [str(server), "audit", "verify", str(log)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.startswith(f"ok: {log}: 4 records"), verified.stdout

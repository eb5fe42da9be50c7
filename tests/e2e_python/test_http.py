"""The HTTP mode through the Python SDK's streamable HTTP client, with a bearer token, at both
protocol revisions.

A test authorization server runs in this process on 127.0.0.1 (Python's `http.server`): it
publishes RFC 8414 metadata and a JWKS holding an Ed25519 key generated here, and the tokens are
signed with that key (PyJWT). The server binary (`mcp-server-stage0 http`) checks them for real.
A `DEFER` is approved through the SDK's elicitation callback (MRTR at 2026-07-28,
`elicitation/create` over the session's stream at 2025-11-25), and the approval names the
principal whose request carried it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from test_approval_revisions import APPROVE, REVISIONS, TIMEOUT_SECONDS, Human, server_bin

pytestmark = pytest.mark.anyio

PUBLIC_URL = "https://stage0.example.test"
AUDIENCE = PUBLIC_URL + "/mcp"


class Issuer:
    """The test authorization server: an Ed25519 key, its JWKS and metadata over HTTP."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]}
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                documents = {
                    "/.well-known/oauth-authorization-server": {
                        "issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"},
                    "/jwks": jwks,
                }
                document = documents.get(self.path)
                body = json.dumps(document).encode()
                self.send_response(200 if document else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def token(self, sub: str, role: str) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "aud": AUDIENCE, "sub": sub, "stage0_role": role,
                  "iat": now, "exp": now + 600}
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": "k1"})


@contextmanager
def http_server(
    issuer: Issuer, folder: str, settings: dict[str, str] | None = None
) -> Iterator[str]:
    """The server binary in HTTP mode on a free loopback port, with `settings` added to its
    environment; yields its `/mcp` URL. Its audit log is in `folder`, unless `settings` puts it in
    a database."""
    env = {
        "PATH": "/usr/bin:/bin",
        "STAGE0_OAUTH_ISSUER": issuer.url,
        "STAGE0_PUBLIC_URL": PUBLIC_URL,
        "RUST_LOG": "info,rmcp=warn",
        # These tests approve DEFERs over HTTP, which with OAuth is self-approval and off unless
        # the operator turns it on.
        "STAGE0_APPROVALS": "on",
        **(settings or {}),
    }
    if "STAGE0_DATABASE_URL" not in env:
        env["STAGE0_AUDIT_LOG"] = str(Path(folder) / "audit.jsonl")
    process = subprocess.Popen(
        [str(server_bin()), "http", "--listen", "127.0.0.1:0"],
        env=env, cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + TIMEOUT_SECONDS
        listen = None
        while listen is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            if "listen=" in line:
                listen = line.split("listen=")[1].split()[0]
        assert listen, "the server did not say where it listens"
        threading.Thread(target=process.stderr.read, daemon=True).start()
        yield f"http://{listen}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT_SECONDS)


@pytest.mark.parametrize(("mode", "revision"), REVISIONS)
async def test_a_bearer_client_is_served_as_its_principal(mode: str, revision: str) -> None:
    issuer = Issuer()
    human = Human(content=APPROVE)
    with tempfile.TemporaryDirectory() as folder, http_server(issuer, folder) as url:
        headers = {"Authorization": "Bearer " + issuer.token("alice", "developer")}
        with anyio.fail_after(TIMEOUT_SECONDS):
            async with create_mcp_http_client(headers=headers) as http:
                transport = streamable_http_client(url, http_client=http)
                async with Client(
                    transport, mode=mode, elicitation_callback=human,
                    read_timeout_seconds=TIMEOUT_SECONDS,
                ) as client:
                    assert client.protocol_version == revision
                    research = await client.call_tool("research-topic", {"topic": "Rust"})
                    deferred = await client.call_tool(
                        "retry-workflow", {"workflowId": "nightly-etl", "retryCount": 5}
                    )
    report = research.structured_content
    assert (report["verdict"], report["executed"]) == ("ALLOW", True)
    assert report["provenance"]["actor_id"] == "alice"
    approved = deferred.structured_content
    assert (approved["verdict"], approved["executed"]) == ("ALLOW", True), approved
    assert approved["approval"]["outcome"] == "approved"
    assert approved["approval"]["approval"]["operator_actor_id"] == "alice"
    assert len(human.asked) == 1


async def test_a_request_without_a_token_is_401_with_the_metadata_challenge() -> None:
    issuer = Issuer()
    with tempfile.TemporaryDirectory() as folder, http_server(issuer, folder) as url:
        async with httpx2.AsyncClient(timeout=TIMEOUT_SECONDS) as http:
            response = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            metadata = await http.get(
                url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
            )
        log = Path(folder) / "audit.jsonl"
        assert not log.exists() or not log.read_text(), "nothing was checked"
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(
        f'Bearer resource_metadata="{PUBLIC_URL}/.well-known/oauth-protected-resource/mcp"'
    )
    assert metadata.json()["authorization_servers"] == [issuer.url]

"""pytest configuration for the Python SDK end-to-end tests.

The async tests run on anyio's pytest plugin (shipped with anyio, a dependency of `mcp`),
on the asyncio backend only.
"""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

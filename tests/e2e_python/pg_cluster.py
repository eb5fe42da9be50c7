"""A throw-away PostgreSQL cluster for the end-to-end tests, as the Rust tests start theirs
(tests/common/postgres.rs): `initdb` in a fresh temporary folder, trusted local connections, a
free port of 127.0.0.1, stopped and removed at the end. The server binaries come from
`STAGE0_PG_BIN` (scripts/test.sh finds them), else `PATH`, else Debian's versioned folder. Under
root they run as the `postgres` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BOUND_SECONDS = 60


def bin_dir() -> Path:
    configured = os.environ.get("STAGE0_PG_BIN")
    if configured:
        return Path(configured)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if debian:
        return debian[-1].parent
    raise RuntimeError("PostgreSQL server binaries not found: install postgresql or set STAGE0_PG_BIN")


def run(command: list[str]) -> None:
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    subprocess.run(command, check=True, env=env, timeout=BOUND_SECONDS + 15,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def cluster() -> Iterator[str]:
    """Starts a cluster; yields its URL (user `postgres`, database `postgres`)."""
    binaries = bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="stage0-pg-py-"))
    folder.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    run([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--locale=C"])
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                   f"unix_socket_directories = '{folder}'\n")
    pg_ctl = str(binaries / "pg_ctl")
    run([pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-t", str(BOUND_SECONDS), "start"])
    try:
        yield f"postgres://postgres@127.0.0.1:{port}/postgres"
    finally:
        run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)

"""A real ``fleet-server api`` subprocess on a free loopback port, for tests that need the
production HTTP stack (uvicorn's limits, the ASGI middlewares) and the server's own memory."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.migrations import upgrade_to_head
from tests.conftest import free_port, wait_for
from tests.server_fixtures import make_tokens

BIN = Path(sys.executable).parent


@dataclass
class ApiProcess:
    """The running server: its URL, process, config and an admin token."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    config: Path
    admin: str
    verify: ssl.SSLContext | bool
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTP client for this server (trusting its CA under TLS)."""
        return httpx.Client(base_url=self.url, verify=self.verify, timeout=10, **kwargs)  # type: ignore[arg-type]

    def token(self, role: str, name: str, *extra: str) -> str:
        """A new token created with ``fleet-server token create`` (extra CLI flags)."""
        return create_token(self.config, role, name, *extra)

    def peak_rss_kib(self) -> int:
        """The server's peak resident memory (VmHWM) in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


def create_token(config: Path, role: str, name: str, *extra: str) -> str:
    """``fleet-server token create --json`` on ``config``; returns the secret."""
    args = ["token", "create", "--role", role, "--name", name, "--json", "--config", str(config)]
    out = subprocess.run(
        [str(BIN / "fleet-server"), *args, *extra],
        check=True,
        capture_output=True,
    )
    return str(json.loads(out.stdout)["secret"])


def _admin_token(db_url: str) -> str:
    """An admin token created in-process (quicker than the CLI on a busy machine)."""
    engine = create_db_engine(db_url)
    try:
        upgrade_to_head(engine)
        return make_tokens(make_session_factory(engine), now=time.time())["admin"]
    finally:
        engine.dispose()


@contextmanager
def api_process(
    tmp_path: Path, extra_toml: str = "", verify: ssl.SSLContext | bool = True
) -> Iterator[ApiProcess]:
    """Start ``fleet-server api`` (demo mode, SQLite) and stop it afterwards."""
    port = free_port()
    scheme = "https" if "api_cert" in extra_toml else "http"
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text(
        f"""
[security]
mode = "demo"
[database]
url = "sqlite:///{tmp_path}/fleet.db"
[api]
host = "127.0.0.1"
port = {port}
[updates]
repo_dir = "{tmp_path}/tuf"
keys_dir = "{tmp_path}/tuf-keys"
{extra_toml}
"""
    )
    log = tmp_path / "api.log"
    admin = _admin_token(f"sqlite:///{tmp_path}/fleet.db")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "fleet-server"), "api", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = ApiProcess(f"{scheme}://127.0.0.1:{port}", port, proc, cfg, admin, verify, log)
    try:

        def up() -> bool:
            if server.proc.poll() is not None:
                raise AssertionError(f"fleet-server api exited:\n{log.read_text()}")
            try:
                return httpx.get(f"{server.url}/healthz", verify=verify, timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=120)  # generous: a loaded CI box imports slowly
        yield server
    finally:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()

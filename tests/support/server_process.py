"""``fleet-server init && fleet-server run`` as a real process, with its defaults.

The server runs in its own working directory, so its default SQLite database
(``./var/fleet.db``), TUF repository and embedded MQTT broker are all the defaults a new
user gets; only the two ports are moved to free loopback ports (``FLEET_API_PORT``,
``FLEET_MQTT_EMBEDDED_PORT``) so tests never collide with anything on 8080 / 1883.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port, wait_for

BIN = Path(sys.executable).parent


@dataclass
class ServerProcess:
    """A running ``fleet-server run``: its URLs, admin token and log."""

    workdir: Path
    api_port: int
    broker_port: int
    token: str
    proc: subprocess.Popen[bytes]

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:<api port>``."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def broker_url(self) -> str:
        """The embedded broker, as a device's ``broker`` setting."""
        return f"mqtt://127.0.0.1:{self.broker_port}"

    def get(self, path: str, **params: Any) -> httpx.Response:
        """An authenticated GET on the API."""
        return httpx.get(self.api_url + path, params=params, headers=self._headers(), timeout=10)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """An authenticated JSON POST on the API."""
        return httpx.post(self.api_url + path, json=body, headers=self._headers(), timeout=10)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def log(self) -> str:
        """What the server printed so far (for assertion messages)."""
        path = self.workdir / "fleet-server.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def fleet_server(workdir: Path) -> Iterator[ServerProcess]:
    """Init and run a default fleet server in ``workdir``; SIGTERM it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    api_port, broker_port = free_port(), free_port()
    while broker_port == api_port:
        broker_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(FLEET_API_PORT=str(api_port), FLEET_MQTT_EMBEDDED_PORT=str(broker_port))
    init = subprocess.run(
        [str(BIN / "fleet-server"), "init", "--json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    token = json.loads(init.stdout.strip().splitlines()[-1])["admin_token"]
    with (workdir / "fleet-server.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "fleet-server"), "run"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(workdir, api_port, broker_port, token, proc)
    try:

        def healthy() -> bool:
            assert proc.poll() is None, f"fleet-server run exited:\n{server.log()}"
            try:
                return httpx.get(f"{server.api_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, interval=0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

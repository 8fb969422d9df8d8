"""``fleet-agent run`` as systemd runs it: READY and watchdog pings over NOTIFY_SOCKET,
journald-style log lines, ``status`` while running, and a clean exit 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MosquittoBroker, wait_for

pytestmark = pytest.mark.mosquitto

CLI = [sys.executable, "-m", "agent.cli"]


def test_service_lifecycle(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "pi-svc"\nbroker = "{mosquitto.url}"\nstate_dir = "{state}"\n'
        "sample_interval_s = 0.2\npublish_interval_s = 0.5\n"
    )
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(15)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "400000",
        "JOURNAL_STREAM": "8:1234",
    }
    stderr_log = tmp_path / "agent.stderr"  # a file, not a pipe: nothing can block on it
    with stderr_log.open("w") as handle:
        proc = subprocess.Popen([*CLI, "run", "--config", str(config)], env=env, stderr=handle)
    try:
        received: list[str] = []
        while received.count("WATCHDOG=1") < 2:
            received.append(sock.recv(4096).decode())
        assert received[0].startswith("READY=1")

        def connected() -> dict[str, object] | None:
            out = subprocess.run(
                [*CLI, "status", "--json", "--config", str(config)], capture_output=True, text=True
            )
            info = json.loads(out.stdout) if out.returncode == 0 else {}
            return info if info.get("connected") else None

        info = wait_for(connected, timeout=15)
        assert isinstance(info, dict)
        assert info["running"] is True
        assert info["device_id"] == "pi-svc"
        human = subprocess.run(
            [*CLI, "status", "--config", str(config)], capture_output=True, text=True
        )
        assert "connected to mqtt://" in human.stdout
        assert "open faults:" in human.stdout

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        while "STOPPING=1" not in received:
            received.append(sock.recv(4096).decode())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    stderr = stderr_log.read_text()
    lines = [line for line in stderr.splitlines() if line]
    assert lines
    assert all(line.startswith("<") and line[2] == ">" for line in lines), lines[:3]
    assert "Traceback" not in stderr
    after = subprocess.run(
        [*CLI, "status", "--json", "--config", str(config)], capture_output=True, text=True
    )
    info = json.loads(after.stdout)
    assert info["running"] is False
    assert info["queue_depth"] == 0
    saved = json.loads((state / "state.json").read_text())
    assert saved["last_run"]["clean_stop"] is True

"""``make demo`` end to end: ``fleet-sim demo`` as a subprocess must exit 0, narrate every
step (the real ``fleet-agent`` registering, reporting and committing among them), and
leave nothing running (no server or agent process, no temporary directory)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.slow

ENTRY = "from simulator.cli import main; main()"


def _own_dirs_left(output: str) -> list[str]:
    """The demo's own temporary directories (it names them) that still exist; unlike a
    before/after listing, not confused by another demo running at the same time."""
    named = set(re.findall(r"edgefleet-demo-[A-Za-z0-9_]+", output))
    assert named, "the demo did not say where it works"
    return [n for n in named if (Path(tempfile.gettempdir()) / n).exists()]


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _child(pid: int, marker: bytes) -> int | None:
    """The demo's subprocess whose command line has ``marker``, once it exists."""
    for child in _children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run" in argv and any(marker in arg for arg in argv):
            return child
    return None


def _server_child(pid: int) -> int | None:
    """The demo's ``fleet-server run`` subprocess, once it exists."""
    return _child(pid, b"--config")


def _agent_child(pid: int) -> int | None:
    """The demo's real ``fleet-agent run`` subprocess, once it exists."""
    return _child(pid, b"agent.cli")


def test_make_demo_runs_the_whole_story_and_exits_zero() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    result = subprocess.run(
        [sys.executable, "-c", ENTRY, "demo", "--devices", "100"],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        check=False,
    )
    output = " ".join((result.stdout + result.stderr).split())  # undo rich's line wrapping
    assert result.returncode == 0, output[-4000:]
    assert "rollout completed" in output
    assert "/console/ (user admin, password " in output
    # the one real fleet-agent process: registered, reporting, committing the good rollout
    assert "registered gw-real-01 through the API" in output
    assert "gw-real-01 connected over MQTT 3.1.1 and reports: cpu" in output
    assert "read back through the API" in output
    assert "the real agent gw-real-01 committed 1.2.0 too: slot-b holds 1.2.0" in output
    assert "rollout halted and rolled back" in output
    assert "crashes on boot" in output
    assert "alarm: gw-00007 fan_stopped" in output
    assert "recall opened: RC-DEMO-001" in output
    assert "claim filed" in output
    assert "/docs" in output
    assert "fleetctl" in output
    assert not _own_dirs_left(output), "the demo left its temporary directory behind"


def test_demo_stops_everything_on_ctrl_c() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "demo", "--devices", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        server = wait_for(lambda: _server_child(proc.pid), timeout=60)
        agent = wait_for(lambda: _agent_child(proc.pid), timeout=120)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out[-2000:]
    assert b"interrupted" in out
    wait_for(lambda: not _alive(server), timeout=30)
    wait_for(lambda: not _alive(agent), timeout=30)
    assert not _own_dirs_left(out.decode(errors="replace"))


def test_demo_server_starts_on_other_ports_when_one_is_taken_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between choosing a free port and the server binding it, another program may take
    it (a full test run saw the embedded broker's port go): the demo tries two others."""
    import socket

    from rich.console import Console

    from simulator import demo as demo_mod

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        real = demo_mod.two_free_ports
        first = [True]

        def ports() -> tuple[int, int]:
            if first.pop() if first else False:
                return real()[0], taken  # the broker's port is already someone else's
            return real()

        monkeypatch.setattr(demo_mod, "two_free_ports", ports)
        demo = demo_mod.Demo(Console(quiet=True), devices=1, keep=None)
        try:
            assert demo.mqtt_port == taken
            demo.start_server()
            assert demo.mqtt_port != taken
            assert demo.api.healthy()
            assert "Address already in use" not in demo._log_tail()
        finally:
            demo.close()

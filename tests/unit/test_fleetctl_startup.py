"""What ``fleetctl`` imports to start (issue 14, point 7: start-up under 0.4 s for help
and simple reads). No timings are asserted: the machine's load would decide them. What
is asserted is the cause of slow starts: the heavy modules a simple read must not load,
read from ``python -X importtime`` of the real console script."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_server.fleetctl.startup import _plain

FLEETCTL = str(Path(sys.executable).parent / "fleetctl")


def _closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _imported(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", FLEETCTL, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return modules, done


def test_help_and_a_simple_read_load_no_heavy_module() -> None:
    heavy = {"pydantic", "httpx", "rich", "scipy", "numpy", "cryptography", "sqlalchemy"}
    helped, done = _imported("--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert helped & heavy == set()
    args = ["--url", _closed_url(), "--token", "efk_x", "devices", "list", "--tag", "a"]
    read, done = _imported(*args, "--limit", "5", "--json")
    assert done.returncode == 7, done.stderr[-2000:]  # unreachable: it got to the request
    assert read & heavy == set()


def test_plain_options_are_still_checked() -> None:
    args = ["--url", _closed_url(), "--token", "efk_x", "devices", "list", "--limit", "many"]
    done = subprocess.run([FLEETCTL, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "'many' is not a valid integer" in done.stderr


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        (int, "20", 20),
        (float, "1.5", 1.5),
        (bool, "yes", True),
        (bool, "0", False),
        (str, "x", "x"),
    ],
)
def test_plain_values_convert_like_typer(kind: type, text: str, value: object) -> None:
    assert _plain(kind, text) == value


@pytest.mark.parametrize(("kind", "text"), [(int, "1.5"), (int, ""), (bool, "maybe"), (float, "x")])
def test_bad_plain_values_are_refused(kind: type, text: str) -> None:
    with pytest.raises(ValueError, match=text or "invalid literal"):
        _plain(kind, text)

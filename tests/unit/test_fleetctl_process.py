"""``fleetctl`` as a person runs it: the real console script in a subprocess.

Start-up is measured by ``bench/cli_startup.py`` (tests never assert timings); here: the
fast path (only the named command group is built) still offers every command, and what
the user's data says is printed as written, never eaten as rich markup.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fleet_server.fleetctl.startup import requested_group

FLEETCTL = str(Path(sys.executable).parent / "fleetctl")


def fleetctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEETCTL, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_root_help_lists_every_command_group() -> None:
    out = fleetctl("--help")
    assert out.returncode == 0, out.stderr
    for group in ("devices", "rollout", "recall", "claim", "rma", "analytics", "webhooks"):
        assert f"  {group} " in out.stdout


def test_a_group_named_after_root_options_is_built_whole() -> None:
    out = fleetctl("--url", "http://127.0.0.1:9", "rollout", "--help")
    assert out.returncode == 0, out.stderr
    assert "dry-run" in out.stdout
    assert "explain" in out.stdout


def test_requested_group_skips_options_and_their_values() -> None:
    assert requested_group(["--token", "devices", "rollout", "list"]) == "rollout"
    assert requested_group(["--help"]) is None
    assert requested_group(["devices", "list", "--json"]) == "devices"


def test_brackets_in_data_are_printed_as_written(tmp_path: Path) -> None:
    csv = tmp_path / "rates.csv"
    csv.write_text("model,device_days,faults\n[gw-100],1000,5\n[bold]x,1000,1\n")
    out = fleetctl("analytics", "rates", "--csv", str(csv), "--by", "model")
    assert out.returncode == 0, out.stderr
    assert "[gw-100]" in out.stdout
    assert "[bold]x" in out.stdout

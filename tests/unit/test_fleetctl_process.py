"""``fleetctl`` as a person runs it: the real console script in a subprocess.

Start-up is measured by ``bench/cli_startup.py`` (tests never assert timings); here: the
fast path (only the named command group is built) still offers every command, and what
the user's data says is printed as written, never eaten as rich markup.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from fleet_server.fleetctl import common
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


ROWS = [
    {
        "device_id": f"[gw-{i}]",
        "serial": "SN-0000000000",
        "software_version": "1.2.0",
        "presence": "online",
        "last_seen": "2026-12-02T11:05:30+00:00",
        "region": "eu-west-1",
        "owner": "acme-industrial-services",
        "notes": "x" * 30,
    }
    for i in range(3)
]


def render(width: int, output: str | None = None, columns: list[str] | None = None) -> str:
    """What ``common.table`` prints on a terminal ``width`` columns wide."""
    console = Console(width=width, markup=False, highlight=False, record=True, file=io.StringIO())
    saved = (common.console, common.options.output, common.options.columns)
    common.console, common.options.output, common.options.columns = console, output, columns
    try:
        common.table(ROWS, list(ROWS[0]), "devices")
    finally:
        common.console, common.options.output, common.options.columns = saved
    return console.export_text()


def test_tables_fit_the_terminal_and_name_the_hidden_columns() -> None:
    text = render(80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "[gw-2]" in text
    assert "2026-12-02 11:05:30Z" in render(120)  # the one time format, UTC
    assert "more column(s): " in text
    assert "notes" in text.splitlines()[-2] + text.splitlines()[-1]


def test_wide_shows_every_column_uncut_and_columns_picks_them() -> None:
    wide = render(80, output="wide")
    assert "x" * 30 in wide
    assert "acme-industrial-services" in wide
    assert "more column(s)" not in wide
    picked = render(80, columns=["device_id", "owner"])
    assert "acme-industrial-services" in picked
    assert "SN-0000000000" not in picked

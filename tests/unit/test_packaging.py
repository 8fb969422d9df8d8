"""Packaging contract: import boundaries between parts and working console scripts."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["fleet-agent", "fleet-server", "fleetctl", "fleet-sim", "fleet-bundle"]


def _imported_top_levels(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_protocol_imports_neither_agent_nor_server() -> None:
    forbidden = {"agent", "fleet_server", "simulator", "firmware_bundles"}
    assert not _imported_top_levels("protocol") & forbidden


def test_agent_never_imports_server_code() -> None:
    assert "fleet_server" not in _imported_top_levels("agent")


def test_server_never_imports_agent_code() -> None:
    """Formats both sides use live in protocol/ (pure) or firmware_bundles/ (files)."""
    assert "agent" not in _imported_top_levels("fleet_server")


def test_all_top_level_packages_import() -> None:
    code = "import agent, fleet_server, firmware_bundles, protocol, simulator"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_answers_help(script: str) -> None:
    exe = shutil.which(script, path=str(Path(sys.executable).parent))
    assert exe, f"{script} is not installed next to {sys.executable}"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()

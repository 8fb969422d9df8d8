"""``fleet-agent unquarantine``: clear the agent's local list of versions that failed here.

The agent refuses an ``Install`` of a version that failed on this device (install, boot or
health check). After the cause is fixed, an operator clears the server's view with
``fleetctl devices unquarantine DEVICE`` and the device's own list with this command, run
on the device while the agent is stopped (the running agent holds the list in memory and
would write it back).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.update_ports import FileUpdateStore

UPDATE_FILE = "update.json"
"""The updater's document in the state dir (``agent.updater.UPDATE_FILE``)."""


def clear_quarantine(state_dir: Path, versions: list[str]) -> tuple[list[str], list[str]]:
    """Remove ``versions`` (all when empty) from the quarantine list in ``state_dir``;
    returns ``(cleared, still quarantined)``."""
    store = FileUpdateStore(state_dir / UPDATE_FILE)
    doc = store.load()
    if doc is None:
        return [], []
    held = [str(v) for v in doc.get("quarantine") or []]
    cleared = [v for v in held if not versions or v in versions]
    kept = [v for v in held if v not in cleared]
    if cleared:
        store.save({**doc, "quarantine": kept})
    return cleared, kept


def add_parser(sub: argparse._SubParsersAction, with_config: object) -> None:
    """Register the ``unquarantine`` subcommand."""
    p = sub.add_parser(
        "unquarantine",
        help="forget versions that failed on this device (run while the agent is stopped)",
    )
    assert callable(with_config)
    with_config(p)
    p.add_argument("--state-dir", type=Path, help="use this state dir instead of the config's")
    p.add_argument(
        "versions", nargs="*", metavar="VERSION", help="versions to clear (default: all)"
    )

"""``fleet-agent``: the device agent's command line (stdlib argparse, to stay small)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import __version__
from protocol import SCHEMA_VERSION


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, kept separate so tests and docs can inspect it."""
    parser = argparse.ArgumentParser(
        prog="fleet-agent",
        description=(
            "Edgefleet device agent. Runs on every device as a system service: reports "
            "health, flags hardware faults, buffers data while offline and applies signed "
            "updates."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fleet-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the agent and protocol versions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fleet-agent`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"fleet-agent {__version__} (protocol {SCHEMA_VERSION})")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

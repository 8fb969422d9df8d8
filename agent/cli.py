"""``fleet-agent``: the device agent's command line (stdlib argparse, to stay small).

Commands: ``run`` (the service), ``status`` (local state of the running agent),
``doctor`` (a human diagnosis of this machine's hardware signals), ``check-config`` and
``version``. User mistakes (bad config, missing files) print one clear line and exit 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__, quarantine_cli
from agent.adapters.slots import SlotError
from agent.config import DEFAULT_PATH, ConfigError, load_config
from protocol import SCHEMA_VERSION

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, kept separate so tests and docs can inspect it."""
    parser = argparse.ArgumentParser(
        prog="fleet-agent",
        description=(
            "Edgefleet device agent. Runs on every device as a system service: reports "
            "health, flags hardware faults, buffers data while offline and applies signed "
            "updates."
        ),
        epilog="Configuration: TOML, default /etc/edgefleet/agent.toml (see README).",
    )
    parser.add_argument("--version", action="version", version=f"fleet-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=Path(os.environ.get("FLEET_AGENT_CONFIG", DEFAULT_PATH)),
            help="agent config file (default: $FLEET_AGENT_CONFIG or %(default)s)",
        )

    run = sub.add_parser(
        "run",
        help="run the agent (as the systemd service does)",
        description=(
            "Run the agent until SIGTERM (exit 0). With updates enabled it exits 75 after "
            "switching to a freshly installed slot, so that systemd (Restart=always) starts "
            "it again from the new slot."
        ),
    )
    with_config(run)
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="override log_level from the config",
    )

    status = sub.add_parser(
        "status", help="show the local agent's state: connection, queue, faults"
    )
    with_config(status)
    status.add_argument(
        "--state-dir", type=Path, help="read this state dir instead of the config's"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")

    doctor = sub.add_parser("doctor", help="diagnose this machine's hardware health signals")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    check = sub.add_parser("check-config", help="validate a config file and exit")
    with_config(check)

    sub.add_parser("version", help="print the agent and protocol versions")
    quarantine_cli.add_parser(sub, with_config)
    return parser


def _fail(message: str) -> int:
    print(f"fleet-agent: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_run(args: argparse.Namespace) -> int:
    """Load the config, start the daemon, serve until SIGTERM/SIGINT."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    from agent.daemon import AgentDaemon
    from agent.logs import setup_logging

    ring = setup_logging(args.log_level or config.log_level, config.diagnostics_log_lines)
    try:
        daemon = AgentDaemon(config, ring=ring)
    except PermissionError as exc:
        return _fail(f"cannot use state_dir {config.state_dir}: {exc.strerror} ({exc.filename})")
    except (OSError, sqlite3.Error, SlotError) as exc:
        return _fail(f"cannot start: {exc}")

    def stop(signum: int, frame: object) -> None:
        daemon.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    daemon.run()
    return daemon.exit_code


def read_status(state_dir: Path) -> dict[str, Any]:
    """The agent's local state from its state dir (works whether or not it is running)."""
    out: dict[str, Any] = {"state_dir": str(state_dir)}
    try:
        status = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        status = {}
    out.update(status)
    pid = status.get("pid")
    running = False
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
            running = True
        except ProcessLookupError:
            running = False
        except PermissionError:
            running = True
    out["running"] = running
    if not running:
        out["connected"] = False
    db = state_dir / "outbox.db"
    if db.exists():
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
            try:
                depth, size = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size),0) FROM outbox"
                ).fetchone()
                counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            finally:
                conn.close()
            out["queue_depth"], out["queue_bytes"] = depth, size
            out["dropped_samples"] = counters.get("dropped_samples", 0)
            out["dropped_messages"] = counters.get("dropped_messages", 0)
        except sqlite3.Error as exc:
            out["queue_error"] = str(exc)
    out.setdefault("versions", {"agent": __version__, "protocol": SCHEMA_VERSION})
    return out


def _ago(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "-"
    seconds = max(0, int(time.time() - ts))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _state_dir(args: argparse.Namespace) -> Path | int:
    """``--state-dir``, else the config's; an exit code when the config is invalid."""
    if args.state_dir is not None:
        return Path(args.state_dir)
    try:
        return load_config(args.config).state_dir
    except ConfigError as exc:
        return _fail(f"config error: {exc} (or pass --state-dir)")


def cmd_status(args: argparse.Namespace) -> int:
    """Print connection, queue depth, open faults and versions."""
    state_dir = _state_dir(args)
    if isinstance(state_dir, int):
        return state_dir
    if not state_dir.is_dir():
        return _fail(f"state dir {state_dir} does not exist: the agent has never run here")
    info = read_status(state_dir)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    faults = info.get("open_faults") or {}
    versions = info.get("versions") or {}
    fault_text = ", ".join(f"{code} ({f.get('severity')})" for code, f in faults.items())
    connection = "connected" if info.get("connected") else "disconnected"
    if info.get("connected"):
        connection += f" to {info.get('broker')} since {_ago(info.get('connected_since'))}"
    running = f"running (pid {info.get('pid')})" if info["running"] else "not running"
    lines = [
        f"agent:       {running}",
        f"device:      {info.get('device_id', '-')}  boot {info.get('boot_id', '-')}",
        f"last start:  {_ago(info.get('started_at'))} ({info.get('reboot_reason', '-')})",
        f"connection:  {connection}",
        f"queue:       {info.get('queue_depth', 0)} messages, {info.get('queue_bytes', 0)} bytes",
        f"dropped:     {info.get('dropped_samples', 0)} samples, "
        f"{info.get('dropped_messages', 0)} messages",
        f"open faults: {fault_text or 'none'}",
        f"versions:    agent {versions.get('agent', __version__)}, protocol "
        f"{versions.get('protocol', SCHEMA_VERSION)}, software {versions.get('software') or '-'}",
        f"updated:     {_ago(info.get('updated_at'))}",
    ]
    update = info.get("update")
    if isinstance(update, dict):
        lines.insert(
            -1,
            f"update:      {update.get('state')} {update.get('version') or ''} (running "
            f"{update.get('running_version') or '-'}, slot {update.get('running_slot')}; "
            f"quarantined: {', '.join(update.get('quarantine') or []) or 'none'})",
        )
    print("\n".join(lines))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Read every hardware signal once and explain what it means."""
    from agent.doctor import diagnose, render

    report = diagnose()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config and say so."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    print(f"{args.config}: OK (device {config.device_id}, broker {config.broker_url})")
    return 0


def cmd_unquarantine(args: argparse.Namespace) -> int:
    """Clear versions from the local quarantine list; refused while the agent runs."""
    state_dir = _state_dir(args)
    if isinstance(state_dir, int):
        return state_dir
    if read_status(state_dir)["running"]:
        return _fail("the agent is running: stop it first (systemctl stop fleet-agent)")
    cleared, kept = quarantine_cli.clear_quarantine(state_dir, list(args.versions))
    still = ", ".join(kept) or "none"
    print(f"cleared: {', '.join(cleared) or 'nothing'}; still quarantined: {still}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fleet-agent`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"fleet-agent {__version__} (protocol {SCHEMA_VERSION})")
        return 0
    handlers = {
        "run": cmd_run,
        "status": cmd_status,
        "doctor": cmd_doctor,
        "check-config": cmd_check_config,
        "unquarantine": cmd_unquarantine,
    }
    handler = handlers.get(args.command)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

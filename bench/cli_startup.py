"""Start-up time of the command line tools, as an ops engineer feels it.

Measures the wall-clock median over ``--runs`` runs (default 20) of:

- ``fleetctl --help``;
- ``fleetctl devices list --json`` against a real ``fleet-server api`` that this script
  starts itself (demo mode, SQLite in a temporary directory, a free loopback port, 20
  imported devices so the read returns rows);
- ``fleet-agent --help``.

Goal: help <= 400 ms, list <= 600 ms. The last line is JSON:
``{"bench": "cli_startup", "fleetctl_help_ms": ..., "fleetctl_list_ms": ...,
"agent_help_ms": ...}``. Run: ``python bench/cli_startup.py [--runs N]``. The console
scripts are taken from the directory of the running interpreter (the venv's ``bin``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
HELP_GOAL_MS = 400.0
LIST_GOAL_MS = 600.0


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def median_ms(argv: list[str], runs: int, env: dict[str, str]) -> float:
    """The median wall-clock time of ``argv`` over ``runs`` runs, in milliseconds; a run
    that fails stops the bench (a fast failure is not a fast start)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env, check=False)
        times.append((time.perf_counter() - start) * 1000.0)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr.decode()}")
    return statistics.median(times)


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start ``fleet-server api`` on SQLite in ``workdir``; return it, its URL and an
    admin token (from ``fleet-server init --json``)."""
    port = free_port()
    config = workdir / "fleet-server.toml"
    config.write_text(
        f"""[security]
mode = "demo"
[database]
url = "sqlite:///{workdir}/fleet.db"
[api]
host = "127.0.0.1"
port = {port}
[updates]
repo_dir = "{workdir}/tuf"
keys_dir = "{workdir}/tuf-keys"
"""
    )
    init = subprocess.run(
        [str(BIN / "fleet-server"), "init", "--json", "--config", str(config)],
        capture_output=True,
        check=True,
    )
    token = str(json.loads(init.stdout)["admin_token"])
    log = (workdir / "api.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "fleet-server"), "api", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"fleet-server api exited:\n{(workdir / 'api.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return proc, url, token
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("fleet-server api did not become healthy within 120 s")


def import_devices(workdir: Path, env: dict[str, str], count: int = 20) -> None:
    """Register ``count`` devices through ``fleetctl devices import`` (rows to list)."""
    csv = workdir / "devices.csv"
    rows = ["device_id,model,hw_revision"]
    rows += [f"bench-{i:03d},gw-100,rev-b" for i in range(count)]
    csv.write_text("\n".join(rows) + "\n")
    subprocess.run(
        [str(BIN / "fleetctl"), "devices", "import", str(csv)],
        capture_output=True,
        env=env,
        check=True,
    )


def main() -> None:
    """Run the three measurements and print one line each, then the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per command (default 20)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("FLEET_URL", "FLEET_TOKEN")}
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        workdir = Path(tmp)
        env["HOME"] = str(workdir)  # no ~/.config/edgefleet/fleetctl.toml interferes
        help_ms = median_ms([str(BIN / "fleetctl"), "--help"], args.runs, env)
        print(f"fleetctl --help               median {help_ms:7.1f} ms (goal {HELP_GOAL_MS:.0f})")
        agent_ms = median_ms([str(BIN / "fleet-agent"), "--help"], args.runs, env)
        print(f"fleet-agent --help            median {agent_ms:7.1f} ms")
        proc, url, token = start_server(workdir)
        try:
            list_env = {**env, "FLEET_URL": url, "FLEET_TOKEN": token}
            import_devices(workdir, list_env)
            list_argv = [str(BIN / "fleetctl"), "devices", "list", "--json"]
            list_ms = median_ms(list_argv, args.runs, list_env)
            print(
                f"fleetctl devices list --json  median {list_ms:7.1f} ms (goal {LIST_GOAL_MS:.0f})"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        json.dumps(
            {
                "bench": "cli_startup",
                "fleetctl_help_ms": round(help_ms, 1),
                "fleetctl_list_ms": round(list_ms, 1),
                "agent_help_ms": round(agent_ms, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

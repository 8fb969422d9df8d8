"""Benchmark: the agent's steady-state memory and CPU against a local Mosquitto.

Runs ``fleet-agent run`` (real collectors, 1 s sampling, 10 s publishing) for
``--duration`` seconds next to a *floor* process: a bare Python interpreter that only
imports the agent's dependencies (paho-mqtt, psutil, msgspec, sqlite3) and sleeps. After a
warm-up, RSS is read from ``/proc/<pid>/status`` every few seconds and CPU time from
``/proc/<pid>/stat``.

Goals: agent RSS <= 40 MB and <= 1.3x the floor; CPU <= 0.5 % of one core.
The last printed line is one JSON object.

    .venv/bin/python bench/agent_footprint.py [--duration 150] [--adaptive-all]
        [--extra-config rules.toml]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

RSS_GOAL_MB = 40.0
RATIO_GOAL = 1.3
CPU_GOAL_PERCENT = 0.5
ADAPTIVE_SIGNALS = (
    "cpu_pct",
    "load_1m",
    "mem_pct",
    "swap_pct",
    "disk_pct",
    "temp_c",
    "fan_rpm",
    "agent_rss_mb",
    "net_rx_bytes",
    "net_tx_bytes",
    "wifi_signal_dbm",
)
"""The numeric sample fields that ``--adaptive-all`` watches with an adaptive rule."""
FLOOR_CODE = (
    "import paho.mqtt.client, psutil, msgspec, sqlite3, time\n"
    "print('ready', flush=True)\n"
    "time.sleep(100000)\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=150.0, help="seconds to run (>= 120 for the goal)"
    )
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds ignored at the start")
    parser.add_argument(
        "--adaptive-all",
        action="store_true",
        help="an adaptive rule (default parameters) on every numeric sample field",
    )
    parser.add_argument(
        "--extra-config", type=Path, help="TOML appended to the agent's config (e.g. [faults])"
    )
    args = parser.parse_args()

    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(mosquitto, os.X_OK):
        print("mosquitto is not installed", file=sys.stderr)
        return 2
    venv_bin = Path(sys.executable).parent
    agent_exe = venv_bin / "fleet-agent"
    work = Path(tempfile.mkdtemp(prefix="agent-footprint-"))
    port = free_port()
    (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    (work / "agent.toml").write_text(
        f'device_id = "bench-pi"\nbroker = "mqtt://127.0.0.1:{port}"\nstate_dir = "{work}/state"\n'
        'sample_interval_s = 1\npublish_interval_s = 10\nlog_level = "warning"\n'
        + ("".join(f'[[faults.adaptive]]\nsignal = "{s}"\n' for s in ADAPTIVE_SIGNALS))
        * args.adaptive_all
        + (args.extra_config.read_text() if args.extra_config else "")
    )
    broker = subprocess.Popen(
        [mosquitto, "-c", str(work / "mosquitto.conf")], stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)

    received = {"telemetry": 0, "samples": 0}
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/telemetry"):
            with lock:
                received["telemetry"] += 1
                received["samples"] += len(json.loads(msg.payload)["samples"])

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("fleet/v1/+/+", qos=1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()

    agent = subprocess.Popen([str(agent_exe), "run", "--config", str(work / "agent.toml")])
    floor = subprocess.Popen([sys.executable, "-c", FLOOR_CODE], stdout=subprocess.PIPE, text=True)
    assert floor.stdout is not None
    floor.stdout.readline()
    try:
        print(
            f"agent pid {agent.pid}, floor pid {floor.pid}; warm-up {args.warmup:.0f} s", flush=True
        )
        time.sleep(args.warmup)
        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
        agent_rss: list[float] = []
        floor_rss: list[float] = []
        end = t0 + max(args.duration - args.warmup, 10.0)
        while time.monotonic() < end:
            agent_rss.append(rss_mb(agent.pid))
            floor_rss.append(rss_mb(floor.pid))
            time.sleep(5.0)
        cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
        if agent.poll() is not None:
            raise RuntimeError("the agent exited during the benchmark")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent_rc = agent.wait(timeout=60)
        floor.kill()
        floor.wait()
        sub.loop_stop()
        sub.disconnect()
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)

    rss = statistics.median(agent_rss)
    floor_mb = statistics.median(floor_rss)
    ratio = rss / floor_mb
    cpu_pct = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    ok = rss <= RSS_GOAL_MB and ratio <= RATIO_GOAL and cpu_pct <= CPU_GOAL_PERCENT
    print(
        f"agent RSS (median of {len(agent_rss)} readings): {rss:.1f} MB "
        f"(max {max(agent_rss):.1f} MB)"
    )
    print(f"floor RSS (python + paho, psutil, msgspec, sqlite3): {floor_mb:.1f} MB")
    print(
        f"RSS ratio agent/floor: {ratio:.2f} (goal <= {RATIO_GOAL}); "
        f"absolute goal <= {RSS_GOAL_MB} MB"
    )
    print(
        f"agent CPU: {cpu_pct:.3f} % of one core over {t1 - t0:.0f} s "
        f"(goal <= {CPU_GOAL_PERCENT} %)"
    )
    print(f"delivered: {received['telemetry']} telemetry messages, {received['samples']} samples")
    print(f"agent exit code after SIGTERM: {agent_rc}")
    print(
        json.dumps(
            {
                "bench": "agent_footprint",
                "rss_mb": round(rss, 2),
                "rss_max_mb": round(max(agent_rss), 2),
                "floor_rss_mb": round(floor_mb, 2),
                "rss_ratio": round(ratio, 3),
                "cpu_percent": round(cpu_pct, 4),
                "duration_s": round(args.duration, 1),
                "sample_interval_s": 1,
                "publish_interval_s": 10,
                "adaptive_rules": len(ADAPTIVE_SIGNALS) if args.adaptive_all else 0,
                "samples_delivered": received["samples"],
                "exit_code": agent_rc,
                "goals": {
                    "rss_mb": RSS_GOAL_MB,
                    "rss_ratio": RATIO_GOAL,
                    "cpu_percent": CPU_GOAL_PERCENT,
                },
                "pass": ok,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

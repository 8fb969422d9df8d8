"""Benchmark: how many simulated devices one simulator process sustains.

Every device runs the real agent core on simulated hardware and keeps its own MQTT
connection to a private local Mosquitto, all on one asyncio event loop; each samples and
publishes one telemetry batch every 10 s (real time, speed 1). A separate subscriber
process counts the telemetry the broker delivers and its lag (receive time minus the
batch's timestamp) per window, so "the broker keeps up" means: the delivered rate
matches the expected ``devices / 10`` per second and the lag does not grow.

Printed: devices, messages per second delivered (and expected), lag per window, the
simulator's RSS, and RSS per device (RSS above the process' RSS before the devices were
built, divided by the devices). Goal: 10,000 devices under 1.5 GB RSS. The last line is
one JSON object.

    .venv/bin/python bench/sim_scale.py [--devices 10000] [--measure 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_DEVICES = 10_000
GOAL_RSS_MB = 1536.0
INTERVAL_S = 10.0

SUBSCRIBER = r"""
import json, sys, time
import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

class Head(msgspec.Struct):
    ts: float

decoder = msgspec.json.Decoder(Head)
window = float(sys.argv[3])
count, lags, started = 0, [], time.time()
next_report = started + window

def on_message(client, userdata, message):
    global count, next_report
    now = time.time()
    count += 1
    try:
        lags.append(now - decoder.decode(message.payload).ts)
    except msgspec.DecodeError:
        pass

def on_connect(client, userdata, flags, rc, props):
    client.subscribe("fleet/v1/+/telemetry", qos=0)
    print(json.dumps({"ready": True}), flush=True)

client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv5)
client.on_message = on_message
client.on_connect = on_connect
client.connect(sys.argv[1], int(sys.argv[2]), keepalive=60)
while True:
    client.loop(timeout=0.2)
    now = time.time()
    if now >= next_report:
        lags.sort()
        p50 = lags[len(lags) // 2] if lags else None
        p99 = lags[int(len(lags) * 0.99)] if lags else None
        print(json.dumps({"t": now, "msgs": count, "lag_p50": p50, "lag_p99": p99}), flush=True)
        count, lags = 0, []
        next_report += window
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def start_broker(workdir: Path, port: int, devices: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
        "max_queued_messages 1000\nlog_dest none\n"
    )
    needed = devices + 1024

    def raise_limit() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, needed), hard), hard))

    proc = subprocess.Popen([binary, "-c", str(conf)], preexec_fn=raise_limit)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=GOAL_DEVICES)
    parser.add_argument("--measure", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds after all connect")
    parser.add_argument("--connect-rate", type=float, default=1000.0)
    args = parser.parse_args()

    from simulator.engine import agent_settings, build_devices
    from simulator.fleet_builder import build_fleet
    from simulator.live import LiveEngine, raise_fd_limit
    from simulator.scenario import parse_scenario
    from simulator.timeline import Timeline

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < args.devices + 512:
        raise SystemExit(f"the hard open-files limit ({hard}) is too low for {args.devices}")
    raise_fd_limit(args.devices + 512)

    workdir = Path(tempfile.mkdtemp(prefix="sim-scale-"))
    port = free_port()
    broker = start_broker(workdir, port, args.devices)
    sub = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, "127.0.0.1", str(port), "5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None
    sub.stdout.readline()  # ready
    try:
        now = time.time()
        scenario = parse_scenario(
            {
                "scenario": {
                    "name": "scale",
                    "seed": 1,
                    "start": now,
                    "duration": 3600 * 24,
                    "tick": INTERVAL_S,
                    "sample_interval": INTERVAL_S,
                    "speed": 1,
                },
                "agent": {"publish_interval": INTERVAL_S, "keepalive": 60},
                "fleet": {
                    "devices": args.devices,
                    "id_prefix": "scale",
                    "models": [
                        {
                            "name": "edgebox",
                            "share": 1.0,
                            "load": {"kind": "diurnal"},
                            "revisions": [{"name": "rev-b", "share": 1.0}],
                        }
                    ],
                    "batches": [{"name": "b1", "share": 1.0}],
                    "regions": [{"name": "eu", "share": 1.0, "timezone": "Europe/Berlin"}],
                },
            }
        )
        base_rss = rss_mb()
        t_build = time.monotonic()
        fleet = build_fleet(scenario)
        timeline = Timeline(scenario, fleet)
        devices = build_devices(scenario, agent_settings(scenario), fleet=fleet, timeline=timeline)
        print(
            f"built {len(devices)} devices in {time.monotonic() - t_build:.1f} s; "
            f"RSS {rss_mb():.0f} MB (before: {base_rss:.0f} MB)",
            flush=True,
        )
        engine = LiveEngine(
            devices,
            "127.0.0.1",
            port,
            start=time.time(),
            speed=1.0,
            connect_rate=args.connect_rate,
        )
        samples: list[dict[str, float]] = []
        cpu0 = [0.0]
        span = [0.0, 0.0]

        async def run() -> None:
            task = asyncio.create_task(engine.run(engine.start + 10**7, drain_s=5.0))
            t0 = time.monotonic()
            while engine.stats.connects < len(devices):
                if time.monotonic() - t0 > 600:
                    raise SystemExit(f"only {engine.stats.connects} devices connected in 600 s")
                await asyncio.sleep(0.5)
            print(f"{len(devices)} devices connected in {time.monotonic() - t0:.1f} s", flush=True)
            await asyncio.sleep(args.warmup)
            cpu0[0] = time.process_time()
            start = time.monotonic()
            span[0] = time.time()
            engine.take_lateness()
            while time.monotonic() - start < args.measure:
                await asyncio.sleep(2.0)
                samples.append({"rss": rss_mb(), "late": engine.take_lateness()})
            cpu0[0] = (time.process_time() - cpu0[0]) / (time.monotonic() - start)
            span[1] = time.time()
            engine.request_stop()
            await task

        asyncio.run(run())
        rss = max(s["rss"] for s in samples)
        late = max(s["late"] for s in samples)
    finally:
        sub.terminate()
        out, _ = sub.communicate(timeout=10)
        broker.terminate()
        broker.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    windows = [json.loads(line) for line in out.splitlines() if line.startswith('{"t"')]
    # whole 5 s windows inside the measured span
    measured = [w for w in windows if span[0] + 5.0 <= w["t"] <= span[1]]
    rates = [w["msgs"] / 5.0 for w in measured]
    lags = [w["lag_p99"] for w in measured if w["lag_p99"] is not None]
    expected = len(devices) / INTERVAL_S
    msgs_per_s = statistics.mean(rates) if rates else 0.0
    half = len(lags) // 2
    lag_growth = (statistics.mean(lags[half:]) - statistics.mean(lags[:half])) if half >= 1 else 0.0
    per_device_kb = (rss - base_rss) * 1024.0 / len(devices)
    print("window  msgs/s  lag p50 (s)  lag p99 (s)")
    for w in measured:
        print(
            f"        {w['msgs'] / 5.0:7.0f}  {w['lag_p50'] or 0:10.3f}  {w['lag_p99'] or 0:10.3f}"
        )
    print(
        f"devices: {len(devices)}; telemetry delivered {msgs_per_s:.0f}/s "
        f"(expected {expected:.0f}/s)"
    )
    print(
        f"lag p99 first half {statistics.mean(lags[:half]) if half else 0:.3f} s, "
        f"second half {statistics.mean(lags[half:]) if half else 0:.3f} s "
        f"(growth {lag_growth:+.3f} s)"
    )
    print(f"simulator loop: devices handled at most {late:.3f} s after they were due")
    print(
        f"simulator RSS {rss:.0f} MB ({per_device_kb:.1f} KB per device); "
        f"CPU {100 * cpu0[0]:.0f} % of one core"
    )
    ok = msgs_per_s >= 0.95 * expected and lag_growth < 1.0 and rss <= GOAL_RSS_MB
    print(
        f"ratio delivered/expected {msgs_per_s / expected:.3f}; "
        f"RSS {rss:.0f} / {GOAL_RSS_MB:.0f} MB goal -> {'keeps up' if ok else 'does NOT keep up'}"
    )
    print(
        json.dumps(
            {
                "bench": "sim_scale",
                "devices": len(devices),
                "msgs_per_s": round(msgs_per_s, 1),
                "expected_msgs_per_s": round(expected, 1),
                "delivered_ratio": round(msgs_per_s / expected, 3),
                "lag_p99_s": round(max(lags), 3) if lags else None,
                "lag_growth_s": round(lag_growth, 3),
                "sim_loop_late_max_s": round(late, 3),
                "rss_mb": round(rss, 1),
                "kb_per_device": round(per_device_kb, 1),
                "cpu_pct_one_core": round(100 * cpu0[0], 1),
                "keeps_up": ok,
                "goal_devices": GOAL_DEVICES,
                "goal_rss_mb": GOAL_RSS_MB,
            }
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()

"""Ingest benchmark: the full ingest path against a no-op subscriber, same publishers.

In one run, through one private Mosquitto on a free loopback port:

(a) ``raw``: a paho MQTT 5 subscriber that only counts messages (QoS 1, auto ack);
(b) ``sqlite`` and ``postgres``: the real ingest worker (decode with ``protocol``,
    dedupe on (device, boot_id, seq), batch insert, commit, then ack).

The same publisher processes send the same telemetry messages (each a batch of
``--samples`` health samples from one of ``--devices`` devices) as fast as QoS 1 allows.
A rate is messages / seconds from "go" to the last message received (raw) or committed
(ingest). Judged by: ingest >= 0.5 x raw and >= 5,000 msg/s.

Usage: ``python bench/ingest.py [--messages N] [--publishers P] [--pg URL]``; PostgreSQL
comes from ``--pg`` or ``FLEET_TEST_DATABASE_URL`` (a scratch database is created and
dropped). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import protocol as p  # noqa: E402
from fleet_server.adapters.mqtt_ingest import IngestOptions, IngestWorker  # noqa: E402
from fleet_server.db import create_db_engine, make_session_factory  # noqa: E402
from fleet_server.migrations import upgrade_to_head  # noqa: E402
from fleet_server.services.ingest import BatchWriter  # noqa: E402

T0 = 1_790_000_000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    # Queue without limit for the ingest session while it catches up (production sizes this).
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        "max_queued_messages 0\nmax_inflight_messages 0\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def payloads(
    worker: int, workers: int, count: int, devices: int, samples: int, run_id: str
) -> list[tuple[str, bytes]]:
    out = []
    for i in range(worker, count, workers):
        dev = f"bench-{i % devices}"
        seq = i // devices
        ts = T0 + seq
        batch = [
            p.Sample(ts=ts + k * 0.1, cpu_pct=12.5, mem_pct=40.0, temp_c=51.0, disk_pct=33.0)
            for k in range(samples)
        ]
        msg = p.Telemetry(device_id=dev, boot_id=run_id, seq=seq, ts=ts, samples=batch)
        out.append((p.topic(dev, p.Kind.TELEMETRY), p.encode(msg)))
    return out


def publisher(port: int, items: list[tuple[str, bytes]], ready: Any, go: Any) -> None:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pub-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.release()
    go.wait()
    infos = [client.publish(t, b, qos=1) for t, b in items]
    for info in infos:
        info.wait_for_publish(timeout=120)
    client.disconnect()
    client.loop_stop()


def run_publishers(port: int, batches: list[list[tuple[str, bytes]]]) -> tuple[float, list[Any]]:
    ctx = mp.get_context("fork")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    procs = [ctx.Process(target=publisher, args=(port, b, ready, go)) for b in batches]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    return start, procs


def measure_raw(port: int, batches: list[list[tuple[str, bytes]]], total: int) -> float:
    count = 0
    done = threading.Event()
    subscribed = threading.Event()
    last = [0.0]

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal count
        count += 1
        if count >= total:
            last[0] = time.perf_counter()
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-sub", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe(p.subscription(p.Kind.TELEMETRY), qos=1)
    sub.loop_start()
    subscribed.wait(10)
    start, procs = run_publishers(port, batches)
    if not done.wait(300):
        raise RuntimeError(f"raw subscriber got {count}/{total}")
    for proc in procs:
        proc.join()
    sub.disconnect()
    sub.loop_stop()
    return total / (last[0] - start)


def measure_ingest(
    port: int, db_url: str, batches: list[list[tuple[str, bytes]]], warmup: list[Any], total: int
) -> float:
    engine = create_db_engine(db_url, pool_size=4)
    upgrade_to_head(engine)
    writer = BatchWriter(make_session_factory(engine), auto_register=True)
    client_id = f"bench-ingest-{uuid.uuid4().hex[:6]}"
    worker = IngestWorker(
        writer,
        IngestOptions(
            "127.0.0.1", port, client_id=client_id, shared_group=client_id, batch_size=1000
        ),
    )
    worker.connect(timeout=10)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    counter = writer.metrics.messages.labels(kind="telemetry")
    # Warm-up: register every device so the measured run is steady-state ingest.
    _s, procs = run_publishers(port, [warmup])
    for proc in procs:
        proc.join()
    while counter._value.get() < len(warmup):
        time.sleep(0.01)
    base = counter._value.get()
    start, procs = run_publishers(port, batches)
    deadline = time.monotonic() + 300
    while counter._value.get() - base < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ingest stored {counter._value.get() - base}/{total}")
        time.sleep(0.002)
    end = time.perf_counter()
    for proc in procs:
        proc.join()
    worker.stop()
    thread.join(timeout=30)
    engine.dispose()
    return total / (end - start)


def scratch_postgres(url: str) -> tuple[str, Any]:
    import psycopg

    admin = "postgresql://" + url.split("://", 1)[1]
    name = f"edgefleet_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=30000, help="messages per run")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4, help="samples per message")
    parser.add_argument("--pg", default=os.environ.get("FLEET_TEST_DATABASE_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, port = start_mosquitto(work)
        try:
            results: dict[str, Any] = {}

            def batches(run: str) -> list[list[tuple[str, bytes]]]:
                return [
                    payloads(w, args.publishers, args.messages, args.devices, args.samples, run)
                    for w in range(args.publishers)
                ]

            warm = payloads(0, 1, args.devices, args.devices, 1, "warmup")
            raw = measure_raw(port, batches("raw"), args.messages)
            print(f"raw subscriber:   {raw:10.0f} msg/s")
            results["raw_msgs_per_s"] = round(raw)
            sqlite_rate = measure_ingest(
                port, f"sqlite:///{work}/bench.db", batches("sqlite"), warm, args.messages
            )
            print(f"ingest sqlite:    {sqlite_rate:10.0f} msg/s  ratio {sqlite_rate / raw:.2f}")
            results["sqlite_msgs_per_s"] = round(sqlite_rate)
            results["ratio_sqlite"] = round(sqlite_rate / raw, 3)
            if args.pg:
                url, drop = scratch_postgres(args.pg)
                try:
                    pg_rate = measure_ingest(port, url, batches("pg"), warm, args.messages)
                finally:
                    drop()
                print(f"ingest postgres:  {pg_rate:10.0f} msg/s  ratio {pg_rate / raw:.2f}")
                results["postgres_msgs_per_s"] = round(pg_rate)
                results["ratio_postgres"] = round(pg_rate / raw, 3)
            else:
                print("ingest postgres:  skipped (no --pg / FLEET_TEST_DATABASE_URL)")
                results["postgres_msgs_per_s"] = None
                results["ratio_postgres"] = None
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    print(
        f"goal: ingest >= 0.5 x raw and >= 5000 msg/s "
        f"({args.messages} messages x {args.samples} samples, {args.publishers} publishers, "
        f"{args.devices} devices, {os.cpu_count()} CPUs)"
    )
    print(
        json.dumps(
            {
                "bench": "ingest",
                **results,
                "messages": args.messages,
                "samples_per_message": args.samples,
                "publishers": args.publishers,
            }
        )
    )


if __name__ == "__main__":
    main()

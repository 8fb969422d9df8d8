"""Ingest on a NATS JetStream cluster: raw pull consumer vs our ingest with 1 and 2 workers.

One run, on a private 3-node nats-server cluster on loopback (routes, JetStream, MQTT on
every node; replicas 3):

1. three durable consumers are created on the device-message stream (so each sees every
   message), then ``--publishers`` processes publish ``--messages`` telemetry messages
   over MQTT 3.1.1 with QoS 1, spread over the three nodes (``--devices`` device ids);
2. (a) ``raw``: a JetStream pull consumer that only acknowledges drains its copy;
   (b) ``ingest_1``: one ``NatsIngestWorker`` process on PostgreSQL drains its copy;
   (c) ``ingest_2``: two worker processes on one durable drain theirs.
   Each rate is messages / seconds from start to the consumer having nothing pending.

The drains run one after another while no device publishes, so the brokers and the
database share the 2 cores only with the consumer being measured; the CPU left idle
during each drain is printed. Goals: ``ingest_1 / raw >= 0.8``, ``ingest_2 / ingest_1 >=
1.6``. ``lost`` counts PUBACKed messages missing from either database.

Usage: ``python bench/ingest_cluster.py [--messages N] [--devices D] [--publishers P]
[--pg URL]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import protocol as p  # noqa: E402
from bench.ingest import scratch_postgres  # noqa: E402
from fleet_server.adapters.nats_conn import (  # noqa: E402
    MQTT_STREAM,
    NatsOptions,
    connect,
    ensure_ingest_consumer,
)
from fleet_server.adapters.nats_ingest import NatsIngestWorker  # noqa: E402
from fleet_server.db import create_db_engine, make_session_factory  # noqa: E402
from fleet_server.migrations import upgrade_to_head  # noqa: E402
from fleet_server.services.ingest import BatchWriter  # noqa: E402
from tests.support.nats_cluster import NatsCluster, nats_binary  # noqa: E402

T0 = 1_790_000_000.0


def _payloads(part: int, parts: int, count: int, devices: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(part, count, parts):
        dev, seq = f"bench-{i % devices}", i // devices + 1
        sample = p.Sample(ts=T0 + seq, cpu_pct=12.5, mem_pct=40.0, temp_c=51.0, disk_pct=33.0)
        msg = p.Telemetry(device_id=dev, boot_id="b1", seq=seq, ts=T0 + seq, samples=[sample])
        out.append((p.topic(dev, p.Kind.TELEMETRY), p.encode(msg)))
    return out


def _publisher(port: int, items: list[tuple[str, bytes]], out: Any) -> None:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"pub-{os.getpid()}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(t, b, qos=1) for t, b in items]
    acked = 0
    for info in infos:
        info.wait_for_publish(timeout=300)
        acked += int(info.is_published())
    client.disconnect()
    client.loop_stop()
    out.put(acked)


def publish(cluster: NatsCluster, count: int, devices: int, publishers: int) -> tuple[int, float]:
    """(messages PUBACKed, seconds)."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_publisher,
            args=(
                cluster.nodes[i % 3].mqtt_port,
                _payloads(i, publishers, count, devices),
                out,
            ),
        )
        for i in range(publishers)
    ]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    acked = sum(out.get(timeout=600) for _ in procs)
    for proc in procs:
        proc.join()
    return acked, time.perf_counter() - start


async def _drained_at(options: NatsOptions, timeout: float) -> float:
    nc = await connect(options, "bench-probe")
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            info = await js.consumer_info(MQTT_STREAM, options.durable)
            if not (info.num_pending or 0) + (info.num_ack_pending or 0):
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{options.durable} did not drain")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


def wait_drained(options: NatsOptions, timeout: float = 900) -> float:
    """Poll (one connection, every 0.1 s) until the consumer has nothing pending; the
    time it happened."""
    return asyncio.run(_drained_at(options, timeout))


async def _raw(options: NatsOptions, total: int) -> float:
    nc = await connect(options, "bench-raw")
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(options.durable, MQTT_STREAM)
    got, start = 0, time.perf_counter()
    while got < total:
        try:
            msgs = await sub.fetch(options.fetch_batch, timeout=2)
        except Exception:
            continue
        for m in msgs:
            await m.ack()
        got += len(msgs)
    await nc.flush()
    end = time.perf_counter()
    await nc.close()
    return total / (end - start)


def _ingest_proc(options: NatsOptions, db_url: str, ready: Any, go: Any, stop: Any) -> None:
    engine = create_db_engine(db_url, pool_size=2)
    writer = BatchWriter(make_session_factory(engine), auto_register=True)
    worker = NatsIngestWorker(writer, options, name=f"bench-{os.getpid()}")
    go.wait()
    worker.connect(timeout=30)
    ready.release()
    stop.wait()
    worker.stop()
    worker.run()


def measure_ingest(options: NatsOptions, db_url: str, workers: int) -> tuple[float, float]:
    """(seconds to drain, CPU seconds the worker processes used)."""
    engine = create_db_engine(db_url)
    upgrade_to_head(engine)
    engine.dispose()
    ctx = mp.get_context("fork")
    ready, go, stop = ctx.Semaphore(0), ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=_ingest_proc, args=(options, db_url, ready, go, stop))
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    go.set()
    ready.acquire()
    # From the first worker bound to its consumer, as the raw consumer is timed.
    start = time.perf_counter()
    for _ in procs[1:]:
        ready.acquire()
    pids = [proc.pid for proc in procs if proc.pid is not None]
    cpu0 = _cpu(pids)  # not counting the start-up (imports, connections)
    end = wait_drained(options)
    cpu = _cpu(pids) - cpu0
    stop.set()
    for proc in procs:
        proc.join(timeout=60)
    return (-1.0 if end <= start else (end - start)), cpu


def stored(db_url: str) -> int:
    from sqlalchemy import text

    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        n = int(conn.execute(text("SELECT count(*) FROM received_messages")).scalar_one())
    engine.dispose()
    return n


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _idle(fn: Any, *args: Any) -> tuple[Any, float]:
    psutil.cpu_times_percent(interval=None)
    out = fn(*args)
    return out, psutil.cpu_times_percent(interval=None).idle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=60_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--publishers", type=int, default=3)
    ap.add_argument("--fetch-batch", type=int, default=500)
    ap.add_argument("--pg", default=os.environ.get("FLEET_TEST_DATABASE_URL"))
    args = ap.parse_args()
    if not args.pg:
        sys.exit("PostgreSQL is needed: --pg URL or FLEET_TEST_DATABASE_URL")
    binary = nats_binary()
    if binary is None:
        sys.exit("nats-server is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster.create(binary, Path(tmp), size=3)
        cluster.start()
        drops = []
        try:
            opts = {
                name: NatsOptions(
                    servers=cluster.nats_urls, durable=name, fetch_batch=args.fetch_batch
                )
                for name in ("raw", "ingest1", "ingest2")
            }

            async def setup() -> None:
                nc = await connect(opts["raw"], "bench-setup")
                for o in opts.values():
                    for _ in range(100):
                        try:
                            await ensure_ingest_consumer(nc.jetstream(), o, 3)
                            break
                        except Exception:
                            await asyncio.sleep(0.2)
                await nc.close()

            asyncio.run(setup())
            acked, pub_s = publish(cluster, args.messages, args.devices, args.publishers)
            print(
                f"published {acked}/{args.messages} (PUBACKed) in {pub_s:.1f}s "
                f"= {acked / pub_s:.0f} msg/s"
            )
            brokers = [n.proc.pid for n in cluster.nodes if n.proc is not None]
            cpu0 = _cpu([os.getpid(), *brokers])
            b0 = _cpu(brokers)
            raw, idle_raw = _idle(lambda: asyncio.run(_raw(opts["raw"], acked)))
            broker_ms = {"raw": (_cpu(brokers) - b0) * 1000 / acked}
            raw_ms = (_cpu([os.getpid(), *brokers]) - cpu0) * 1000 / acked - broker_ms["raw"]
            print(
                f"raw pull consumer: {raw:.0f} msg/s (CPU idle {idle_raw:.0f}%; CPU per "
                f"message: consumer {raw_ms:.3f} ms, brokers {broker_ms['raw']:.3f} ms)"
            )
            worker_ms: dict[str, float] = {}
            rates, lost = {}, 0
            for name, workers in (("ingest1", 1), ("ingest2", 2)):
                url, drop = scratch_postgres(args.pg)
                drops.append(drop)
                b0 = _cpu(brokers)
                (secs, cpu), idle = _idle(measure_ingest, opts[name], url, workers)
                broker_ms[name] = (_cpu(brokers) - b0) * 1000 / acked
                worker_ms[name] = cpu * 1000 / acked
                rates[name] = acked / secs
                lost += max(0, acked - stored(url))
                print(
                    f"{name}: {rates[name]:.0f} msg/s (CPU idle {idle:.0f}%; CPU per message: "
                    f"workers {worker_ms[name]:.3f} ms, brokers {broker_ms[name]:.3f} ms)"
                )
        finally:
            cluster.stop()
            for drop in drops:
                drop()
    result = {
        "bench": "ingest_cluster",
        "messages": acked,
        "publish_msgs_per_s": round(acked / pub_s, 1),
        "raw_msgs_per_s": round(raw, 1),
        "ingest1_msgs_per_s": round(rates["ingest1"], 1),
        "ingest2_msgs_per_s": round(rates["ingest2"], 1),
        "ratio_1_raw": round(rates["ingest1"] / raw, 3),
        "scale_2_1": round(rates["ingest2"] / rates["ingest1"], 3),
        "cpu_cores": psutil.cpu_count(),
        "worker_cpu_ms_per_msg": round(worker_ms["ingest1"], 3),
        "broker_cpu_ms_per_msg": round(broker_ms["ingest1"], 3),
        # With the brokers and PostgreSQL on other machines a worker is bound by its own
        # CPU: one core per worker gives this many msg/s each (an upper bound).
        "worker_bound_msgs_per_s": round(1000 / worker_ms["ingest1"], 1),
        "lost": lost,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

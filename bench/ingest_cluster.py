"""Ingest on a NATS JetStream cluster: raw pull consumer vs our ingest with 1 and 2 workers.

One run, on a private 3-node nats-server cluster on loopback (routes, JetStream, MQTT on
every node; replicas 3):

1. a durable consumer per drain is created on the device-message stream (so each sees
   every message; one more is never drained, so that no drain is the one whose
   acknowledgements make the interest stream delete its messages), then
   ``--publishers`` processes publish ``--messages`` telemetry messages over MQTT 3.1.1
   with QoS 1, spread over the three nodes (``--devices`` ids);
2. alternately, ``--rounds`` + 1 times (a) and ``--rounds`` times (b), one after the
   other (raw, ingest_1, raw, ..., ingest_1, raw): (a) ``raw``: a process with a JetStream
   pull consumer that fetches and acknowledges, nothing else, through the worker's own
   fetch and ``acknowledge()`` path; (b) ``ingest_1``: one ``NatsIngestWorker`` process
   on a fresh PostgreSQL database drains its copy. Then (c) ``ingest_2``: two worker
   processes on one durable drain theirs, then one worker again: the pair is compared
   with the mean of the one-worker drains before and after it. Each rate is messages /
   seconds from the consumer bound to its last message acknowledged (the workers count
   theirs in memory shared with the bench: polling the consumer's state instead cost the
   brokers CPU that the raw drains did not pay). Each one-worker drain
   (but the last) is compared with the mean of the raw drains before and after it, and
   the median of those per-round ratios is reported (``ratio_1_raw``; the JSON's
   ``raw_msgs_per_s`` and ``ingest1_msgs_per_s`` are the medians of the drains, so their
   quotient may differ):
   on a shared machine the raw consumer alone moved by 1.5x within one run, and every
   consumer's CPU per message grew from a run's first drain to its last.

The drains run one after another while no device publishes, so the brokers and the
database share the 2 cores only with the consumer being measured. Goals: ``ingest_1 /
raw >= 0.8``, ``ingest_2 / ingest_1 >= 1.6``. ``lost`` counts PUBACKed messages missing
from either database.

On a small machine the rates say how the cores were shared as much as how fast the
consumers are, so each drain is also accounted in CPU: each consumer process's own CPU
per message (psutil, from bound to drained), the brokers' and PostgreSQL's, and the CPU
left idle. The ``worker_bound_*`` figures are the ratios with the brokers and PostgreSQL
on other machines, where each consumer process is bound by its own CPU: ``raw CPU/msg
/ worker CPU/msg`` for one worker, ``2 x one worker's CPU/msg / the pair's CPU/msg`` for
two workers on one durable (1 core each), and ``1000 / worker CPU/msg`` msg/s per core.

Usage: ``python bench/ingest_cluster.py [--messages N] [--devices D] [--publishers P]
[--fetch-batch B] [--rounds R] [--pg URL]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
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
    acknowledge,
    connect,
    ensure_ingest_consumer,
    settle_heap,
)
from fleet_server.adapters.nats_ingest import NatsIngestWorker  # noqa: E402
from fleet_server.db import create_db_engine, make_session_factory  # noqa: E402
from fleet_server.migrations import upgrade_to_head  # noqa: E402
from fleet_server.services.ingest import BatchWriter  # noqa: E402
from tests.support.nats_cluster import NatsCluster, nats_binary  # noqa: E402

T0 = time.time()
"""Devices stamp their samples from now on (10 ms apart): the clocks of a healthy fleet."""
BACKLOG_S = 3600.0
"""The drains read messages published up to a few minutes earlier: the clock-skew bound of
the bench's writers is an hour, so that a backlog is not taken for skewed device clocks
(which raises one alarm per device, a cost of the first batch only)."""


def _payloads(part: int, parts: int, count: int, devices: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(part, count, parts):
        dev, seq = f"bench-{i % devices}", i // devices + 1
        sample = p.Sample(ts=T0 + seq / 100, cpu_pct=12.5, mem_pct=40.0, temp_c=51.0, disk_pct=33.0)
        msg = p.Telemetry(device_id=dev, boot_id="b1", seq=seq, ts=T0 + seq / 100, samples=[sample])
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


async def _raw(options: NatsOptions, total: int, ready: Any, go: Any) -> tuple[float, float]:
    """Fetch and acknowledge ``total`` messages through the same fetch and the same
    acknowledgement path as the ingest worker; (msg/s, CPU seconds of this process)."""
    nc = await connect(options, "bench-raw")
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(options.durable, MQTT_STREAM)
    settle_heap(options.fetch_batch)  # as the worker does once bound
    ready.release()
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    got, start, cpu0 = 0, time.perf_counter(), time.process_time()
    while got < total:
        try:
            msgs = await sub.fetch(options.fetch_batch, timeout=2)
        except Exception:
            continue
        await acknowledge(nc, msgs)
        got += len(msgs)
    end, cpu = time.perf_counter(), time.process_time() - cpu0
    await nc.close()
    return total / (end - start), cpu


def _raw_proc(options: NatsOptions, total: int, ready: Any, go: Any, out: Any) -> None:
    out.put(asyncio.run(_raw(options, total, ready, go)))


def measure_raw(options: NatsOptions, total: int, meter: Meter) -> tuple[float, float]:
    """The raw consumer in a process of its own, as each worker is: (msg/s, its CPU
    seconds from bound to drained); ``meter`` runs from bound to drained."""
    ctx = mp.get_context("fork")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_raw_proc, args=(options, total, ready, go, out))
    proc.start()
    ready.acquire()
    meter.start()
    go.set()
    rate, cpu = out.get(timeout=900)
    meter.stop()
    proc.join(timeout=60)
    return rate, cpu


class _Progress:
    """What the worker processes of one drain share with the bench: the messages
    acknowledged so far, and when the last of ``total`` was (``perf_counter``, which is
    the same clock in every process on Linux)."""

    def __init__(self, ctx: Any, total: int) -> None:
        self.total = total
        self.count = ctx.Value("q", 0)
        self.end = ctx.Value("d", 0.0)
        self.done = ctx.Event()

    def acknowledged(self, n: int) -> None:
        """A worker's batch of ``n`` messages was acknowledged (on its event loop)."""
        with self.count.get_lock():
            self.count.value += n
            reached = self.count.value >= self.total and not self.done.is_set()
            if reached:
                self.end.value = time.perf_counter()
        if reached:
            self.done.set()


def _ingest_proc(
    options: NatsOptions, db_url: str, ready: Any, go: Any, stop: Any, progress: _Progress
) -> None:
    engine = create_db_engine(db_url, pool_size=2)
    writer = BatchWriter(
        make_session_factory(engine), auto_register=True, max_clock_skew_s=BACKLOG_S
    )
    worker = NatsIngestWorker(
        writer, options, name=f"bench-{os.getpid()}", on_acknowledged=progress.acknowledged
    )
    go.wait()
    worker.connect(timeout=30)
    ready.release()
    stop.wait()
    worker.stop()
    worker.run()


def _wait_acknowledged(progress: _Progress, procs: list[Any], timeout: float = 900) -> float:
    """When the workers had acknowledged every message, as they counted it (no request to
    the brokers while a drain is timed: asking the consumer's state ten times a second
    cost the brokers about 0.005 ms of CPU per message, which the raw drains did not pay
    and which this box took from the worker). Fails at once if a worker process died."""
    deadline = time.monotonic() + timeout
    while not progress.done.wait(1.0):
        if not all(proc.is_alive() for proc in procs):
            raise RuntimeError("an ingest worker process died during the drain")
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not acknowledge every message")
    return float(progress.end.value)


async def _settled_state(options: NatsOptions, timeout: float = 60) -> dict[str, int]:
    """The consumer's state once the server has processed every acknowledgement it was
    sent (they are applied after the flush that sent them returns: for a moment some
    are still pending), or as it is after ``timeout``."""
    nc = await connect(options, "bench-check")
    try:
        deadline = time.monotonic() + timeout
        while True:
            info = await nc.jetstream().consumer_info(MQTT_STREAM, options.durable)
            state = {
                "pending": int(info.num_pending or 0),
                "ack_pending": int(info.num_ack_pending or 0),
                "redelivered": int(info.num_redelivered or 0),
            }
            if not state["pending"] + state["ack_pending"] or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


def measure_ingest(
    options: NatsOptions, db_url: str, workers: int, total: int, meter: Meter
) -> tuple[float, float]:
    """(seconds to drain, CPU seconds the worker processes used); ``meter`` is stopped
    when the workers have committed and acknowledged ``total`` messages (the consumer's
    state is checked afterwards, outside the measurement)."""
    engine = create_db_engine(db_url)
    upgrade_to_head(engine)
    engine.dispose()
    ctx = mp.get_context("fork")
    ready, go, stop = ctx.Semaphore(0), ctx.Event(), ctx.Event()
    progress = _Progress(ctx, total)
    procs = [
        ctx.Process(target=_ingest_proc, args=(options, db_url, ready, go, stop, progress))
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
    meter.start()
    end = _wait_acknowledged(progress, procs)
    cpu = _cpu(pids) - cpu0
    meter.stop()
    state = asyncio.run(_settled_state(options))
    if state["pending"] or state["ack_pending"] or state["redelivered"]:
        # Counted as acknowledged, yet the consumer disagrees: the figure is not a drain.
        print(f"WARNING {options.durable}: consumer state after the drain: {state}")
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


def _pg_cpu() -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL process on this machine, by pid."""
    out = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] in ("postgres", "postmaster") and proc.info["cpu_times"]:
            t = proc.info["cpu_times"]
            out[proc.pid] = t.user + t.system
    return out


class Meter:
    """CPU accounting of one drain, from creation to :meth:`stop` (called the moment the
    consumer has drained, before its processes and database connections go): the CPU
    left idle (% of all cores) and the brokers' and PostgreSQL's CPU per message (ms;
    PostgreSQL counts every postgres process on the machine, one started meanwhile in
    full)."""

    def __init__(self, brokers: list[int], count: int) -> None:
        self.brokers, self.count = brokers, count
        self.figures: dict[str, float] = {}
        self.start()

    def start(self) -> None:
        """(Re)start the accounting: when the consumer is bound and starts pulling."""
        self.b0, self.pg0 = _cpu(self.brokers), _pg_cpu()
        psutil.cpu_times_percent(interval=None)

    def stop(self) -> None:
        """Take the figures (once)."""
        if self.figures:
            return
        idle = psutil.cpu_times_percent(interval=None).idle
        pg = sum(cpu - self.pg0.get(pid, 0.0) for pid, cpu in _pg_cpu().items())
        self.figures = {
            "idle_pct": round(idle, 1),
            "broker_ms": round((_cpu(self.brokers) - self.b0) * 1000 / self.count, 4),
            "pg_ms": round(pg * 1000 / self.count, 4),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=60_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--publishers", type=int, default=3)
    ap.add_argument("--fetch-batch", type=int, default=NatsOptions.fetch_batch)
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="raw / one-worker drains, alternated (the figures are their medians)",
    )
    ap.add_argument("--pg", default=os.environ.get("FLEET_TEST_DATABASE_URL"))
    args = ap.parse_args()
    if not args.pg:
        sys.exit("PostgreSQL is needed: --pg URL or FLEET_TEST_DATABASE_URL")
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    binary = nats_binary()
    if binary is None:
        sys.exit("nats-server is not installed")
    # raw-1, ingest1-1, raw-2, ingest1-2, ..., raw-(R+1): every one-worker drain sits
    # between two raw drains, so a load that drifts through the run biases neither side.
    raws = [f"raw-{r}" for r in range(1, args.rounds + 2)]
    ones = [f"ingest1-{r}" for r in range(1, args.rounds + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster.create(binary, Path(tmp), size=3)
        cluster.start()
        drops = []
        try:
            opts = {
                name: NatsOptions(
                    servers=cluster.nats_urls, durable=name, fetch_batch=args.fetch_batch
                )
                # "keep" is never drained: the stream keeps its messages for it, so no
                # drain pays for deleting them (interest retention deletes a message
                # once every consumer has acknowledged it: the last drain would).
                for name in [*raws, *ones, "ingest2", "ingest1-after", "keep"]
            }

            async def setup() -> None:
                nc = await connect(opts[raws[0]], "bench-setup")
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
            rates: dict[str, float] = {}
            own: dict[str, float] = {}
            drains: dict[str, dict[str, float]] = {}
            lost = 0

            def ingest(name: str, workers: int) -> None:
                nonlocal lost
                url, drop = scratch_postgres(args.pg)
                drops.append(drop)
                meter = Meter(brokers, acked)
                secs, cpu = measure_ingest(opts[name], url, workers, acked, meter)
                drains[name], own[name], rates[name] = (
                    meter.figures,
                    cpu * 1000 / acked,
                    acked / secs,
                )
                lost += max(0, acked - stored(url))
                acct = drains[name]
                print(
                    f"{name}: {rates[name]:.0f} msg/s (CPU idle {acct['idle_pct']:.0f}%; "
                    f"CPU per message: workers {own[name]:.4f} ms, brokers "
                    f"{acct['broker_ms']:.4f} ms, PostgreSQL {acct['pg_ms']:.4f} ms)"
                )

            for n, raw_name in enumerate(raws):
                meter = Meter(brokers, acked)
                rates[raw_name], raw_cpu = measure_raw(opts[raw_name], acked, meter)
                drains[raw_name], own[raw_name] = meter.figures, raw_cpu * 1000 / acked
                print(
                    f"{raw_name} pull consumer: {rates[raw_name]:.0f} msg/s (CPU idle "
                    f"{drains[raw_name]['idle_pct']:.0f}%; CPU per message: consumer "
                    f"{own[raw_name]:.4f} ms, brokers {drains[raw_name]['broker_ms']:.4f} ms)"
                )
                if n < len(ones):
                    ingest(ones[n], 1)
            ingest("ingest2", 2)
            ingest("ingest1-after", 1)  # with the last one-worker drain, brackets the pair
        finally:
            cluster.stop()
            for drop in drops:
                drop()

    # Each one-worker drain is compared with the mean of the raw drains just before and after
    # it (a steady drift of the machine's load cancels), and the rounds' median is reported.
    def around(figures: dict[str, float], before: str, after: str) -> float:
        return (figures[before] + figures[after]) / 2

    per_ratio = [rates[name] / around(rates, *raws[n : n + 2]) for n, name in enumerate(ones)]
    per_bound = [around(own, *raws[n : n + 2]) / own[name] for n, name in enumerate(ones)]
    ratio_1, bound_1 = statistics.median(per_ratio), statistics.median(per_bound)
    raw = statistics.median([rates[r] for r in raws])
    one = statistics.median([rates[i] for i in ones])
    own_raw = statistics.median([own[r] for r in raws])
    own_one = statistics.median([own[i] for i in ones])
    # With the brokers and PostgreSQL on other machines, each consumer process is bound by
    # its own CPU: one core gives 1 / (its CPU per message) msg/s. Two workers on one
    # durable scale by 2 x (one worker's CPU per message / the pair's per message). The
    # pair is compared with the one-worker drains just before and after it.
    scale_2 = rates["ingest2"] / around(rates, ones[-1], "ingest1-after")
    bound_2 = 2 * around(own, ones[-1], "ingest1-after") / own["ingest2"]
    spread = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(per_ratio, per_bound, strict=True))
    print(
        f"ratio ingest_1 / raw (median of {len(ones)} alternated rounds; per round, on this "
        f"box / worker-bound: {spread}): {ratio_1:.2f} on this box, {bound_1:.2f} worker-bound "
        f"(goal 0.8); ingest_2 / ingest_1: {scale_2:.2f} on this box, "
        f"{bound_2:.2f} worker-bound (goal 1.6); one worker core: {1000 / own_one:.0f} msg/s"
    )

    def per_round(figures: dict[str, float], names: list[str]) -> list[float]:
        return [round(figures[n], 4) for n in names]

    result = {
        "bench": "ingest_cluster",
        "messages": acked,
        "fetch_batch": args.fetch_batch,
        "rounds": len(ones),
        "publish_msgs_per_s": round(acked / pub_s, 1),
        "raw_msgs_per_s": round(raw, 1),
        "ingest1_msgs_per_s": round(one, 1),
        "ingest2_msgs_per_s": round(rates["ingest2"], 1),
        "ratio_1_raw": round(ratio_1, 3),
        "scale_2_1": round(scale_2, 3),
        "cpu_cores": psutil.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "raw_cpu_ms_per_msg": round(own_raw, 4),
        "worker_cpu_ms_per_msg": round(own_one, 4),
        "workers2_cpu_ms_per_msg": round(own["ingest2"], 4),
        "broker_cpu_ms_per_msg": {k: v["broker_ms"] for k, v in drains.items()},
        "pg_cpu_ms_per_msg": {k: v["pg_ms"] for k, v in drains.items()},
        "idle_pct": {k: v["idle_pct"] for k, v in drains.items()},
        "rounds_raw_msgs_per_s": per_round(rates, raws),
        "rounds_ingest1_msgs_per_s": per_round(rates, ones),
        "rounds_raw_cpu_ms_per_msg": per_round(own, raws),
        "rounds_worker_cpu_ms_per_msg": per_round(own, ones),
        "rounds_ratio_1_raw": [round(r, 3) for r in per_ratio],
        "rounds_worker_bound_ratio_1_raw": [round(r, 3) for r in per_bound],
        "worker_bound_ratio_1_raw": round(bound_1, 3),
        "worker_bound_scale_2_1": round(bound_2, 3),
        "worker_bound_msgs_per_s": round(1000 / own_one, 1),
        "lost": lost,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

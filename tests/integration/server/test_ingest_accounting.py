"""The ingest counts what it did (issue 13, finding 8), on SQLite and PostgreSQL, and once
through a real Mosquitto.

* An update report the server refuses (its execution is not the device's) does not keep
  its ``(boot_id, seq)`` key: the redelivery is refused and counted again, never passed
  as a duplicate.
* A telemetry sample whose ``(device, ts)`` is already stored is not counted as stored:
  ``samples_skipped{same_sample}`` when identical, ``{ts_conflict}`` (and a WARNING) when
  its values differ; the first sample stays as it was.
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import protocol as p
from fleet_server.adapters.mqtt_ingest import IngestOptions, IngestWorker, wait_connected
from fleet_server.db.models import ReceivedMessage, TelemetrySample
from fleet_server.services.ingest import BatchWriter, Inbound
from tests.conftest import wait_for

T0 = 1_790_000_000.0
DEVICE = "pi-acct"


def _report(seq: int, execution_id: str | None = "ex-not-mine") -> p.UpdateStateChanged:
    return p.UpdateStateChanged(
        device_id=DEVICE,
        boot_id="b1",
        seq=seq,
        ts=T0 + seq,
        execution_id=execution_id,
        version="1.0.0",
        state=p.UpdateState.DOWNLOADING,
    )


def _telemetry(seq: int, *samples: p.Sample) -> p.Telemetry:
    return p.Telemetry(device_id=DEVICE, boot_id="b1", seq=seq, ts=T0 + seq, samples=list(samples))


def _inbound(msg: p.Telemetry | p.Event) -> Inbound:
    kind = p.Kind.TELEMETRY if isinstance(msg, p.Telemetry) else p.Kind.EVENT
    return Inbound(p.topic(msg.device_id, kind), p.encode(msg), T0)


def _keys(sessions) -> int:
    with sessions() as s:
        return int(s.execute(select(func.count()).select_from(ReceivedMessage)).scalar_one())


def _stored_samples(sessions) -> list[TelemetrySample]:
    with sessions() as s:
        return list(s.execute(select(TelemetrySample).order_by(TelemetrySample.ts)).scalars())


def test_a_refused_report_is_refused_again_when_redelivered(sessions) -> None:
    writer = BatchWriter(sessions, auto_register=True)
    first = writer.write([_inbound(_report(1))])
    again = writer.write([_inbound(_report(1))])  # the broker redelivers it
    assert first.rejected == {"unknown_execution": 1}
    assert again.rejected == {"unknown_execution": 1}
    assert first.duplicates == again.duplicates == 0
    assert _keys(sessions) == 0, "a refused report keeps no dedupe key"
    # Twice in one batch, next to a report the server applies: same accounting.
    both = writer.write([_inbound(_report(2)), _inbound(_report(2)), _inbound(_report(3, None))])
    assert both.rejected == {"unknown_execution": 2}
    assert both.duplicates == 0
    assert both.accepted["event"] == 1
    m = writer.metrics
    assert m.rejected.labels(reason="unknown_execution")._value.get() == 4
    assert m.duplicates._value.get() == 0
    assert _keys(sessions) == 1


def test_a_repeated_sample_timestamp_is_counted_as_skipped_with_its_reason(
    sessions, caplog: pytest.LogCaptureFixture
) -> None:
    writer = BatchWriter(sessions, auto_register=True)
    original = p.Sample(ts=T0, cpu_pct=10.0, temp_c=50.0, custom={"fan": 0.5})
    first = writer.write([_inbound(_telemetry(1, original))])
    assert first.samples == 1
    same = writer.write([_inbound(_telemetry(2, original))])
    assert (same.samples, dict(same.skipped_samples)) == (0, {"same_sample": 1})
    assert same.accepted["telemetry"] == 1  # a new message; its sample was already there
    changed = p.Sample(ts=T0, cpu_pct=99.0, temp_c=50.0, custom={"fan": 0.5})
    with caplog.at_level(logging.WARNING, logger="fleet_server.services.ingest"):
        conflict = writer.write([_inbound(_telemetry(3, changed))])
    assert (conflict.samples, dict(conflict.skipped_samples)) == (0, {"ts_conflict": 1})
    assert DEVICE in caplog.text
    (kept,) = _stored_samples(sessions)
    assert (kept.cpu_pct, kept.custom) == (10.0, {"fan": 0.5}), "the first sample is kept"

    # Within one batch (and one message): a new timestamp is stored once, its repeats
    # counted by what they carried.
    fresh = p.Sample(ts=T0 + 1, cpu_pct=1.0)
    batch = writer.write(
        [
            _inbound(_telemetry(4, fresh, fresh)),
            _inbound(_telemetry(5, p.Sample(ts=T0 + 1, cpu_pct=2.0), original)),
        ]
    )
    assert batch.samples == 1
    assert dict(batch.skipped_samples) == {"same_sample": 2, "ts_conflict": 1}
    assert [s.cpu_pct for s in _stored_samples(sessions)] == [10.0, 1.0]
    m = writer.metrics
    assert m.samples._value.get() == 2
    assert m.samples_skipped.labels(reason="same_sample")._value.get() == 3
    assert m.samples_skipped.labels(reason="ts_conflict")._value.get() == 2


@pytest.mark.mosquitto
def test_accounting_through_the_broker(mosquitto, sessions) -> None:
    writer = BatchWriter(sessions, auto_register=True)
    worker = IngestWorker(
        writer, IngestOptions(mosquitto.host, mosquitto.port, client_id="ingest-acct")
    )
    worker.connect(timeout=10)
    assert wait_connected(worker, 10)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=mqtt.MQTTv5)
    device.connect(mosquitto.host, mosquitto.port)
    device.loop_start()
    try:
        sample = p.Sample(ts=T0, cpu_pct=10.0)
        for msg, kind in (
            (_report(1), p.Kind.EVENT),
            (_report(1), p.Kind.EVENT),  # the agent re-sends what it had no answer for
            (_telemetry(2, sample), p.Kind.TELEMETRY),
            (_telemetry(3, sample), p.Kind.TELEMETRY),
            (_telemetry(4, p.Sample(ts=T0, cpu_pct=20.0)), p.Kind.TELEMETRY),
        ):
            info = device.publish(p.topic(DEVICE, kind), p.encode(msg), qos=1)
            info.wait_for_publish(timeout=10)
        m = writer.metrics
        wait_for(lambda: m.messages.labels(kind="telemetry")._value.get() == 3, timeout=20)
        wait_for(lambda: m.rejected.labels(reason="unknown_execution")._value.get() == 2)
        assert m.duplicates._value.get() == 0
        assert m.samples._value.get() == 1
        assert m.samples_skipped.labels(reason="same_sample")._value.get() == 1
        assert m.samples_skipped.labels(reason="ts_conflict")._value.get() == 1
        assert [s.cpu_pct for s in _stored_samples(sessions)] == [10.0]
    finally:
        device.disconnect()
        device.loop_stop()
        worker.stop()
        runner.join(timeout=10)

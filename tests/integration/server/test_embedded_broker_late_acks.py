"""The embedded broker and a subscriber slower than amqtt's fixed 5 s PUBACK wait.

The ingest acknowledges a message only once the database committed it, so under load its
PUBACK can come later than amqtt 0.12 waits. What an operator relies on: the server log
says so in one line (how many, which subscriber), not a traceback per message that reads
like a crash, for live and retained deliveries alike; the late acknowledgements are not
logged one by one either; other amqtt records, a PUBACK for a packet that never timed
out among them, still get through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.adapters.amqtt_late_acks import LATE_ACKS, LateAcks
from fleet_server.adapters.embedded_broker import EmbeddedBroker
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.slow
HANDLER = "amqtt.mqtt.protocol.handler"


def _client(client_id: str, port: int, manual_ack: bool = False) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id,
        protocol=mqtt.MQTTv311,
        clean_session=False,
        manual_ack=manual_ack,
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_a_late_puback_is_one_summary_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    broker = EmbeddedBroker(port)
    broker.start()
    held: list[mqtt.MQTTMessage] = []
    publisher = _client("dev-1", port)
    slow = _client("slow-ingest", port, manual_ack=True)
    try:
        # a retained QoS 1 message (a command): amqtt sends it in its own task on subscribe
        publisher.publish("late/r", b"r", qos=1, retain=True).wait_for_publish(10)
        suback: list[int] = []
        slow.on_message = lambda _c, _u, msg: held.append(msg)
        slow.on_subscribe = lambda _c, _u, mid, _codes, _p: suback.append(mid)
        wait_for(lambda: slow.is_connected())
        before = LATE_ACKS.count
        with caplog.at_level(logging.WARNING):
            result, mid = slow.subscribe("late/#", qos=1)
            assert result == mqtt.MQTT_ERR_SUCCESS
            wait_for(lambda: mid in suback)
            publisher.publish("late/a", b"x", qos=1).wait_for_publish(10)
            wait_for(lambda: len(held) == 2)
            # neither is acknowledged until amqtt has stopped waiting for both
            wait_for(lambda: LATE_ACKS.count >= before + 2, timeout=30, interval=0.1)
            for msg in held:
                slow.ack(msg.mid, msg.qos)
            publisher.publish("late/b", b"y", qos=1).wait_for_publish(10)
            wait_for(lambda: len(held) == 3)  # the broker still delivers
            slow.ack(held[2].mid, 1)
    finally:
        for client in (slow, publisher):
            client.disconnect()
            client.loop_stop()
        broker.stop()
    assert sorted(bytes(m.payload) for m in held) == [b"r", b"x", b"y"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback reached the log"
    assert not [r for r in caplog.records if "PUBACK for" in r.getMessage()]
    summaries = [r.getMessage() for r in caplog.records if "embedded broker:" in r.getMessage()]
    assert len(summaries) == 2, summaries  # the first timeout at once, the other at stop
    assert "1 QoS 1 deliveries had no PUBACK within amqtt's fixed 5 s" in summaries[0]
    assert "subscribers: slow-ingest)" in summaries[0]
    assert "(2 since start" in summaries[1]


def _record(
    name: str, msg: str, exc: BaseException | None = None, **extra: str
) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None)
    if exc is not None:
        rec.exc_info = (type(exc), exc, None)
    rec.__dict__.update(extra)
    return rec


def _timeout(client: str, packet_id: int) -> logging.LogRecord:
    return _record(
        HANDLER, f"Timeout waiting for PUBACK for packet ID {packet_id}", client_id=client
    )


def test_late_acks_are_summarised_at_most_once_a_minute_and_other_records_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    flushes: list[tuple[float, Callable[[], None]]] = []
    late = LateAcks(clock=lambda: now[0], later=lambda delay, cb: flushes.append((delay, cb)))
    crash = TimeoutError("Timeout waiting for PUBACK for packet ID 7")
    with caplog.at_level(logging.WARNING, logger="fleet_server.adapters.embedded_broker"):
        assert not late.filter(_timeout("ingest", 7))
        assert not late.filter(_record("amqtt.broker", "Task failed and will be skipped", crash))
        assert not late.filter(_record("asyncio", "Task exception was never retrieved", crash))
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1
        assert "1 QoS 1 deliveries" in lines[0]
        assert "ingest" in lines[0]
        now[0] += 30
        assert not late.filter(_timeout("dev-7", 8))
        assert not late.filter(_timeout("dev-7", 9))
        assert len(caplog.records) == 1  # held back: the last summary was 30 s ago
        assert len(flushes) == 1  # one flush scheduled, when the minute is up
        assert flushes[0][0] == pytest.approx(30.0)
        now[0] += 30
        flushes[0][1]()
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2
        assert "2 QoS 1 deliveries" in lines[1]
        assert "(3 since start" in lines[1]
        assert "subscribers: dev-7)" in lines[1]
        late.report()  # nothing unreported: no line
        assert len(caplog.records) == 2
    assert late.count == 3
    # a late PUBACK is dropped once, for the client and packet that timed out
    unknown = "Received PUBACK for unknown pending message Id: '{}'"
    assert not late.filter(_record(HANDLER, unknown.format(8), client_id="dev-7"))
    assert late.filter(_record(HANDLER, unknown.format(8), client_id="dev-7"))
    assert late.filter(_record(HANDLER, unknown.format(9), client_id="dev-8"))
    # anything else passes untouched
    assert late.filter(_record(HANDLER, "PUBACK waiter with Id '9' already done", client_id="x"))
    assert late.filter(_record("amqtt.broker", "Task failed", RuntimeError("boom")))
    assert late.filter(_record("amqtt.broker", "Task failed", TimeoutError("other")))
    assert late.filter(_record("asyncio", "Task exception was never retrieved", OSError("x")))
    assert late.filter(_record(HANDLER, "Will flag set, but will topic/message not present"))

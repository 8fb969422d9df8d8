"""The embedded broker and a subscriber slower than amqtt's fixed 5 s PUBACK wait.

The ingest acknowledges a message only once the database committed it, so under load its
PUBACK can come later than amqtt 0.12 waits. What an operator relies on: the server log
says so in one line (how many, which subscriber), not a traceback per message that reads
like a crash; the late acknowledgements are not logged one by one either; other amqtt
records still get through.
"""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.adapters.embedded_broker import LATE_ACKS, EmbeddedBroker, LateAcks
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
    slow = _client("slow-ingest", port, manual_ack=True)
    publisher = _client("dev-1", port)
    try:
        suback: list[int] = []
        slow.on_message = lambda _c, _u, msg: held.append(msg)
        slow.on_subscribe = lambda _c, _u, mid, _codes, _p: suback.append(mid)
        wait_for(lambda: slow.is_connected())
        result, mid = slow.subscribe("late/#", qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        wait_for(lambda: mid in suback)
        before = LATE_ACKS.count
        with caplog.at_level(logging.WARNING):
            publisher.publish("late/a", b"x", qos=1).wait_for_publish(10)
            wait_for(lambda: held)
            wait_for(lambda: LATE_ACKS.count > before, timeout=30, interval=0.1)
            for msg in held:
                slow.ack(msg.mid, msg.qos)  # after amqtt stopped waiting for it
            publisher.publish("late/b", b"y", qos=1).wait_for_publish(10)
            wait_for(lambda: len(held) == 2)  # the broker still delivers
            slow.ack(held[1].mid, 1)
    finally:
        for client in (slow, publisher):
            client.loop_stop()
            client.disconnect()
        broker.stop()
    assert held[0].payload == b"x"  # delivered all the same
    assert not [r for r in caplog.records if r.exc_info], "a traceback reached the log"
    assert not [r for r in caplog.records if "PUBACK" in r.getMessage()]
    summaries = [r.getMessage() for r in caplog.records if "embedded broker:" in r.getMessage()]
    assert len(summaries) == 1, summaries
    assert "not acknowledged within amqtt's fixed 5 s" in summaries[0]
    assert "slow-ingest" in summaries[0]


def test_late_acks_are_summarised_at_most_once_a_minute_and_other_records_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    late = LateAcks(clock=lambda: now[0])

    def record(name: str, msg: str, exc: BaseException | None = None, **extra: str):
        rec = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)
        if exc is not None:
            rec.exc_info = (type(exc), exc, None)
        rec.__dict__.update(extra)
        return rec

    def one_late(client: str) -> list[bool]:
        return [
            late.filter(record(HANDLER, "Timeout waiting for PUBACK", client_id=client)),
            late.filter(
                record("amqtt.broker", "Task failed", TimeoutError("Timeout waiting for PUBACK"))
            ),
        ]

    with caplog.at_level(logging.WARNING, logger="fleet_server.adapters.embedded_broker"):
        assert one_late("ingest") == [False, False]  # dropped: reported by the summary
        now[0] += 30
        assert one_late("dev-7") == [False, False]
        assert one_late("dev-7") == [False, False]
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1
        assert "1 QoS 1 deliveries" in lines[0]
        assert "ingest" in lines[0]
        now[0] += 31  # a minute after the first summary
        assert one_late("dev-8") == [False, False]
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2
        assert "3 QoS 1 deliveries" in lines[1]
        assert "(4 since start" in lines[1]
        assert "dev-7, dev-8" in lines[1]
        late.report()  # nothing unreported: no line
        assert len(caplog.records) == 2
    assert late.count == 4
    # anything else from amqtt passes untouched
    assert late.filter(record("amqtt.broker", "Task failed", RuntimeError("boom")))
    assert late.filter(record("amqtt.broker", "Task failed", TimeoutError("other")))
    assert late.filter(record(HANDLER, "Will flag set, but no topic"))

"""The transport's words for a failed connection (what the agent's log says), and the
settings it refuses. Connections themselves are tested against real brokers in
``tests/e2e/test_agent_brokers.py``."""

from __future__ import annotations

import socket
import ssl

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.transport import MqttSettings, MqttTransport, describe_error, describe_refusal


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve the broker's host"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS error"),
        (TimeoutError(), "timed out"),
        (OSError(113, "No route to host"), "no route to host"),
    ],
)
def test_socket_failures_in_words(error: OSError, words: str) -> None:
    assert words in describe_error(error)


def test_refusals_carry_the_broker_reason_and_code() -> None:
    text = describe_refusal(ReasonCode(PacketTypes.CONNACK, "Not authorized"))
    assert "Not authorized (reason code 135)" in text
    assert "not authorised" in text
    text = describe_refusal(ReasonCode(PacketTypes.CONNACK, "Unsupported protocol version"))
    assert "reason code 132" in text


def test_unknown_mqtt_version_is_refused() -> None:
    settings = MqttSettings("127.0.0.1", 1883, "pi-1", "fleet/v1/pi-1/command", mqtt_version="4")
    with pytest.raises(ValueError, match="mqtt_version"):
        MqttTransport(settings)

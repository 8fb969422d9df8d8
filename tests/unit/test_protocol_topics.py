"""Topic builders and the topic parser: the identity boundary of the protocol."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import Kind, ProtocolDecodeError, Reason, parse_topic, shared_subscription, topic
from protocol.topics import is_valid_device_id, subscription
from tests.unit.protocol_strategies import device_ids


@given(device_ids, st.sampled_from(Kind))
def test_topic_round_trips(device_id: str, kind: Kind) -> None:
    assert parse_topic(topic(device_id, kind)) == (device_id, kind)


def test_topic_layout_matches_design() -> None:
    assert topic("pi-0001", Kind.TELEMETRY) == "fleet/v1/pi-0001/telemetry"
    assert topic("pi-0001", "command") == "fleet/v1/pi-0001/command"
    assert subscription(Kind.EVENT) == "fleet/v1/+/event"
    assert shared_subscription("ingest", Kind.TELEMETRY) == "$share/ingest/fleet/v1/+/telemetry"


@pytest.mark.parametrize("device_id", ["", "+", "#", "a/b", "a+", "-lead", "x" * 65, "é"])
def test_device_ids_that_could_escape_acls_are_invalid(device_id: str) -> None:
    assert not is_valid_device_id(device_id)
    with pytest.raises(ValueError, match="invalid device id"):
        topic(device_id, Kind.EVENT)


@pytest.mark.parametrize(
    "name",
    [
        "fleet/v1/pi-1",
        "fleet/v1/pi-1/telemetry/extra",
        "fleet/v2/pi-1/telemetry",
        "other/v1/pi-1/telemetry",
        "fleet/v1/+/telemetry",
        "fleet/v1/pi-1/logs",
        "",
    ],
)
def test_bad_topics_are_rejected_with_bad_topic(name: str) -> None:
    with pytest.raises(ProtocolDecodeError) as info:
        parse_topic(name)
    assert info.value.reason is Reason.BAD_TOPIC


@given(st.text(max_size=200))
def test_arbitrary_topics_never_raise_anything_else(name: str) -> None:
    try:
        device_id, kind = parse_topic(name)
    except ProtocolDecodeError as exc:
        assert exc.reason is Reason.BAD_TOPIC
    else:
        assert is_valid_device_id(device_id)
        assert isinstance(kind, Kind)


def test_shared_subscription_rejects_wildcards_in_group() -> None:
    with pytest.raises(ValueError, match="group"):
        shared_subscription("in/gest", Kind.TELEMETRY)

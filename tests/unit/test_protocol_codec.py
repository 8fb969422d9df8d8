"""Encoding and strict decoding: round trips, and one typed error for every bad input."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from protocol import Kind, ProtocolDecodeError, Reason, decode, encode, kind_of, topic
from tests.unit.protocol_strategies import device_ids, messages

TS = 1_790_000_000.0


def _valid(kind: Kind) -> dict:
    """A valid message of each kind, as a JSON-ready dict."""
    env = {"v": "1.0", "device_id": "pi-7", "boot_id": "b-1", "seq": 3, "ts": TS}
    body = {
        Kind.TELEMETRY: {"samples": [{"ts": TS, "cpu_pct": 12.5, "temp_c": 51.0}]},
        Kind.EVENT: {"kind": "fault_raised", "code": "over_temp", "severity": "major"},
        Kind.PRESENCE: {"state": "online", "agent_version": "0.1.0", "keepalive_s": 30},
        Kind.COMMAND: {"kind": "reboot", "id": "cmd-1", "expires_at": TS + 60},
    }[kind]
    return {**env, **body}


def _decode_dict(kind: Kind, body: dict, device: str = "pi-7"):
    return decode(topic(device, kind), json.dumps(body).encode())


def _reason(kind: Kind, payload: bytes, device: str = "pi-7") -> Reason:
    with pytest.raises(ProtocolDecodeError) as info:
        decode(topic(device, kind), payload)
    return info.value.reason


@pytest.mark.parametrize("kind", list(Kind))
def test_valid_message_of_each_kind_decodes(kind: Kind) -> None:
    message = _decode_dict(kind, _valid(kind))
    assert message.device_id == "pi-7"
    assert kind_of(message) is kind


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: b"{not json", Reason.MALFORMED_JSON),
        (lambda d: b"\xff\xfe\x00", Reason.MALFORMED_JSON),
        (lambda d: b"", Reason.MALFORMED_JSON),
        (lambda d: b"[1, 2]", Reason.NOT_AN_OBJECT),
        (lambda d: b'"text"', Reason.NOT_AN_OBJECT),
        (lambda d: _dump({k: v for k, v in d.items() if k != "v"}), Reason.MISSING_VERSION),
        (lambda d: _dump({**d, "v": 1}), Reason.MISSING_VERSION),
        (lambda d: _dump({**d, "v": "2.0"}), Reason.UNSUPPORTED_VERSION),
        (lambda d: _dump({**d, "seq": "3"}), Reason.INVALID_FIELD),
        (lambda d: _dump({**d, "seq": -1}), Reason.INVALID_FIELD),
        (lambda d: _dump({**d, "ts": "X"}).replace(b'"X"', b"1e400"), Reason.INVALID_FIELD),
        (lambda d: _dump({k: v for k, v in d.items() if k != "boot_id"}), Reason.INVALID_FIELD),
        (lambda d: _dump({**d, "device_id": "pi-8"}), Reason.DEVICE_MISMATCH),
    ],
)
def test_malformed_message_on_each_topic_gets_precise_reason(kind, mutate, reason) -> None:
    assert _reason(kind, mutate(_valid(kind))) is reason


def _dump(d: dict) -> bytes:
    return json.dumps(d).encode()


@pytest.mark.parametrize("kind", list(Kind))
def test_oversize_payload_is_rejected_before_parsing(kind: Kind) -> None:
    payload = b" " * (p.MAX_PAYLOAD_BYTES[kind] + 1)
    assert _reason(kind, payload) is Reason.OVERSIZE


@pytest.mark.parametrize("kind", [Kind.EVENT, Kind.COMMAND])
def test_unknown_kind_is_its_own_reason_and_keeps_the_command_id(kind: Kind) -> None:
    body = {**_valid(kind), "kind": "self_destruct", "id": "cmd-9"}
    with pytest.raises(ProtocolDecodeError) as info:
        _decode_dict(kind, body)
    assert info.value.reason is Reason.UNKNOWN_KIND
    assert "self_destruct" in info.value.detail
    assert info.value.message_id == "cmd-9"


def test_wrong_type_names_the_field() -> None:
    body = _valid(Kind.TELEMETRY)
    body["samples"][0]["cpu_pct"] = "high"
    with pytest.raises(ProtocolDecodeError) as info:
        _decode_dict(Kind.TELEMETRY, body)
    assert info.value.reason is Reason.INVALID_FIELD
    assert "cpu_pct" in info.value.detail


def test_out_of_range_values_are_rejected() -> None:
    body = _valid(Kind.TELEMETRY)
    body["samples"][0]["cpu_pct"] = 250.0
    with pytest.raises(ProtocolDecodeError) as info:
        _decode_dict(Kind.TELEMETRY, body)
    assert info.value.reason is Reason.INVALID_FIELD


def test_newer_minor_version_with_extra_fields_is_accepted() -> None:
    body = {**_valid(Kind.PRESENCE), "v": "1.7", "battery_pct": 80}
    assert _decode_dict(Kind.PRESENCE, body).state is p.PresenceState.ONLINE


@pytest.mark.parametrize("kind", [Kind.TELEMETRY, Kind.PRESENCE])
def test_invalid_utf8_in_a_field_the_message_skips_is_still_malformed(kind: Kind) -> None:
    """A payload that is not valid JSON text is refused even when the bad bytes sit in a
    field the message type does not read (``id`` on telemetry), after a good message
    of the same version was accepted."""
    good = json.dumps(_valid(kind)).encode()
    assert decode(topic("pi-7", kind), good).device_id == "pi-7"
    bad = good[:-1] + b', "id": "' + bytes([0xFF]) + b'"}'
    assert _reason(kind, bad) is Reason.MALFORMED_JSON


def test_deeply_nested_json_is_rejected_not_crashing() -> None:
    payload = b'{"v":"1.0","x":' + b"[" * 20000 + b"]" * 20000 + b"}"
    assert _reason(Kind.EVENT, payload) in {Reason.MALFORMED_JSON, Reason.INVALID_FIELD}


def test_encoding_is_compact_and_deterministic() -> None:
    sample = p.Sample(ts=TS, cpu_pct=1.0, custom={"b": 2.0, "a": 1.0})
    msg = p.Telemetry(device_id="pi-7", boot_id="b-1", seq=1, ts=TS, samples=[sample])
    wire = encode(msg)
    assert b" " not in wire
    assert b"temp_c" not in wire, "absent sensor readings are omitted"
    assert wire.index(b'"a"') < wire.index(b'"b"'), "dict keys are sorted"
    assert encode(decode(topic("pi-7", Kind.TELEMETRY), wire)) == wire


def test_command_expiry() -> None:
    cmd = p.Reboot(device_id="pi-7", boot_id="srv", seq=1, ts=TS, id="c1", expires_at=TS + 10)
    assert not cmd.is_expired(TS + 9.9)
    assert cmd.is_expired(TS + 10)


def test_reboot_reason_error_bit() -> None:
    assert p.RebootReason.BROWN_OUT.is_error
    assert not p.RebootReason.FIRMWARE_UPDATE.is_error
    assert p.is_error_reboot(0x8123), "unknown newer codes keep their class"


@given(messages)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_every_valid_message_round_trips(message) -> None:
    wire = encode(message)
    decoded = decode(topic(message.device_id, kind_of(message)), wire)
    assert decoded == message
    assert encode(decoded) == wire


@given(device_ids, st.sampled_from(Kind), st.binary(max_size=2048))
@settings(max_examples=400)
def test_arbitrary_bytes_only_raise_the_decode_error(device_id, kind, payload) -> None:
    try:
        decode(topic(device_id, kind), payload)
    except ProtocolDecodeError as exc:
        assert isinstance(exc.reason, Reason)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(messages, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_valid_messages_only_raise_the_decode_error(message, data) -> None:
    kind = kind_of(message)
    body = msgspec.json.decode(encode(message))
    key = data.draw(st.sampled_from(sorted(body)))
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        body[key] = data.draw(_json_values)
    elif choice == 1:
        del body[key]
    else:
        body[data.draw(st.text(max_size=8))] = data.draw(_json_values)
    raw = msgspec.json.encode(body)
    cut = data.draw(st.integers(0, len(raw)))
    payload = raw if data.draw(st.booleans()) else raw[:cut]
    try:
        decoded = decode(topic(message.device_id, kind), payload)
    except ProtocolDecodeError as exc:
        assert isinstance(exc.reason, Reason)
    else:
        assert decoded.device_id == message.device_id

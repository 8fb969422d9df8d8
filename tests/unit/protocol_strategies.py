"""Hypothesis strategies that generate valid protocol messages."""

from __future__ import annotations

from hypothesis import strategies as st

import protocol as p
from protocol.topics import DEVICE_ID_PATTERN

device_ids = st.from_regex(DEVICE_ID_PATTERN, fullmatch=True)
boot_ids = st.from_regex(r"^[A-Za-z0-9-]{1,64}$", fullmatch=True)
seqs = st.integers(min_value=0, max_value=2**63 - 1)
timestamps = st.floats(min_value=0, max_value=1e11, allow_nan=False, allow_infinity=False)
finite = st.floats(min_value=-1e15, max_value=1e15, allow_nan=False, allow_infinity=False)
percent = st.floats(min_value=0, max_value=100, allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0, max_value=1e15, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=2**63 - 1)
codes = st.from_regex(r"^[a-z0-9][a-z0-9_.:-]{0,63}$", fullmatch=True)
identifiers = st.from_regex(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", fullmatch=True)
short_text = st.text(max_size=200)
versions = st.text(max_size=64)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite | short_text


samples = st.builds(
    p.Sample,
    ts=timestamps,
    cpu_pct=st.none() | percent,
    load_1m=st.none() | non_negative,
    mem_pct=st.none() | percent,
    swap_pct=st.none() | percent,
    disk_pct=st.none() | percent,
    disk_io_errors=st.none() | counts,
    temp_c=st.none() | st.floats(min_value=-100, max_value=300, allow_nan=False),
    throttled=st.none() | st.integers(0, 0xFFFFFFFF),
    undervoltage=st.none() | st.booleans(),
    fan_rpm=st.none() | non_negative,
    uptime_s=st.none() | non_negative,
    agent_rss_mb=st.none() | non_negative,
    net_rx_bytes=st.none() | counts,
    net_tx_bytes=st.none() | counts,
    emmc_life_used_pct=st.none() | percent,
    clock_synced=st.none() | st.booleans(),
    custom=st.dictionaries(st.text(min_size=1, max_size=64), finite, max_size=8),
)


def _with_envelope(cls, **fields):
    return st.builds(cls, device_id=device_ids, boot_id=boot_ids, seq=seqs, ts=timestamps, **fields)


telemetry = _with_envelope(
    p.Telemetry, samples=st.lists(samples, min_size=1, max_size=5), dropped_total=counts
)
presence = _with_envelope(
    p.Presence,
    state=st.sampled_from(p.PresenceState),
    agent_version=versions,
    keepalive_s=st.none() | st.integers(1, 65535),
)
events = st.one_of(
    _with_envelope(
        p.FaultRaised,
        code=codes,
        severity=st.sampled_from(p.Severity),
        value=st.none() | finite,
        threshold=st.none() | finite,
        message=short_text,
    ),
    _with_envelope(p.FaultCleared, code=codes, value=st.none() | finite),
    _with_envelope(
        p.UpdateStateChanged,
        execution_id=st.none() | identifiers,
        version=versions,
        from_state=st.none() | st.sampled_from(p.UpdateState),
        state=st.sampled_from(p.UpdateState),
        failure_class=st.none() | st.sampled_from(p.FailureClass),
        reason=short_text,
        attack=st.none() | codes,
    ),
    _with_envelope(
        p.Boot,
        reason=st.integers(0, 0xFFFF),
        agent_version=versions,
        software_version=versions,
        slot=st.none() | st.text(max_size=16),
        previous_boot_id=st.none() | boot_ids,
    ),
    _with_envelope(
        p.CommandAck,
        command_id=identifiers,
        status=st.sampled_from(p.AckStatus),
        reason=st.none() | st.sampled_from(p.RejectReason),
        detail=short_text,
        result=st.dictionaries(st.text(max_size=16), json_scalars, max_size=4),
    ),
)
_command_common = {"id": identifiers, "expires_at": timestamps}
commands = st.one_of(
    _with_envelope(p.CheckUpdate, **_command_common),
    _with_envelope(
        p.Install,
        **_command_common,
        target=st.text(min_size=1, max_size=100),
        version=versions,
        execution_id=identifiers,
    ),
    _with_envelope(p.Reboot, **_command_common, reason=short_text),
    _with_envelope(
        p.CollectDiagnostics, **_command_common, upload_url=st.none() | st.text(max_size=100)
    ),
    _with_envelope(
        p.SetConfig,
        **_command_common,
        values=st.dictionaries(st.text(max_size=16), json_scalars, max_size=4),
    ),
    _with_envelope(
        p.SafeMode,
        **_command_common,
        campaign_id=identifiers,
        reason=short_text,
        issued_at=timestamps,
        remedy_version=versions,
        signature=st.text(max_size=100),
    ),
)
messages = st.one_of(telemetry, presence, events, commands)

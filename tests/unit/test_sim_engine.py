"""Simulated devices run the real agent core: determinism, store and forward, boots, commands."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

import protocol as p
from simulator.engine import MemorySink, agent_settings, build_devices, jsonl_writer, run_offline
from simulator.fleet_builder import build_fleet
from simulator.scenario import ScenarioError, parse_scenario
from simulator.scenario_model import Scenario
from simulator.timeline import Timeline

HOUR = 3600.0


def scenario(events: list[dict[str, Any]] | None = None, **over: Any) -> Scenario:
    """A small fleet: four devices, six hours, one-minute samples, five-minute batches."""
    data: dict[str, Any] = {
        "scenario": {
            "name": "t",
            "seed": 11,
            "duration": over.pop("duration", "6h"),
            "tick": "10s",
            "sample_interval": "1m",
        },
        "agent": {"publish_interval": "5m", **over.pop("agent", {})},
        "fleet": {
            "devices": over.pop("devices", 4),
            "id_prefix": "t",
            "models": [
                {
                    "name": "m",
                    "share": 1.0,
                    "load": {"kind": "diurnal", "base_cpu_pct": 10},
                    "revisions": [{"name": "r", "share": 1.0}],
                }
            ],
            "batches": [{"name": "b", "share": 1.0}],
            "regions": [{"name": "eu", "share": 1.0, "timezone": "Europe/Berlin"}],
        },
        "events": events or [],
    }
    return parse_scenario(data)


def run(sc: Scenario, *, order: int = 1, slice_s: float = HOUR) -> tuple[Any, list[dict]]:
    buf = io.StringIO()
    fleet = build_fleet(sc)
    timeline = Timeline(sc, fleet)
    devices = build_devices(sc, fleet=fleet, timeline=timeline)[::order]
    result = run_offline(
        sc, devices, MemorySink(jsonl_writer(buf)), timeline=timeline, slice_s=slice_s
    )
    return result, [json.loads(line) for line in buf.getvalue().splitlines()]


def by_device(messages: list[dict], device_id: str, kind: str) -> list[dict]:
    return [m["payload"] for m in messages if m["topic"] == f"fleet/v1/{device_id}/{kind}"]


def test_a_run_is_deterministic_for_a_seed_whatever_the_order_and_slicing() -> None:
    sc = scenario([{"at": "2h", "kind": "inject", "fault": "fan_stall", "severity": 1.0}])
    first, _ = run(sc)
    again, _ = run(sc, order=-1, slice_s=777.0)
    assert first.digest == again.digest
    assert first.final.as_dict() == again.final.as_dict()
    other_seed, _ = run(parse_scenario_with_seed(sc, 12))
    assert other_seed.digest != first.digest


def parse_scenario_with_seed(sc: Scenario, seed: int) -> Scenario:
    from dataclasses import replace

    return replace(sc, seed=seed)


def test_every_message_is_valid_protocol_with_one_seq_per_device() -> None:
    result, messages = run(scenario())
    assert result.final.samples == 4 * 6 * 60
    for m in messages:
        payload = json.dumps(m["payload"]).encode()
        p.decode(m["topic"], payload)  # raises on anything the server would reject
    for device_id in {m["payload"]["device_id"] for m in messages}:
        seqs = [m["payload"]["seq"] for m in messages if m["payload"]["device_id"] == device_id]
        assert len(seqs) == len(set(seqs))
        batches = by_device(messages, device_id, "telemetry")
        samples = [s["ts"] for b in batches for s in b["samples"]]
        assert len(samples) == 6 * 60  # every sample delivered once
        assert samples == sorted(samples)


def test_a_partition_buffers_in_the_store_and_delivers_everything_after() -> None:
    sc = scenario(
        [{"at": "1h", "kind": "partition", "duration": "2h", "select": {"devices": ["t-00001"]}}]
    )
    result, messages = run(sc)
    presence = by_device(messages, "t-00001", "presence")
    states = [m["state"] for m in presence]
    # online, then the last will when the link is cut, then online again
    assert states == ["online", "offline", "online", "offline"]
    assert presence[1]["seq"] < presence[2]["seq"]
    batches = by_device(messages, "t-00001", "telemetry")
    assert sum(len(b["samples"]) for b in batches) == 6 * 60
    # the batches made during the partition arrive after it, in seq order
    seqs = [b["seq"] for b in batches]
    assert seqs == sorted(seqs)
    assert result.final.queued == 0
    assert result.final.dropped_samples == 0


def test_a_small_buffer_drops_the_oldest_and_reports_the_count() -> None:
    sc = scenario(
        [{"at": "1h", "kind": "partition", "duration": "4h", "select": {"devices": ["t-00002"]}}],
        agent={"buffer_max_bytes": 20_000},
    )
    result, messages = run(sc)
    batches = by_device(messages, "t-00002", "telemetry")
    delivered = sum(len(b["samples"]) for b in batches)
    dropped = max(b["dropped_total"] for b in batches)
    assert dropped > 0
    assert delivered + dropped == 6 * 60
    assert result.final.dropped_samples == dropped


def test_a_power_cut_stops_sampling_and_boots_with_a_new_boot_id() -> None:
    sc = scenario(
        [{"at": "2h", "kind": "power_cut", "duration": "30m", "select": {"devices": ["t-00003"]}}]
    )
    _, messages = run(sc)
    boots = [e for e in by_device(messages, "t-00003", "event") if e["kind"] == "boot"]
    assert [b["reason"] for b in boots] == [
        int(p.RebootReason.POWER_ON),
        int(p.RebootReason.POWER_LOSS),
    ]
    assert boots[1]["previous_boot_id"] == boots[0]["boot_id"]
    assert boots[1]["seq"] > boots[0]["seq"]  # seq continues across the reboot
    samples = [s for b in by_device(messages, "t-00003", "telemetry") for s in b["samples"]]
    # no samples while unpowered (true time 2h..2h30; the device clock is within seconds)
    start = sc.start
    assert not [s for s in samples if start + 2 * HOUR + 60 < s["ts"] < start + 2.5 * HOUR - 60]
    assert len(samples) < 6 * 60 - 25
    presence = [m["state"] for m in by_device(messages, "t-00003", "presence")]
    assert presence == ["online", "offline", "online", "offline"]


def test_an_injected_fault_raises_the_agents_alarm() -> None:
    sc = scenario(
        [
            {
                "at": "1h",
                "kind": "inject",
                "fault": "weak_psu",
                "severity": 1.0,
                "select": {"devices": ["t-00004"]},
            }
        ],
    )
    result, messages = run(sc)
    raised = [
        e["code"] for e in by_device(messages, "t-00004", "event") if e["kind"] == "fault_raised"
    ]
    assert "under_voltage" in raised
    for other in ("t-00001", "t-00002", "t-00003"):
        assert not [e for e in by_device(messages, other, "event") if e["kind"] == "fault_raised"]
    assert result.final.faults_raised >= 1


def test_adaptive_rules_from_the_agent_table_run_on_the_device() -> None:
    sc = scenario(agent={"adaptive": ["temp_c"]})
    devices = build_devices(sc)
    codes = {rule.code for rule in devices[0].core.faults.rules}
    assert "temp_c_anomaly" in codes
    assert "over_temperature" in codes


def test_a_bad_faults_table_is_a_scenario_error_naming_the_key() -> None:
    sc = scenario(agent={"faults": {"over_temp": {"raise_at": 70}}})
    with pytest.raises(ScenarioError, match=r"faults\.over_temp: unknown fault rule"):
        agent_settings(sc)
    with pytest.raises(ScenarioError, match=r"agent\.adaptive: expected a list"):
        scenario(agent={"adaptive": "temp_c"})


def command(kind: str, device_id: str, cid: str, now: float, **extra: Any) -> bytes:
    cls = {"reboot": p.Reboot, "install": p.Install}[kind]
    msg = cls(
        device_id=device_id, boot_id="srv", seq=1, ts=now, id=cid, expires_at=now + 600, **extra
    )
    return p.encode(msg)


def recorded_events(buf: io.StringIO) -> list[dict[str, Any]]:
    return [
        json.loads(line)["payload"]
        for line in buf.getvalue().splitlines()
        if json.loads(line)["topic"].endswith("/event")
    ]


def test_a_reboot_command_is_acked_and_the_device_boots_for_remote_command() -> None:
    sc = scenario(devices=1, duration="1h")
    (device,) = build_devices(sc)
    buf = io.StringIO()
    sink = MemorySink(jsonl_writer(buf))
    device.advance_to(sc.start + 600, sink)
    for _ in range(2):  # a redelivered command id does not run twice
        device.on_command(command("reboot", device.device_id, "c-1", device.device_time()))
        device.handle_commands(sink)
    device.advance_to(sc.start + 1200, sink)
    events = recorded_events(buf)
    acks = [e for e in events if e["kind"] == "command_ack"]
    assert [a["status"] for a in acks] == ["accepted", "completed"]
    boots = [e for e in events if e["kind"] == "boot"]
    assert [b["reason"] for b in boots] == [
        int(p.RebootReason.POWER_ON),
        int(p.RebootReason.REMOTE_COMMAND),
    ]
    assert device.stats.boots == 2


def test_commands_the_simulator_cannot_run_are_rejected_or_failed_not_crashed() -> None:
    sc = scenario(devices=1, duration="1h")
    (device,) = build_devices(sc)
    buf = io.StringIO()
    sink = MemorySink(jsonl_writer(buf))
    device.advance_to(sc.start + 120, sink)
    now = device.device_time()
    device.on_command(
        command(
            "install",
            device.device_id,
            "c-2",
            now,
            target="x.tar",
            version="2.0.0",
            execution_id="e1",
        )
    )
    device.on_command(b"{not json")
    device.handle_commands(sink)
    device.advance_to(sc.start + 600, sink)
    acks = [
        json.loads(line)["payload"]
        for line in buf.getvalue().splitlines()
        if '"command_ack"' in line
    ]
    assert [(a["command_id"], a["status"]) for a in acks] == [("c-2", "rejected")]

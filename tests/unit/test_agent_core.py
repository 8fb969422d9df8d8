"""The agent core: seq persistence, reboot reasons, schedule, batching and commands."""

from __future__ import annotations

import random

import msgspec
import pytest

from agent.core.agent_core import AgentCore
from agent.core.commands import CommandIntake
from agent.core.outputs import PersistSeq, Publish, RunCommand
from agent.core.reboot import PreviousRun, classify_start, recent_starts
from agent.core.rules import build_rules
from agent.core.schedule import Backoff, Periodic
from agent.core.sequence import SeqAllocator
from protocol import (
    AckStatus,
    CheckUpdate,
    CollectDiagnostics,
    CommandAck,
    FaultRaised,
    Install,
    Kind,
    Reboot,
    RebootReason,
    RejectReason,
    Sample,
    SetConfig,
    Telemetry,
    encode,
)

DEV = "pi-1"

# --- sequence ----------------------------------------------------------------------


def test_seq_reserves_blocks_and_never_reuses_numbers_after_a_crash() -> None:
    alloc = SeqAllocator(0, block=10)
    seq, reservation = alloc.take()
    assert (seq, reservation) == (0, 10)
    taken = [alloc.take() for _ in range(12)]
    assert [s for s, _ in taken] == list(range(1, 13))
    assert [r for _, r in taken if r is not None] == [20]  # one write per block
    # crash: only the persisted reservation (20) survives; restart jumps past it
    after = SeqAllocator(20, block=10)
    assert after.take()[0] == 20


def test_seq_starts_above_anything_still_in_the_store() -> None:
    assert SeqAllocator(5, floor=42).take()[0] == 42
    assert SeqAllocator(100, floor=42).take()[0] == 100


def test_core_persists_the_reservation_before_the_message_using_it() -> None:
    core = AgentCore(DEV, "b1", seq=SeqAllocator(0, block=2))
    outs = []
    for i in range(5):
        outs += core.flush(float(i)) if core.on_sample(Sample(ts=float(i))) == [] else []
    reserved = -1
    for out in outs:
        if isinstance(out, PersistSeq):
            reserved = out.reserved_until
        elif isinstance(out, Publish):
            assert out.message.seq < reserved
    seqs = [o.message.seq for o in outs if isinstance(o, Publish)]
    assert seqs == [0, 1, 2, 3, 4]


# --- reboot reasons ------------------------------------------------------------------

BOOT = "6f1c0c1e-0a55-4c36-9d0e-1d5f2f4a7b01"
OTHER = "0d3e5a77-2b9f-4f0e-8a61-5c1b9e7d2c44"


@pytest.mark.parametrize(
    ("previous", "kernel_boot", "expected"),
    [
        (None, BOOT, RebootReason.POWER_ON),
        (PreviousRun("b", BOOT, clean_stop=True), BOOT, RebootReason.AGENT_RESTART),
        (PreviousRun("b", BOOT, clean_stop=False), BOOT, RebootReason.AGENT_CRASH),
        (PreviousRun("b", BOOT, clean_stop=True), OTHER, RebootReason.USER_RESET),
        (PreviousRun("b", BOOT, clean_stop=False), OTHER, RebootReason.UNKNOWN_ERROR),
        (
            PreviousRun("b", BOOT, clean_stop=True, intended=RebootReason.REMOTE_COMMAND),
            OTHER,
            RebootReason.REMOTE_COMMAND,
        ),
        (
            PreviousRun("b", BOOT, clean_stop=False, intended=RebootReason.FIRMWARE_UPDATE),
            OTHER,
            RebootReason.FIRMWARE_UPDATE,
        ),
        (PreviousRun("b", None, clean_stop=False), None, RebootReason.UNKNOWN_ERROR),
    ],
)
def test_reboot_reason(
    previous: PreviousRun | None, kernel_boot: str | None, expected: RebootReason
) -> None:
    reason = classify_start(previous, kernel_boot)
    assert reason is expected
    assert reason.is_error == (expected.value >= 0x8000)


def test_start_history_is_bounded() -> None:
    starts = recent_starts([float(t) for t in range(100)], 100.0, keep=20)
    assert len(starts) == 20
    assert starts[-1] == 100.0
    assert recent_starts([0.0, 10.0], 200000.0) == [200000.0]


def test_boot_event_carries_the_reason() -> None:
    core = AgentCore(DEV, "b1", seq=SeqAllocator(0), agent_version="0.1.0")
    outs = core.boot(10.0, RebootReason.AGENT_CRASH, previous_boot_id="b0")
    event = next(o.message for o in outs if isinstance(o, Publish))
    assert event.reason == RebootReason.AGENT_CRASH
    assert event.previous_boot_id == "b0"


# --- schedule -----------------------------------------------------------------------


def test_periodic_timer_does_not_drift_or_burst() -> None:
    timer = Periodic(10.0, 0.0)
    fired = [t for t in [0.0, 5.0, 10.2, 19.9, 20.0, 30.5] if timer.due(t)]
    assert fired == [0.0, 10.2, 20.0, 30.5]
    timer = Periodic(10.0, 0.0)
    assert timer.due(0.0)
    assert timer.due(1000.0)  # after a long stall: one tick, not a hundred
    assert not timer.due(1001.0)


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0.5 <= d <= 30.0 for d in delays)
    assert max(delays[6:]) > 4.0
    backoff.reset()
    assert backoff.next_delay() <= 1.0


# --- batching and faults -------------------------------------------------------------


def test_samples_are_batched_at_publish_time_with_the_drop_count() -> None:
    core = AgentCore(DEV, "b1", seq=SeqAllocator(0))
    for i in range(5):
        core.on_sample(Sample(ts=float(i), cpu_pct=1.0))
    outs = [o for o in core.flush(5.0, dropped_total=7) if isinstance(o, Publish)]
    assert len(outs) == 1
    batch = outs[0].message
    assert isinstance(batch, Telemetry)
    assert [s.ts for s in batch.samples] == [0, 1, 2, 3, 4]
    assert batch.dropped_total == 7
    assert outs[0].samples == 5
    assert core.flush(6.0) == []


def test_large_backlogs_are_split_under_the_payload_limit() -> None:
    from protocol import MAX_PAYLOAD_BYTES

    core = AgentCore(DEV, "b1", seq=SeqAllocator(0))
    custom = {f"k{i}": float(i) for i in range(40)}
    for i in range(3000):
        core.on_sample(Sample(ts=float(i), cpu_pct=1.0, custom=custom))
    batches = [o.message for o in core.flush(3000.0) if isinstance(o, Publish)]
    assert len(batches) > 2
    assert all(len(encode(b)) <= MAX_PAYLOAD_BYTES[Kind.TELEMETRY] for b in batches)
    assert [s.ts for b in batches for s in b.samples] == [float(i) for i in range(3000)]


def test_fault_changes_become_events() -> None:
    core = AgentCore(DEV, "b1", seq=SeqAllocator(0), rules=build_rules({}))
    events = []
    for i in range(3):
        events += [
            o.message
            for o in core.on_sample(Sample(ts=float(i), temp_c=95.0))
            if isinstance(o, Publish)
        ]
    assert len(events) == 1
    assert isinstance(events[0], FaultRaised)
    assert events[0].code == "over_temperature"
    assert events[0].threshold == 80.0


# --- commands -----------------------------------------------------------------------


def command_bytes(cmd: object) -> bytes:
    return encode(cmd)  # type: ignore[arg-type]


def env(**kw: object) -> dict[str, object]:
    return {"device_id": DEV, "boot_id": "srv", "seq": 1, "ts": 100.0, "expires_at": 1000.0, **kw}


def acks(outs: list[object]) -> list[CommandAck]:
    return [o.message for o in outs if isinstance(o, Publish) and isinstance(o.message, CommandAck)]


def test_reboot_is_accepted_and_handed_to_the_adapters() -> None:
    core = AgentCore(DEV, "b1", seq=SeqAllocator(0))
    outs = core.on_command_payload(command_bytes(Reboot(**env(id="c1"))), now=200.0)
    assert [(a.command_id, a.status) for a in acks(outs)] == [("c1", AckStatus.ACCEPTED)]
    assert [o for o in outs if isinstance(o, RunCommand)] == [
        RunCommand("reboot", "c1", {"reason": ""})
    ]
    done = core.command_result("c1", 201.0, ok=True, detail="reboot initiated")
    assert acks(done)[0].status is AckStatus.COMPLETED


def test_duplicate_delivery_does_not_run_a_command_twice() -> None:
    core = AgentCore(DEV, "b1", seq=SeqAllocator(0))
    payload = command_bytes(Reboot(**env(id="c1")))
    assert core.on_command_payload(payload, 200.0)
    assert core.on_command_payload(payload, 201.0) == []


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (command_bytes(Reboot(**env(id="old", expires_at=150.0))), RejectReason.EXPIRED, "expired"),
        (
            command_bytes(CheckUpdate(**env(id="u1"))),
            RejectReason.UNKNOWN_COMMAND,
            "updates are not enabled",
        ),
        (
            command_bytes(
                Install(**env(id="u2", target="b.tar", version="2.0", execution_id="e1"))
            ),
            RejectReason.UNKNOWN_COMMAND,
            "updates are not enabled",
        ),
        (
            command_bytes(SetConfig(**env(id="s1", values={"a": 1}))),
            RejectReason.UNKNOWN_COMMAND,
            "set_config",
        ),
        (
            msgspec.json.encode({"v": "1.0", **env(id="k1"), "kind": "self_destruct"}),
            RejectReason.UNKNOWN_COMMAND,
            "self_destruct",
        ),
        (
            msgspec.json.encode({"v": "1.0", **env(id="k2", expires_at="soon"), "kind": "reboot"}),
            RejectReason.INVALID,
            "expires_at",
        ),
        (
            command_bytes(CollectDiagnostics(**env(id="d1", upload_url="ftp://x/y"))),
            RejectReason.INVALID,
            "upload_url",
        ),
    ],
)
def test_bad_commands_are_rejected_by_id_with_a_reason(
    payload: bytes, reason: RejectReason, detail: str
) -> None:
    core = AgentCore(DEV, "b1", seq=SeqAllocator(0))
    outs = core.on_command_payload(payload, now=200.0)
    [ack] = acks(outs)
    assert ack.status is AckStatus.REJECTED
    assert ack.reason is reason
    assert detail in ack.detail
    assert not any(isinstance(o, RunCommand) for o in outs)


@pytest.mark.parametrize(
    "payload", [b"", b"\xff\xfe", b"[1,2]", b'{"id": "has space", "kind": "x"}']
)
def test_unreadable_commands_are_counted_and_ignored(payload: bytes) -> None:
    intake = CommandIntake()
    core = AgentCore(DEV, "b1", seq=SeqAllocator(0), intake=intake)
    assert core.on_command_payload(payload, 200.0) == []
    assert intake.unreadable_total == 1


def test_handler_registry_can_be_extended() -> None:
    from agent.core.commands import accept

    intake = CommandIntake()
    intake.register(CheckUpdate, lambda cmd: accept("check_update"))
    core = AgentCore(DEV, "b1", seq=SeqAllocator(0), intake=intake)
    outs = core.on_command_payload(command_bytes(CheckUpdate(**env(id="u1"))), 200.0)
    assert RunCommand("check_update", "u1", {}) in outs


def test_every_published_message_decodes_on_its_topic() -> None:
    from protocol import decode, topic

    core = AgentCore(DEV, "b1", seq=SeqAllocator(0), rules=build_rules({}))
    outs = core.boot(1.0, RebootReason.POWER_ON)
    for i in range(3):
        outs += core.on_sample(Sample(ts=float(i), temp_c=99.0, custom={"n": float(i)}))
    outs += core.flush(5.0)
    outs += core.on_command_payload(b"{}", 6.0)
    outs += core.on_command_payload(command_bytes(Reboot(**env(id="c9", expires_at=1.0))), 7.0)
    published = [o for o in outs if isinstance(o, Publish)]
    assert {p.kind for p in published} == {Kind.EVENT, Kind.TELEMETRY}
    for p in published:
        assert decode(topic(DEV, p.kind), encode(p.message)) == p.message

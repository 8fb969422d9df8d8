"""``AgentCore``: the whole device-side decision logic as one plain object.

It is fed observations (samples, received command payloads, command results) together
with the current time, and returns :mod:`agent.core.outputs` for the adapters to carry
out in order. It never sleeps, reads the clock, or touches disk or network, so the
daemon runs one and the simulator runs thousands in one process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from agent.core.commands import CommandIntake
from agent.core.fault_types import FaultChange, FaultRule
from agent.core.faults import FaultEngine
from agent.core.outputs import Output, PersistSeq, Publish, RunCommand
from agent.core.sequence import SeqAllocator
from protocol import (
    AckStatus,
    Boot,
    CertificateRequest,
    CommandAck,
    FaultCleared,
    FaultRaised,
    Kind,
    Presence,
    PresenceState,
    ProtocolDecodeError,
    RebootReason,
    RejectReason,
    Sample,
    Telemetry,
    UpdateStateChanged,
    decode_payload,
)

MAX_BATCH = 2000
"""The protocol's per-message sample limit; longer backlogs are split into batches."""
MAX_BATCH_BYTES = 192 * 1024
"""Stay well under the protocol's 256 KiB telemetry payload limit."""
_SAMPLES_ENCODER = msgspec.json.Encoder()

_FINITE = 1e15


def _finite(value: float | None) -> float | None:
    if value is None or not (-_FINITE <= value <= _FINITE):
        return None
    return value


class AgentCore:
    """Sampling results in, protocol messages out; one instance per device and boot."""

    def __init__(
        self,
        device_id: str,
        boot_id: str,
        *,
        seq: SeqAllocator,
        rules: Iterable[FaultRule] = (),
        agent_version: str = "",
        software_version: str = "",
        intake: CommandIntake | None = None,
    ) -> None:
        self.device_id = device_id
        self.boot_id = boot_id
        self.seq = seq
        self.faults = FaultEngine(rules)
        self.agent_version = agent_version
        self.software_version = software_version
        self.intake = intake or CommandIntake()
        self.pending: list[Sample] = []
        self.last_sample: Sample | None = None

    # --- envelope --------------------------------------------------------------------

    def _next_seq(self, out: list[Output]) -> int:
        seq, reservation = self.seq.take()
        if reservation is not None:
            out.append(PersistSeq(reservation))
        return seq

    def _env(self, out: list[Output], now: float) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "seq": self._next_seq(out),
            "ts": now,
        }

    # --- lifecycle -------------------------------------------------------------------

    def boot(
        self,
        now: float,
        reason: RebootReason,
        previous_boot_id: str | None = None,
        slot: str | None = None,
    ) -> list[Output]:
        """The ``Boot`` event announcing this start, its typed reason and, on devices that
        take updates, the slot it runs from."""
        out: list[Output] = []
        event = Boot(
            **self._env(out, now),
            reason=int(reason),
            agent_version=self.agent_version,
            software_version=self.software_version,
            previous_boot_id=previous_boot_id,
            slot=slot,
        )
        out.append(Publish(Kind.EVENT, event))
        return out

    def presence(
        self,
        state: PresenceState,
        now: float,
        keepalive_s: int | None = None,
        interval_s: float | None = None,
    ) -> list[Output]:
        """A retained presence message (``offline`` is also used as the last will). It
        announces the MQTT keepalive and the publish interval: the server's backstop
        sweep never times the device out before a multiple of the longer one."""
        out: list[Output] = []
        msg = Presence(
            **self._env(out, now),
            state=state,
            agent_version=self.agent_version,
            keepalive_s=keepalive_s,
            interval_s=interval_s,
        )
        out.append(Publish(Kind.PRESENCE, msg, durable=False, retain=True))
        return out

    # --- samples and faults ----------------------------------------------------------

    def on_sample(self, sample: Sample) -> list[Output]:
        """Keep the sample for the next batch and run the fault rules on it."""
        self.pending.append(sample)
        self.last_sample = sample
        out: list[Output] = []
        for change in self.faults.update(sample):
            out.extend(self._fault_event(change))
        return out

    def _fault_event(self, change: FaultChange) -> list[Output]:
        out: list[Output] = []
        event: FaultRaised | FaultCleared
        if change.raised:
            event = FaultRaised(
                **self._env(out, change.ts),
                code=change.code,
                severity=change.severity,
                value=_finite(change.value),
                threshold=_finite(change.threshold),
                message=change.message[:1024],
            )
        else:
            event = FaultCleared(
                **self._env(out, change.ts), code=change.code, value=_finite(change.value)
            )
        out.append(Publish(Kind.EVENT, event))
        return out

    def restore_pending(self, samples: Iterable[Sample]) -> None:
        """Put back samples measured before a restart but not yet batched."""
        self.pending[:0] = list(samples)

    def flush(self, now: float, dropped_total: int = 0) -> list[Output]:
        """Turn the pending samples into telemetry batch(es); ``dropped_total`` is the
        buffer's cumulative count of dropped samples, reported to the server."""
        out: list[Output] = []
        while self.pending:
            size = min(len(self.pending), MAX_BATCH)
            while size > 1 and len(_SAMPLES_ENCODER.encode(self.pending[:size])) > MAX_BATCH_BYTES:
                size //= 2
            chunk, self.pending = self.pending[:size], self.pending[size:]
            msg = Telemetry(**self._env(out, now), samples=chunk, dropped_total=dropped_total)
            out.append(Publish(Kind.TELEMETRY, msg, samples=len(chunk)))
        return out

    # --- commands --------------------------------------------------------------------

    def certificate_request(self, csr: str, now: float) -> list[Output]:
        """Ask the fleet CA to renew this device's certificate for the key behind ``csr``
        (sent only while connected: the answer needs the live connection anyway)."""
        out: list[Output] = []
        event = CertificateRequest(**self._env(out, now), csr=csr)
        out.append(Publish(Kind.EVENT, event, durable=False))
        return out

    def on_command_payload(self, payload: bytes, now: float) -> list[Output]:
        """Handle a payload received on this device's command topic: run, or reject by id."""
        try:
            decoded = decode_payload(Kind.COMMAND, self.device_id, payload)
        except ProtocolDecodeError as exc:
            decoded = exc
        intake = self.intake.receive(decoded, now)
        if intake.command_id is None or intake.decision is None:
            return []
        decision = intake.decision
        if not decision.accepted:
            return self._ack(
                intake.command_id, AckStatus.REJECTED, now, decision.reason, decision.detail
            )
        out = self._ack(intake.command_id, AckStatus.ACCEPTED, now)
        out.append(RunCommand(decision.kind, intake.command_id, dict(decision.params)))
        return out

    def command_result(
        self,
        command_id: str,
        now: float,
        *,
        ok: bool,
        detail: str = "",
        result: dict[str, Any] | None = None,
    ) -> list[Output]:
        """Acknowledge the outcome of a command the adapters ran."""
        status = AckStatus.COMPLETED if ok else AckStatus.FAILED
        return self._ack(command_id, status, now, None, detail, result or {})

    def _ack(
        self,
        command_id: str,
        status: AckStatus,
        now: float,
        reason: RejectReason | None = None,
        detail: str = "",
        result: dict[str, Any] | None = None,
    ) -> list[Output]:
        out: list[Output] = []
        ack = CommandAck(
            **self._env(out, now),
            command_id=command_id,
            status=status,
            reason=reason,
            detail=detail[:1024],
            result=result or {},
        )
        out.append(Publish(Kind.EVENT, ack))
        return out

    # --- updates ---------------------------------------------------------------------

    def update_state(self, now: float, **fields: Any) -> list[Output]:
        """An ``UpdateStateChanged`` event (fields as in the protocol model) for the
        outbox: every transition of the update flow is reported this way."""
        out: list[Output] = []
        reason = str(fields.pop("reason", "") or "")[:1024]
        event = UpdateStateChanged(**self._env(out, now), reason=reason, **fields)
        out.append(Publish(Kind.EVENT, event))
        return out

    # --- state -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Fault state for the state file (seq and pending samples are saved elsewhere)."""
        return {"faults": self.faults.snapshot()}

    def restore(self, state: dict[str, Any]) -> list[str]:
        """Resume the fault state of :meth:`snapshot`; return the rules whose state was refused."""
        faults = state.get("faults")
        return self.faults.restore(faults) if isinstance(faults, dict) else []

"""The one output applier: what the agent core asks (:mod:`agent.core.outputs`) turned into
actions on the outbox, the transport and the command runners.

The daemon and every simulated device apply the core's outputs with this class; only the
callbacks differ (the daemon saves the seq reservation in its state file and publishes
direct messages through MQTT; a simulated device keeps both in memory and hands direct
messages to its link).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from agent.core.outputs import Output, PersistSeq, Publish, RunCommand
from agent.store import Outbox
from protocol import Kind, encode, topic


class OutputApplier:
    """Carries out core outputs in order: durable messages go to the on-disk outbox (in
    seq order, kept while offline), others straight to the link, commands to the runners'
    queue, seq reservations to storage *before* anything that uses them is published."""

    def __init__(
        self,
        device_id: str,
        outbox: Outbox,
        *,
        persist_seq: Callable[[int], None],
        send_direct: Callable[[Kind, str, bytes, bool], None],
        run: Callable[[RunCommand], None],
        observe: Callable[[Publish], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.topics = {kind: topic(device_id, kind) for kind in Kind}
        self.persist_seq = persist_seq
        self.send_direct = send_direct
        self.run = run
        self.observe = observe
        """Sees every message before it is queued or sent (the simulator counts faults)."""

    def apply(self, outputs: Iterable[Output]) -> None:
        """Carry out ``outputs`` in the order the core gave them."""
        for out in outputs:
            if isinstance(out, PersistSeq):
                self.persist_seq(out.reserved_until)
            elif isinstance(out, Publish):
                if self.observe is not None:
                    self.observe(out)
                payload = encode(out.message)
                if out.durable:
                    self.outbox.put(
                        out.message.seq,
                        self.topics[out.kind],
                        payload,
                        out.message.ts,
                        out.samples,
                        clear_stash=out.kind is Kind.TELEMETRY,
                    )
                else:
                    self.send_direct(out.kind, self.topics[out.kind], payload, out.retain)
            elif isinstance(out, RunCommand):
                self.run(out)

    def last_will(self, outputs: Iterable[Output]) -> bytes:
        """The encoded ``offline`` presence of a connection's last will: its seq
        reservation is persisted, the message itself is not sent now."""
        will: list[Publish] = []
        for out in outputs:
            if isinstance(out, PersistSeq):
                self.persist_seq(out.reserved_until)
            elif isinstance(out, Publish):
                will.append(out)
        return encode(will[0].message)

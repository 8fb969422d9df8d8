"""What the agent core asks its adapters to do, in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol import Envelope, Kind


@dataclass(frozen=True, slots=True)
class Publish:
    """Send ``message`` on its topic. ``durable`` messages go through the on-disk queue
    (delivered in seq order, kept while offline); others are sent only when connected."""

    kind: Kind
    message: Envelope
    durable: bool = True
    retain: bool = False
    samples: int = 0
    """Number of samples carried (telemetry), so drops can be counted in samples."""


@dataclass(frozen=True, slots=True)
class PersistSeq:
    """Save the new seq reservation before publishing anything that uses it."""

    reserved_until: int


@dataclass(frozen=True, slots=True)
class RunCommand:
    """Carry out an accepted command (``kind`` is the command's tag, e.g. ``reboot``);
    report back with ``AgentCore.command_result``."""

    kind: str
    command_id: str
    params: dict[str, Any] = field(default_factory=dict)


Output = Publish | PersistSeq | RunCommand

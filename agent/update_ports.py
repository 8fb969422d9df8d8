"""What the update driver needs from the world, as small protocols, and their plain values.

The driver (:mod:`agent.update_driver`) decides nothing and touches nothing itself: it
asks these back-ends. The daemon plugs in the real ones (python-tuf fetcher, bundle files,
directory slots, health checks, the update file on disk); a simulated device plugs in
simulated ones (static targets, simulated outcomes, memory), and tests plug in whatever
they need, all without changing one line of the driver.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agent.core.update_flow import TargetInfo, UpdateRecord
from agent.state import atomic_write
from protocol import FailureClass

log = logging.getLogger("agent.updater")


class FetchError(Exception):
    """A target could not be had: ``transient`` problems (network) are retried with
    backoff, the others end the update at once (``attack`` set for security refusals)."""

    def __init__(
        self,
        failure_class: FailureClass,
        reason: str,
        attack: str | None = None,
        *,
        transient: bool = False,
        phase: str = "download",
    ) -> None:
        super().__init__(reason)
        self.phase = phase
        self.failure_class = failure_class
        self.reason = reason
        self.attack = attack
        self.transient = transient


class BundleRefusedError(Exception):
    """The downloaded bundle is not installable (bad archive, payload hash, manifest)."""


@dataclass(frozen=True, slots=True)
class FetchedTarget:
    """A target as the signed metadata describes it. ``described`` is the fetcher's own
    description (JSON data, persisted) with which it can verify the file again later."""

    name: str
    info: TargetInfo
    described: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TargetListing:
    """The installable candidates of a metadata refresh (``check_update``)."""

    version: int
    targets: list[FetchedTarget]


@dataclass(frozen=True, slots=True)
class BundleContents:
    """What the driver needs from a bundle's manifest once it is unpacked."""

    version: str
    hardware_revisions: tuple[str, ...]
    health: dict[str, Any] | None = None
    simulation: dict[str, Any] | None = None
    raspberry_pi: dict[str, Any] | None = None
    """The Pi models and minimum EEPROM date a whole-image bundle needs (None: any)."""


@runtime_checkable
class BoardCheck(Protocol):
    """Slots that can tell whether this board takes a bundle's image (tryboot slots)."""

    def board_refusal(self, needs: dict[str, Any]) -> str | None:
        """Why this board cannot run an image made for ``needs`` (the manifest's
        ``raspberry_pi`` block), None when it can."""
        ...


class TargetFetcher(Protocol):
    """Signed target metadata and verified downloads (python-tuf on a device)."""

    def refresh(self) -> None:
        """Bring the trusted metadata up to date (raises :class:`FetchError`)."""
        ...

    def target_info(self, name: str) -> FetchedTarget | None:
        """The signed description of ``name``, None when it is not published."""
        ...

    def download(self, target: FetchedTarget) -> Path:
        """Fetch ``target`` and verify its length and hashes; the local file."""
        ...

    def verify(self, target: FetchedTarget, path: Path) -> None:
        """Check a file downloaded before a restart again (``FileNotFoundError`` when
        it is gone, :class:`FetchError` when it changed)."""
        ...

    def listing(self) -> TargetListing:
        """Every published target with valid metadata (after :meth:`refresh`)."""
        ...


class BundleReader(Protocol):
    """Opens a downloaded bundle: checks it and unpacks its payload for the slots."""

    def read(self, bundle: Path, staging: Path | None) -> BundleContents:
        """Verify ``bundle`` and unpack it into ``staging`` when the slots need files
        (raises :class:`BundleRefusedError`)."""
        ...


class TrialCheck(Protocol):
    """How the new slot fares once booted: a crash on boot or a failed health check."""

    def boot_crashes(self, work: dict[str, Any]) -> bool:
        """True when the new slot dies on boot (``work`` holds the bundle's details)."""
        ...

    def problem(
        self, record: UpdateRecord, work: dict[str, Any]
    ) -> tuple[FailureClass, str] | None:
        """Run the health check of the trial; ``(failure class, reason)`` or None."""
        ...


class UpdateHost(Protocol):
    """What the driver needs from the agent that runs it."""

    def emit(self, fields: dict[str, Any]) -> None:
        """Queue an ``UpdateStateChanged`` event durably (returns once it is queued)."""
        ...

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        """Acknowledge the outcome of an ``install`` / ``check_update`` command."""
        ...

    def request_restart(self, reboot: bool) -> None:
        """Restart the agent or reboot the device to run the switched slot."""
        ...

    def crash(self) -> None:
        """Die abruptly (the new slot crashes on boot). A host that cannot die (a
        simulated device) returns, and the driver plays the restarts it would cause."""
        ...

    def rolled_back(self) -> None:
        """The slots went back to the known-good one while the new one ran: restart
        into it where the platform needs that (a simulated device reboots)."""
        ...


class UpdateStore(Protocol):
    """Where the driver's document (record, quarantine, work) survives restarts."""

    def load(self) -> dict[str, Any] | None:
        """The last saved document, None when there is none (or it was corrupt)."""
        ...

    def save(self, doc: dict[str, Any]) -> None:
        """Replace the document atomically (a crash leaves the old or the new one)."""
        ...


class FileUpdateStore:
    """The document in a JSON file, written with temp file, fsync and rename."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        """Read the file; a corrupt one is moved aside (kept for inspection)."""
        try:
            data = json.loads(self.path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("not an object")
            UpdateRecord.from_dict(data["record"])
            return data
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.error("update record %s is corrupt (%s); moved to %s", self.path, exc, aside)
            os.replace(self.path, aside)
            return None

    def save(self, doc: dict[str, Any]) -> None:
        """Atomic write (see :func:`agent.state.atomic_write`)."""
        atomic_write(self.path, json.dumps(doc, sort_keys=True).encode())


class MemoryUpdateStore:
    """The document in memory (a simulated device's flash, unit tests)."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        """A copy of the last saved document."""
        return json.loads(json.dumps(self.doc)) if self.doc is not None else None

    def save(self, doc: dict[str, Any]) -> None:
        """Keep ``doc`` (it is rebuilt by the driver at each save, never mutated)."""
        self.doc = doc
        self.saves += 1


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    """The device's settings the driver decides with."""

    hardware_revision: str
    agent_version: str
    model: str | None = None
    max_attempts: int = 3
    download_retries: int = 5
    retry_backoff_s: float = 2.0
    restart: str = "none"
    """How the switched slot is booted: ``none`` (in place), ``exit``/``agent`` (restart
    the agent) or ``reboot`` (reboot the device)."""
    phase_delay_s: dict[str, float] = field(default_factory=dict)
    """Extra time a state takes before its work runs (simulated timing; empty on devices)."""

"""What :func:`~fleet_server.rollouts.decide.decide` answers: typed, immutable actions.

The store applies them in one transaction (:func:`fleet_server.rollouts.store.apply`);
:class:`Dispatch` actions are published after the commit. Each action says in
``describe()`` what it does, for the tick's log.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Join:
    """Devices that joined the target enter ``wave`` (the earliest not started)."""

    device_keys: tuple[int, ...]
    wave: int

    def describe(self) -> str:
        """A line for the log."""
        return f"{len(self.device_keys)} late joiner(s) into wave {self.wave}"


@dataclass(frozen=True, slots=True)
class Exclude:
    """A newly matched device is left out, with the reason."""

    device_key: int
    reason: str
    detail: str

    def describe(self) -> str:
        """A line for the log."""
        return f"device #{self.device_key} excluded ({self.reason})"


@dataclass(frozen=True, slots=True)
class Extend:
    """Pending devices of later waves move into ``wave`` to grow its sample."""

    device_keys: tuple[int, ...]
    wave: int

    def describe(self) -> str:
        """A line for the log."""
        return f"wave {self.wave} extended by {len(self.device_keys)}"


@dataclass(frozen=True, slots=True)
class ResetBake:
    """The wave changed (it was extended): a later pass bakes afresh."""

    def describe(self) -> str:
        """A line for the log."""
        return "bake reset"


@dataclass(frozen=True, slots=True)
class StartBake:
    """``wave`` passed its failure criteria; it bakes under the health gates."""

    wave: int
    bake_s: int

    def describe(self) -> str:
        """A line for the log."""
        return f"wave {self.wave} passed, baking"


@dataclass(frozen=True, slots=True)
class Advance:
    """The bake is over and healthy: ``wave`` starts."""

    wave: int

    def describe(self) -> str:
        """A line for the log."""
        return f"wave {self.wave} started"


@dataclass(frozen=True, slots=True)
class Halt:
    """A criterion or health gate failed: the rollout halts; ``action`` is the policy's."""

    reason: str
    stratum: str | None
    failure_class: str | None
    action: str

    def describe(self) -> str:
        """A line for the log."""
        return f"halted ({self.action}): {self.reason}"


@dataclass(frozen=True, slots=True)
class ReleasePending:
    """Every device of the rollout not sent its install yet is released."""

    reason: str

    def describe(self) -> str:
        """A line for the log."""
        return f"pending devices released: {self.reason}"


@dataclass(frozen=True, slots=True)
class RollBack:
    """Send ``device_keys`` back to ``version``. ``start``: the rollout itself rolls back
    now (state, release of pending devices, history); otherwise devices are added to a
    rollback under way."""

    version: str
    device_keys: tuple[int, ...]
    start: bool = False
    reason: str = ""

    def describe(self) -> str:
        """A line for the log."""
        return f"{len(self.device_keys)} device(s) sent back to {self.version}"


@dataclass(frozen=True, slots=True)
class Complete:
    """Every wave passed (or the whole reachable target executed within the limits)."""

    note: str = ""
    mark_preprod: bool = False
    """The bundle has now completed a pre-production rollout."""

    def describe(self) -> str:
        """A line for the log."""
        return "completed"


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send the install of the device's pending execution (after the commit).
    ``rollback``: its rollback execution; ``ttl_s`` None: the execution's own
    ``accept_s``."""

    device_key: int
    ttl_s: float | None = None
    rollback: bool = False

    def describe(self) -> str:
        """A line for the log."""
        return f"send install to device #{self.device_key}"


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to change yet, and why (for the log)."""

    reason: str

    def describe(self) -> str:
        """A line for the log."""
        return self.reason


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must fix (logged as an error), e.g. a rollback bundle gone."""

    message: str

    def describe(self) -> str:
        """A line for the log."""
        return self.message


Action = (
    Join
    | Exclude
    | Extend
    | ResetBake
    | StartBake
    | Advance
    | Halt
    | ReleasePending
    | RollBack
    | Complete
    | Dispatch
    | Wait
    | Alert
)
"""Everything decide may answer."""

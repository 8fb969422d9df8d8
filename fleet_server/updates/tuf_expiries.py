"""Validity periods of the TUF repository's roles, and how early each is re-signed.

:class:`Expiries` is stored in the repository's ``edgefleet-repo.json`` and read by
:class:`fleet_server.updates.tuf_repository.TufRepository`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from tuf.api.metadata import Root

from fleet_server.updates.tuf_signing import ONLINE_ROLES


@dataclass(frozen=True)
class Expiries:
    """How long each role's metadata stays valid, and how early it is re-signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)
    # re-sign when less than this much validity is left
    targets_margin: timedelta = timedelta(days=14)
    snapshot_margin: timedelta = timedelta(days=2)
    timestamp_margin: timedelta = timedelta(hours=8)
    root_warning: timedelta = timedelta(days=30)

    def for_role(self, role: str) -> timedelta:
        """Validity period of ``role``."""
        return getattr(self, role)  # type: ignore[no-any-return]

    def margin(self, role: str) -> timedelta:
        """How long before expiry ``role`` is re-signed (root: warned about)."""
        return self.root_warning if role == Root.type else getattr(self, f"{role}_margin")  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, int]:
        """Seconds per field (stored in ``edgefleet-repo.json``)."""
        return {k: int(v.total_seconds()) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> Expiries:
        """Inverse of ``to_json``; unknown keys are ignored."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: timedelta(seconds=int(v)) for k, v in data.items() if k in known})

    def check(self) -> None:
        """Refuse settings where a role would be re-signed before every use.

        Raises:
            ValueError: a margin is not shorter than its role's validity.
        """
        for role in ONLINE_ROLES:
            if not timedelta(0) < self.margin(role) < self.for_role(role):
                raise ValueError(f"{role} margin must be positive and shorter than its expiry")

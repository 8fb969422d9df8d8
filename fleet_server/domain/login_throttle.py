"""Sign-in throttling for console users: a pure decision over recent failures.

Two limits apply at once: per account (guessing one person's password from anywhere)
and per address (one client guessing many accounts). Each is "at most ``limit`` failures
within ``window_s``"; past it, sign-in from that account or address is refused until the
oldest counted failure leaves the window, and the refusal says which limit and how long.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failures each scope tolerates within the window."""

    account_limit: int = 5
    address_limit: int = 20
    window_s: float = 900.0


@dataclass(frozen=True)
class ThrottleRefusal:
    """Sign-in is refused for ``scope`` (``account`` or ``address``) for ``retry_after_s``."""

    scope: str
    retry_after_s: int

    @property
    def message(self) -> str:
        """The sentence the login page shows."""
        minutes = max(1, math.ceil(self.retry_after_s / 60))
        what = "this account" if self.scope == "account" else "your address"
        return (
            f"Too many failed sign-ins for {what}. Try again in {minutes} minute"
            f"{'s' if minutes != 1 else ''}."
        )


def _wait(failures: Sequence[float], limit: int, window_s: float, now: float) -> int | None:
    recent = sorted(t for t in failures if now - t < window_s)
    if len(recent) < limit:
        return None
    release = recent[-limit] + window_s
    return max(1, math.ceil(release - now))


def refusal(
    account_failures: Sequence[float],
    address_failures: Sequence[float],
    now: float,
    policy: ThrottlePolicy = ThrottlePolicy(),
) -> ThrottleRefusal | None:
    """The refusal for a sign-in attempted at ``now``, or None when it may proceed.

    ``account_failures`` are the account's failure times since its last success;
    ``address_failures`` the address's failure times (any account)."""
    account = _wait(account_failures, policy.account_limit, policy.window_s, now)
    if account is not None:
        return ThrottleRefusal("account", account)
    address = _wait(address_failures, policy.address_limit, policy.window_s, now)
    if address is not None:
        return ThrottleRefusal("address", address)
    return None

"""Why did the device (or the agent) start? Typed reboot reasons from persisted facts.

Before any intended restart (a reboot command, an update, a clean shutdown) the agent
records it in its state file. At the next start :func:`classify_start` compares that
record, whether the previous run stopped cleanly, and the kernel's boot id with the
previous run's, and returns a :class:`~protocol.RebootReason`: normal codes for intended
restarts, error codes (``>= 0x8000``) for everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import RebootReason


@dataclass(frozen=True, slots=True)
class PreviousRun:
    """What the state file says about the previous agent run."""

    boot_id: str | None
    machine_boot_id: str | None
    """The kernel's boot id (``/proc/sys/kernel/random/boot_id``) during that run."""
    clean_stop: bool
    intended: RebootReason | None = None


def classify_start(previous: PreviousRun | None, machine_boot_id: str | None) -> RebootReason:
    """The reason for this start.

    * no previous run: ``POWER_ON`` (first start on this device);
    * an intended restart was recorded: that reason (remote command, update, shutdown);
    * the machine did not reboot: ``AGENT_RESTART`` after a clean stop, else ``AGENT_CRASH``;
    * the machine rebooted after a clean stop: ``USER_RESET`` (someone rebooted it);
    * the machine rebooted while the agent was running: ``UNKNOWN_ERROR`` (power loss,
      kernel panic, watchdog: the agent cannot tell which).
    """
    if previous is None:
        return RebootReason.POWER_ON
    if previous.intended is not None:
        return previous.intended
    # A kernel boot id (unlike a boot *time*) does not move when NTP steps the clock.
    rebooted = (
        machine_boot_id is None
        or previous.machine_boot_id is None
        or machine_boot_id != previous.machine_boot_id
    )
    if not rebooted:
        return RebootReason.AGENT_RESTART if previous.clean_stop else RebootReason.AGENT_CRASH
    return RebootReason.USER_RESET if previous.clean_stop else RebootReason.UNKNOWN_ERROR


def recent_starts(
    starts: list[float], now: float, *, keep: int = 20, horizon_s: float = 86400.0
) -> list[float]:
    """The start history to persist: this start appended, bounded by count and age."""
    kept = [t for t in starts if isinstance(t, int | float) and 0 <= now - t <= horizon_s]
    kept.append(now)
    return kept[-keep:]

"""Command intake: decode, check expiry and duplicates, route to a handler, acknowledge.

The registry maps a command class to a handler that decides, without I/O, whether to
accept it and what the adapters must run. With updates enabled, ``agent.updater``
registers the ``CheckUpdate`` and ``Install`` handlers here; otherwise they are rejected
with a clear reason.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol import (
    CheckUpdate,
    CollectDiagnostics,
    Command,
    Install,
    InstallCertificate,
    ProtocolDecodeError,
    Reason,
    Reboot,
    RejectReason,
    SetConfig,
)
from protocol.times import iso

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
"""A command id that can be acknowledged (the protocol's ``Identifier``)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A handler's answer: accept (and run ``kind`` with ``params``) or reject."""

    accepted: bool
    reason: RejectReason | None = None
    detail: str = ""
    kind: str = ""
    params: dict[str, Any] = field(default_factory=dict)


def accept(kind: str, **params: Any) -> Decision:
    """Accept a command; the adapters run ``kind`` and report the result."""
    return Decision(True, kind=kind, params=params)


def reject(reason: RejectReason, detail: str) -> Decision:
    """Refuse a command with a machine-readable reason and a sentence for humans."""
    return Decision(False, reason=reason, detail=detail)


Handler = Callable[[Any], Decision]


def expiry_detail(cmd: Command, now: float) -> str:
    """Why an expired command is refused, with ISO dates (never raw epoch seconds)."""
    if cmd.ttl_s is not None:
        return f"expired: its time to live is {cmd.ttl_s:g} s from receipt"
    return (
        f"expired at {iso(cmd.expires_at)} by the device clock, which reads {iso(now)} "
        f"({now - cmd.expires_at:.0f} s later)"
    )


def _reboot(cmd: Reboot) -> Decision:
    return accept("reboot", reason=cmd.reason)


def _diagnostics(cmd: CollectDiagnostics) -> Decision:
    url = cmd.upload_url
    if url is not None and not url.startswith(("http://", "https://")):
        return reject(RejectReason.INVALID, "upload_url must be an http:// or https:// URL")
    return accept("collect_diagnostics", upload_url=url)


def _updates_disabled(cmd: Command) -> Decision:
    return reject(RejectReason.UNKNOWN_COMMAND, "updates are not enabled on this agent")


def _set_config(cmd: SetConfig) -> Decision:
    return reject(
        RejectReason.UNKNOWN_COMMAND,
        "set_config is not supported by this agent; change /etc/edgefleet/agent.toml",
    )


def _install_certificate(cmd: InstallCertificate) -> Decision:
    # The runner checks it belongs to the pending key before anything is replaced.
    return accept("install_certificate", certificate=cmd.certificate, ca_chain=cmd.ca_chain)


def default_handlers() -> dict[type[Command], Handler]:
    """The handlers of this agent version (OTA handlers replace the update entries)."""
    return {
        Reboot: _reboot,
        CollectDiagnostics: _diagnostics,
        CheckUpdate: _updates_disabled,
        Install: _updates_disabled,
        SetConfig: _set_config,
        InstallCertificate: _install_certificate,
    }


@dataclass(frozen=True, slots=True)
class Intake:
    """What to do with one received payload."""

    command_id: str | None
    decision: Decision | None
    """``None`` for a duplicate (already handled) or an unreadable message with no id."""
    error: str = ""


class CommandIntake:
    """Decides on each received command payload; remembers recent ids (QoS 1 may
    deliver a command twice, and a reboot must not run twice)."""

    def __init__(
        self, handlers: dict[type[Command], Handler] | None = None, *, remember: int = 256
    ) -> None:
        self.handlers = handlers if handlers is not None else default_handlers()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.rejected_total = 0
        self.unreadable_total = 0

    def register(self, command_type: type[Command], handler: Handler) -> None:
        """Add or replace the handler for one command type."""
        self.handlers[command_type] = handler

    def _remembered(self, command_id: str) -> bool:
        if command_id in self._seen:
            return True
        self._seen[command_id] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return False

    def receive(self, decoded: Command | ProtocolDecodeError, now: float) -> Intake:
        """Decide on a decoded command, or on the decode error it raised."""
        if isinstance(decoded, ProtocolDecodeError):
            if decoded.message_id is None or not _ID_RE.match(decoded.message_id):
                self.unreadable_total += 1
                return Intake(None, None, error=str(decoded))
            self.rejected_total += 1
            reason = (
                RejectReason.UNKNOWN_COMMAND
                if decoded.reason is Reason.UNKNOWN_KIND
                else RejectReason.INVALID
            )
            return Intake(decoded.message_id, reject(reason, decoded.detail), error=str(decoded))
        if self._remembered(decoded.id):
            return Intake(decoded.id, None)
        if decoded.is_expired(now):
            self.rejected_total += 1
            return Intake(decoded.id, reject(RejectReason.EXPIRED, expiry_detail(decoded, now)))
        handler = self.handlers.get(type(decoded))
        if handler is None:
            self.rejected_total += 1
            return Intake(
                decoded.id,
                reject(RejectReason.UNKNOWN_COMMAND, f"no handler for {type(decoded).__name__}"),
            )
        decision = handler(decoded)
        if not decision.accepted:
            self.rejected_total += 1
        return Intake(decoded.id, decision)

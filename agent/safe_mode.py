"""Safe mode for safety-critical recalls: verify, obey, persist, confirm.

The server sends a :class:`protocol.SafeMode` command signed with its safety key
(Ed25519). This module checks the signature against the public key provisioned in the
agent config (``[safety] public_key = "path"``); a missing key or a bad signature is
rejected with reason ``not_permitted`` (and counted). An accepted command sets a
persisted flag (``safe_mode.json`` in the state directory, so it survives restarts):
from then on installs are refused except of the campaign's remedy version. The agent
confirms with ``CommandAck(completed)`` and shows the flag in ``fleet-agent status``.

Wiring: :func:`install` registers the handler with the command intake, makes every
``Install`` handler (present or registered later, e.g. by the OTA updater) pass through the
guard, and registers the runner with the daemon.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.commands import Decision, Handler, accept, reject
from agent.core.outputs import RunCommand
from agent.state import atomic_write
from protocol import Install, RejectReason, SafeMode, safe_mode_signed_bytes

if TYPE_CHECKING:
    from agent.daemon import AgentDaemon

log = logging.getLogger(__name__)

STATE_FILE = "safe_mode.json"


class Verifier:
    """Checks Ed25519 signatures with one public key (PEM file or raw 32 bytes)."""

    def __init__(self, public_key: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        if public_key.startswith(b"-----BEGIN"):
            key = load_pem_public_key(public_key)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("safety public key is not an Ed25519 key")
            self._key = key
        else:
            self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_file(cls, path: Path) -> Verifier:
        """Load the provisioned key; raises ``ValueError`` naming the file when unusable."""
        try:
            return cls(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"safety public key {path}: {exc}") from None

    def verify(self, signature_b64: str, message: bytes) -> bool:
        """True when ``signature_b64`` is a valid signature of ``message``."""
        from cryptography.exceptions import InvalidSignature

        try:
            self._key.verify(base64.b64decode(signature_b64, validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


class SafeModeGuard:
    """Decides on safe-mode commands and guards installs while safe mode is on."""

    def __init__(self, verifier: Verifier | None, state_dir: Path) -> None:
        self.verifier = verifier
        self.path = Path(state_dir) / STATE_FILE
        self.rejected_total = 0
        self.state: dict[str, Any] = {"active": False}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict) and loaded.get("active") is True:
                self.state = loaded
        except (OSError, ValueError):
            pass

    @property
    def active(self) -> bool:
        """True while safe mode is on."""
        return bool(self.state.get("active"))

    def decide(self, cmd: SafeMode) -> Decision:
        """Accept only a command signed by the provisioned safety key."""
        if self.verifier is None:
            self.rejected_total += 1
            return reject(
                RejectReason.NOT_PERMITTED,
                "no safety public key provisioned ([safety] public_key in the agent config)",
            )
        if not self.verifier.verify(cmd.signature, safe_mode_signed_bytes(cmd)):
            self.rejected_total += 1
            log.error("rejected safe-mode command %s: bad signature", cmd.id)
            return reject(RejectReason.NOT_PERMITTED, "bad safe-mode signature")
        return accept(
            "safe_mode",
            campaign_id=cmd.campaign_id,
            reason=cmd.reason,
            remedy_version=cmd.remedy_version,
            issued_at=cmd.issued_at,
        )

    def guard_install(self, inner: Handler | None) -> Handler:
        """Wrap the ``Install`` handler: in safe mode only the remedy version passes."""

        def handler(cmd: Install) -> Decision:
            if self.active and cmd.version != self.state.get("remedy_version"):
                return reject(
                    RejectReason.NOT_PERMITTED,
                    f"safe mode for recall {self.state.get('campaign_id')}: only the remedy "
                    f"version {self.state.get('remedy_version') or '(none)'} may be installed",
                )
            if inner is None:
                return reject(RejectReason.UNKNOWN_COMMAND, "updates are not enabled")
            return inner(cmd)

        return handler

    def enter(self, cmd: RunCommand, now: float) -> dict[str, Any]:
        """Persist the flag (atomic write) and return the state for the acknowledgement."""
        self.state = {
            "active": True,
            "campaign_id": cmd.params.get("campaign_id"),
            "remedy_version": cmd.params.get("remedy_version", ""),
            "reason": cmd.params.get("reason", ""),
            "command_id": cmd.command_id,
            "since": now,
        }
        atomic_write(self.path, json.dumps(self.state).encode())
        log.warning(
            "safe mode ON for recall %s: %s", self.state["campaign_id"], self.state["reason"]
        )
        return dict(self.state)

    def status(self) -> dict[str, Any]:
        """For the status file and diagnostics."""
        return {**self.state, "rejected_total": self.rejected_total}


class GuardedHandlers(dict[type[Any], Handler]):
    """The intake's handler table with every ``Install`` handler wrapped by the guard,
    including ones registered later (the OTA updater registers its own after start)."""

    def __init__(self, handlers: dict[type[Any], Handler], guard: SafeModeGuard) -> None:
        super().__init__()
        self.guard = guard
        for kind, handler in handlers.items():
            self[kind] = handler

    def __setitem__(self, kind: type[Any], handler: Handler) -> None:
        if kind is Install:
            handler = self.guard.guard_install(handler)
        super().__setitem__(kind, handler)


def install(daemon: AgentDaemon) -> SafeModeGuard:
    """Register safe mode with a daemon's command intake and runners."""
    key_path = getattr(daemon.config, "safety_public_key", None)
    verifier = None
    if key_path is not None:
        try:
            verifier = Verifier.from_file(Path(key_path))
        except ValueError as exc:
            log.error("%s; safe-mode commands will be rejected", exc)
    guard = SafeModeGuard(verifier, daemon.state_dir)
    intake = daemon.core.intake
    intake.handlers = GuardedHandlers(intake.handlers, guard)
    if Install not in intake.handlers:
        intake.register(Install, guard.guard_install(None))
    intake.register(SafeMode, guard.decide)
    runner: Callable[[RunCommand], None] = lambda cmd: daemon.report(  # noqa: E731
        cmd.command_id, True, "safe mode on", guard.enter(cmd, daemon.clock.time())
    )
    daemon.register_runner("safe_mode", runner)
    return guard

"""The daemon's command runners: reboot, certificate renewal, diagnostics, and the restart
that boots a freshly switched slot.

Each runner is called in the loop's thread with an accepted
:class:`~agent.core.outputs.RunCommand` and must return quickly; long work (a diagnostics
upload) runs in a short-lived thread that reports back with :meth:`AgentDaemon.report`.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.core.outputs import RunCommand
from protocol import RebootReason

if TYPE_CHECKING:
    from agent.daemon import AgentDaemon

log = logging.getLogger("agent")

RENEWAL_CHECK_S = 3600.0
"""How often a connected agent checks whether its certificate is due for renewal."""


class DaemonCommands:
    """The runners of one daemon (and the hourly certificate renewal check)."""

    def __init__(self, daemon: AgentDaemon) -> None:
        self.daemon = daemon
        self._renewal_check_at = 0.0

    def runners(self) -> dict[str, Callable[[RunCommand], None]]:
        """The runner of each command kind this module carries out."""
        return {
            "reboot": self.reboot,
            "collect_diagnostics": self.start_diagnostics,
            "install_certificate": self.install_certificate,
        }

    # --- reboot ------------------------------------------------------------------------

    def _intend(self, reason: RebootReason | None) -> dict[str, Any]:
        """Record why the next start happens (before it happens); the previous record."""
        state = self.daemon.state
        last = dict(state.data.get("last_run") or {})
        state.save(last_run={**last, "intended": int(reason) if reason is not None else None})
        return last

    def reboot(self, cmd: RunCommand) -> None:
        """The ``reboot`` command: flush, deliver, record the intent, reboot, ack."""
        d = self.daemon
        last = self._intend(RebootReason.REMOTE_COMMAND)
        d.flush(d.clock.time())
        d.drain(2.0)
        log.warning(
            "rebooting on command %s: %s", cmd.command_id, " ".join(d.config.reboot_command)
        )
        ok, detail = self.run_reboot_command()
        if not ok:
            d.state.save(last_run={**last, "intended": None})
        d.apply(
            d.core.command_result(
                cmd.command_id,
                d.clock.time(),
                ok=ok,
                detail=detail if not ok else "reboot initiated",
            )
        )

    def run_reboot_command(self) -> tuple[bool, str]:
        """Run the configured reboot command; ``(ok, detail)``."""
        try:
            result = subprocess.run(
                list(self.daemon.config.reboot_command), capture_output=True, text=True, timeout=20
            )
            ok, detail = result.returncode == 0, (result.stderr or result.stdout).strip()[-500:]
            if not ok:
                detail = f"reboot command exited {result.returncode}: {detail}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, detail = False, f"reboot command failed: {exc}"
        if not ok:
            log.error("%s", detail)
        return ok, detail

    def restart_for_update(self, reboot: bool) -> None:
        """Boot the freshly switched slot: reboot the device, or exit so systemd restarts
        the agent (``EXIT_RESTART``), after delivering what is queued."""
        from agent.updater import EXIT_RESTART

        d = self.daemon
        self._intend(RebootReason.FIRMWARE_UPDATE)
        if reboot:
            d.flush(d.clock.time())
            d.drain(2.0)
            ok, detail = self.run_reboot_command()
            if ok:
                return
            log.error("cannot reboot for the update (%s); restarting the agent instead", detail)
        log.warning("restarting the agent to boot the new slot")
        d.exit_code = EXIT_RESTART
        d.request_stop()

    # --- certificate renewal -------------------------------------------------------------

    def check_renewal(self, mono: float, wall: float) -> None:
        """Ask for a renewed certificate once it is due (checked hourly while connected)."""
        d = self.daemon
        if d.renewal is None or not d.transport.connected or mono < self._renewal_check_at:
            return
        self._renewal_check_at = mono + RENEWAL_CHECK_S
        try:
            if not d.renewal.due(datetime.fromtimestamp(wall, UTC)):
                return
            csr = d.renewal.csr()
        except (OSError, ValueError) as exc:  # BundleError is a ValueError
            log.error("certificate renewal: cannot read the credentials: %s", exc)
            return
        log.info("certificate renewal due: sending a certificate request")
        d.apply(d.core.certificate_request(csr, wall))

    def install_certificate(self, cmd: RunCommand) -> None:
        """The ``install_certificate`` command: keep the renewed certificate, reconnect."""
        d = self.daemon
        if d.renewal is None:
            d.report(cmd.command_id, False, "no [tls] bundle configured")
            return
        try:
            bundle = d.renewal.install_pem(cmd.params["certificate"], cmd.params["ca_chain"])
        except (OSError, ValueError) as exc:  # BundleError is a ValueError
            log.error("certificate renewal: refused the new certificate: %s", exc)
            d.report(cmd.command_id, False, str(exc)[:500])
            return
        serial = f"{bundle.certificate.serial_number:x}"
        log.info(
            "certificate renewed (serial %s, until %s); reconnecting", serial, bundle.not_after
        )
        d.report(cmd.command_id, True, result={"serial": serial})
        # The transport builds a new TLS context on every connect: reconnect to use it.
        d.transport.disconnect()
        d.reconnect_now()

    # --- diagnostics ---------------------------------------------------------------------

    def start_diagnostics(self, cmd: RunCommand) -> None:
        """The ``collect_diagnostics`` command: gather state here, in the loop's thread;
        only packing and upload run aside."""
        d = self.daemon
        sections = d.diagnostics_sections()
        lines = list(d.ring.lines) if d.ring else []
        threading.Thread(
            target=self._diagnostics_worker,
            args=(cmd, sections, lines),
            name="diagnostics",
            daemon=True,
        ).start()

    def _diagnostics_worker(
        self, cmd: RunCommand, sections: dict[str, Any], lines: list[str]
    ) -> None:
        from agent.diagnostics import DiagnosticsError, build_bundle, deliver

        d = self.daemon
        try:
            bundle = build_bundle(
                log_lines=lines,
                sections=sections,
                max_bytes=d.config.diagnostics_max_bytes,
            )
            result = deliver(
                bundle,
                upload_url=cmd.params.get("upload_url"),
                state_dir=d.state_dir,
                device_id=d.config.device_id,
            )
            d.report(cmd.command_id, True, "diagnostics bundle delivered", result.as_dict())
        except (DiagnosticsError, OSError) as exc:
            d.report(cmd.command_id, False, str(exc))
        except Exception as exc:  # report every failure as a failed ack, never crash
            log.exception("diagnostics failed")
            d.report(cmd.command_id, False, f"diagnostics failed: {exc}")

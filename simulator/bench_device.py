"""QA bench against a real ``fleet-agent`` process with ``DirectorySlots``.

``fleet-sim bench BUNDLE --device-dir DIR --broker mqtt://host:port`` runs the same cases
as the simulated bench (install, power cut at a seeded state, network cut mid-download),
but each case starts a real ``fleet-agent run`` with its own config and slot directory
under ``DIR``, sends it the ``Install`` command over MQTT, and plays systemd around it:
the agent is restarted when it exits asking for it (the update's reboot, or a simulated
crash), and SIGKILLed where the agent's pause hook (``FLEET_AGENT_TEST_PAUSE_IN_STATE``)
stops it, which is the power cut. The outcome is read from the agent's persisted update
record and the slot directory (``current`` / ``committed``).

The agent speaks MQTT 5: the broker must be a real one (e.g. Mosquitto).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from agent.updater import EXIT_RESTART, EXIT_SIMULATED_CRASH, PAUSE_ENV, UPDATE_FILE
from firmware_bundles.manifest import Manifest
from simulator.bench import (
    CASE_TIMEOUT_S,
    INITIAL_VERSION,
    BenchError,
    BenchReport,
    CaseResult,
    published_candidate,
    run_cases,
)

MAX_STARTS = 12
TERMINAL = ("committed", "failed", "rolled_back")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def agent_config(device_id: str, broker: str, state_dir: Path, updates: dict[str, Any]) -> str:
    """A ``fleet-agent`` TOML config for one bench device."""
    top = {
        "device_id": device_id,
        "broker": broker,
        "state_dir": str(state_dir),
        "sample_interval_s": 0.5,
        "publish_interval_s": 1.0,
        "keepalive": 5,
    }
    lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
    lines.append("[updates]")
    lines += [f"{k} = {_toml(v)}" for k, v in updates.items()]
    return "\n".join(lines) + "\n"


def _fleet_agent() -> str:
    script = Path(sys.executable).parent / "fleet-agent"
    return str(script) if script.exists() else "fleet-agent"


class _Operator:
    """Sends the ``Install`` command the way the fleet server does (QoS 1)."""

    def __init__(self, broker: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        parsed = urllib.parse.urlsplit(broker)
        if parsed.scheme != "mqtt" or not parsed.hostname:
            raise BenchError(f"--broker: expected mqtt://host:port, got {broker!r}")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleet-bench-{os.getpid()}",
            protocol=mqtt.MQTTv5,
        )
        try:
            self.client.connect(parsed.hostname, parsed.port or 1883)
        except OSError as exc:
            raise BenchError(f"cannot reach the broker {broker}: {exc}") from None
        self.booted: set[str] = set()
        self.client.on_message = self._on_message
        self.client.subscribe("fleet/v1/+/event", qos=1)
        self.client.loop_start()
        self.seq = 0

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        from protocol import Boot, ProtocolDecodeError, decode

        try:
            decoded = decode(message.topic, bytes(message.payload))
        except ProtocolDecodeError:
            return
        if isinstance(decoded, Boot):
            self.booted.add(decoded.device_id)

    def wait_boot(self, device_id: str, timeout: float) -> bool:
        """True once the device reported a boot (it subscribes to commands before)."""
        deadline = time.monotonic() + timeout
        while device_id not in self.booted:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def install(self, device_id: str, manifest: Manifest, execution_id: str) -> None:
        from protocol import Install, encode, topic

        self.seq += 1
        now = time.time()
        message = Install(
            device_id=device_id,
            boot_id="fleet-bench",
            seq=self.seq,
            ts=now,
            expires_at=now + 600,
            id=f"bench-cmd-{self.seq}-{os.getpid()}",
            target=manifest.bundle_filename(),
            version=manifest.version,
            execution_id=execution_id,
        )
        info = self.client.publish(topic(device_id, "command"), encode(message), qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _record(state_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state_dir / UPDATE_FILE).read_bytes())["record"])
    except (OSError, ValueError, KeyError):
        return {}


def _version(link: Path) -> str | None:
    try:
        return (link / "VERSION").read_text().strip()
    except OSError:
        return None


def _paused(state_dir: Path, pid: int) -> str | None:
    for marker in state_dir.glob("test-paused-*"):
        try:
            if int(marker.read_text()) == pid:
                return marker.name.removeprefix("test-paused-")
        except (OSError, ValueError):
            continue
    return None


def _device_case(
    *,
    case: str,
    revision: str,
    manifest: Manifest,
    base_url: str,
    root: Path,
    workdir: Path,
    cut_state: str | None = None,
    before: Callable[[], None] | None = None,
    device_dir: Path,
    broker: str,
    operator: _Operator,
    simulate_outcomes: bool = False,
) -> CaseResult:
    """One update on a fresh real agent, playing systemd; ``cut_state``: SIGKILL there once."""
    started = time.monotonic()
    device = device_dir / f"{revision}-{case}"
    shutil.rmtree(device, ignore_errors=True)
    state_dir, slots = device / "state", device / "slots"
    device.mkdir(parents=True)
    device_id = f"bench-{revision}-{case}"
    updates = {
        "enabled": True,
        "metadata_url": f"{base_url}/metadata/",
        "targets_url": f"{base_url}/targets/",
        "root_path": str(root),
        "slots": "directory",
        "slots_dir": str(slots),
        "hardware_revision": revision,
        "model": manifest.model,
        "restart": "exit",
        "initial_version": INITIAL_VERSION,
        "health_timeout_s": 20,
        "retry_backoff_s": 0.05,
        "download_retries": 3,
        "max_attempts": 3,
        "payload_mount": "/opt/demo",
        "simulate_outcomes": simulate_outcomes,
    }
    config = device / "agent.toml"
    config.write_text(agent_config(device_id, broker, state_dir, updates))
    if before is not None:
        before()
    starts: list[str] = []
    detail = ""
    deadline = time.monotonic() + CASE_TIMEOUT_S * 2
    sent = False
    while len(starts) < MAX_STARTS and time.monotonic() < deadline:
        env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
        if cut_state and not any(s.startswith("killed:") for s in starts):
            env[PAUSE_ENV] = cut_state
        with (device / f"agent-{len(starts)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [_fleet_agent(), "run", "-c", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if not sent:
                # the agent subscribes to its command topic before it reports the boot
                if not operator.wait_boot(device_id, 30):
                    detail = "the agent did not report a boot within 30 s"
                    break
                operator.install(device_id, manifest, f"bench-{revision}-{case}")
                sent = True
            how = ""
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    how = f"exit:{code}"
                    break
                state = _paused(state_dir, proc.pid)
                if state is not None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                    how = f"killed:{state}"
                    detail = f"power cut (SIGKILL) in {state}"
                    break
                record = _record(state_dir)
                if record.get("state") in TERMINAL and record.get("reported"):
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
                    how = "stopped"
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        starts.append(how or "timeout")
        if how in ("stopped", "", "timeout"):
            break
        if how.startswith("exit:") and int(how[5:]) not in (EXIT_RESTART, EXIT_SIMULATED_CRASH):
            detail = f"agent exited {how[5:]} (see {device}/agent-*.log)"
            break
    record = _record(state_dir)
    state = str(record.get("state") or "idle")
    running, committed = _version(slots / "current"), _version(slots / "committed")
    passed = state == "committed" and running == committed == manifest.version
    if state in ("failed", "rolled_back"):
        back = running == committed == INITIAL_VERSION
        detail = f"{detail}; " if detail else ""
        detail += "device back on its old version" if back else "device NOT back on its old version"
    if state not in TERMINAL:
        detail = f"{detail}; no outcome after {len(starts)} start(s)".lstrip("; ")
    return CaseResult(
        revision=revision,
        case=case,
        passed=passed,
        state=state,
        failure_class=record.get("failure_class"),
        reason=str(record.get("reason") or ""),
        attack=record.get("attack"),
        running_version=running,
        committed_version=committed,
        states=list(starts),
        detail=detail,
        seconds=round(time.monotonic() - started, 3),
    )


def run_device_bench(
    bundle: Path,
    device_dir: Path,
    broker: str,
    *,
    hardware: list[str] | None = None,
    seed: int = 1,
    progress: Callable[[CaseResult], None] | None = None,
    simulate_outcomes: bool = False,
) -> BenchReport:
    """The bench's cases on real ``fleet-agent`` processes (one per case) under
    ``device_dir``, commanded through ``broker``. The agents run the bundle's real health
    check; ``simulate_outcomes`` makes them honour its ``simulation`` block too (to
    rehearse a failing release on real hardware).

    Raises:
        BenchError: bad bundle, unreachable broker, or no ``fleet-agent``.
    """
    if shutil.which(_fleet_agent()) is None and not Path(_fleet_agent()).exists():
        raise BenchError("fleet-agent is not installed in this environment")
    started = time.monotonic()
    device_dir = Path(device_dir)
    device_dir.mkdir(parents=True, exist_ok=True)
    operator = _Operator(broker)
    try:
        with published_candidate(bundle) as candidate:
            manifest = candidate.manifest
            revisions = list(dict.fromkeys(hardware or manifest.hardware_revisions))
            runner = partial(
                _device_case,
                device_dir=device_dir,
                broker=broker,
                operator=operator,
                simulate_outcomes=simulate_outcomes,
            )
            cases = run_cases(candidate, revisions, runner, seed=seed, progress=progress)
    finally:
        operator.close()
    return BenchReport(
        bundle=Path(bundle).name,
        version=manifest.version,
        claimed=list(manifest.hardware_revisions),
        hardware=revisions,
        seed=seed,
        cases=cases,
        seconds=time.monotonic() - started,
    )


__all__ = ["agent_config", "run_device_bench"]

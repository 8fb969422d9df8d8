"""What the daemon reads at start: the kernel's boot id, the previous run's record, the
outbox (set aside when corrupt) and the MQTT settings from the configuration."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.core.reboot import PreviousRun
from agent.store import Limits, SqliteOutbox
from agent.transport import MqttSettings
from protocol import Kind, RebootReason, topic

log = logging.getLogger("agent")


def machine_boot_id() -> str | None:
    """The kernel's id of the current boot: tells a machine reboot from an agent restart,
    and unlike the boot time it does not move when NTP steps the clock."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def open_outbox(path: Path, limits: Limits) -> SqliteOutbox:
    """Open the outbox; a corrupt database is set aside (kept for inspection, never
    deleted) and a fresh one started, so storage damage cannot stop the agent for good."""
    try:
        return SqliteOutbox(path, limits)
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.error("outbox %s is unreadable (%s); moved to %s, starting a new one", path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(path) + suffix)
            if source.exists():
                os.replace(source, Path(str(aside) + suffix))
        return SqliteOutbox(path, limits)


def previous_run(data: dict[str, Any]) -> PreviousRun | None:
    """The last run as the state file recorded it (None on a first start)."""
    last = data.get("last_run")
    if not isinstance(last, dict):
        return None
    intended = last.get("intended")
    try:
        reason = RebootReason(intended) if isinstance(intended, int) else None
    except ValueError:
        reason = None
    kernel_boot = last.get("machine_boot_id")
    boot_id = last.get("boot_id")
    return PreviousRun(
        boot_id=boot_id if isinstance(boot_id, str) else None,
        machine_boot_id=kernel_boot if isinstance(kernel_boot, str) else None,
        clean_stop=last.get("clean_stop") is True,
        intended=reason,
    )


def mqtt_settings(config: AgentConfig) -> MqttSettings:
    """The transport's settings from the agent configuration."""
    password = None
    if config.password_file is not None:
        password = config.password_file.read_text().strip()
    return MqttSettings(
        host=config.broker_host,
        port=config.broker_port,
        alternates=config.broker_alternates,
        client_id=config.device_id,
        command_topic=topic(config.device_id, Kind.COMMAND),
        keepalive=config.keepalive_s,
        mqtt_version=config.mqtt_version,
        tls=config.broker_tls,
        ca=config.tls.ca,
        cert=config.tls.cert,
        key=config.tls.key,
        username=config.username,
        password=password,
    )

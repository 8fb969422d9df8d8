"""Message models of the fleet protocol (schema version 1).

Model library: msgspec. The agent imports this module on every device, so its import
cost is part of the agent's footprint. Measured on CPython 3.11 (max RSS of a process
that only imports the library): bare interpreter 8.1 MB, ``import msgspec`` 13.6 MB,
``import pydantic`` 16.9 MB. msgspec is also the fastest strict JSON decoder we could
find (the ingest path decodes every message) and encodes structs in a fixed field order,
which gives us compact, deterministic bytes. Validation is declarative (``Meta``
constraints), so the models below are the whole contract.

Every message carries the envelope ``v`` (schema version ``"MAJOR.MINOR"``),
``device_id``, ``boot_id``, ``seq`` and ``ts``. Unknown fields are ignored, so a newer
minor version can add optional fields without breaking older readers; a new *major*
version is rejected.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from protocol.signals import BITS, signal, signals_of
from protocol.topics import DEVICE_ID_PATTERN

SCHEMA_MAJOR = 1
SCHEMA_MINOR = 1
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"

# --- constrained scalar types -------------------------------------------------------

DeviceId = Annotated[str, Meta(pattern=DEVICE_ID_PATTERN)]
BootId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9-]{1,64}$")]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Timestamp = Annotated[float, Meta(ge=0, le=1e11)]  # unix seconds, UTC
"""Seconds since the epoch; the upper bound also rejects infinities."""
Finite = Annotated[float, Meta(ge=-1e15, le=1e15)]
Percent = Annotated[float, Meta(ge=0, le=100)]
NonNegative = Annotated[float, Meta(ge=0, le=1e15)]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Code = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$")]
Identifier = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
ShortText = Annotated[str, Meta(max_length=1024)]
Version = Annotated[str, Meta(max_length=64)]

# --- enumerations shared by agent and server ----------------------------------------


class Severity(StrEnum):
    """Alarm severity, most severe first."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"
    INFO = "info"


class RebootReason(IntEnum):
    """Typed reboot reasons. Codes below ``0x8000`` are normal, from ``0x8000`` errors.

    The split lets the fleet compute crash-free operating hours per release: an error
    reboot counts against the release that was running.
    """

    UNKNOWN = 0x0000
    USER_RESET = 0x0001
    FIRMWARE_UPDATE = 0x0002
    LOW_POWER = 0x0003
    USER_SHUTDOWN = 0x0004
    POWER_ON = 0x0005
    REMOTE_COMMAND = 0x0006
    UPDATE_ROLLBACK = 0x0007
    AGENT_RESTART = 0x0008
    UNKNOWN_ERROR = 0x8000
    BROWN_OUT = 0x8001
    HARDWARE_WATCHDOG = 0x8002
    SOFTWARE_WATCHDOG = 0x8003
    KERNEL_PANIC = 0x8004
    FIRMWARE_UPDATE_ERROR = 0x8005
    OUT_OF_MEMORY = 0x8006
    AGENT_CRASH = 0x8007
    POWER_LOSS = 0x8008
    THERMAL_SHUTDOWN = 0x8009

    @property
    def is_error(self) -> bool:
        """True for reboots that indicate a fault rather than an intended restart."""
        return is_error_reboot(self.value)


def is_error_reboot(code: int) -> bool:
    """True when a (possibly unknown, newer) reboot code is in the error range."""
    return code >= 0x8000


class UpdateState(StrEnum):
    """States of the device's update flow (see DESIGN.md, "Signed updates")."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    INSTALLING = "installing"
    INSTALLED = "installed"
    REBOOTING = "rebooting"
    TRIAL = "trial"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class FailureClass(StrEnum):
    """Why an update failed; rollout failure criteria are set per class."""

    DOWNLOAD = "download"
    VERIFICATION = "verification"
    INSTALL = "install"
    BOOT = "boot"
    HEALTH = "health"
    TIMEOUT = "timeout"
    SECURITY = "security"


class PresenceState(StrEnum):
    """Whether the device is connected; ``offline`` is also sent as the last will."""

    ONLINE = "online"
    OFFLINE = "offline"


class AckStatus(StrEnum):
    """A device's answer to a command."""

    ACCEPTED = "accepted"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


class RejectReason(StrEnum):
    """Why a device refused a command."""

    EXPIRED = "expired"
    UNKNOWN_COMMAND = "unknown_command"
    INVALID = "invalid"
    BUSY = "busy"
    NOT_PERMITTED = "not_permitted"


# --- envelope -------------------------------------------------------------------------


class Envelope(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Fields every message carries; ``(device_id, boot_id, seq)`` identifies it.

    Messages (and :class:`Sample`) are immutable values that never refer back to what
    holds them, so they cannot be part of a reference cycle: ``gc=False`` keeps them
    out of the cyclic garbage collector, which an ingest worker holding thousands of
    decoded messages would otherwise traverse again on every collection (their lists
    and dicts are still tracked)."""

    v: str = SCHEMA_VERSION
    device_id: DeviceId
    boot_id: BootId
    seq: Seq
    ts: Timestamp


# --- telemetry ------------------------------------------------------------------------


class Sample(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, gc=False):
    """One health sample. ``None`` means the source is not available on this device.

    Each field below is a health signal declared once: its type and range, and (in
    :func:`~protocol.signals.signal`) its label, unit, source and meaning. The server's
    telemetry columns, the API schema, ``fleet-agent doctor`` and the README table are
    derived from these declarations (:data:`SIGNALS`).
    """

    ts: Timestamp
    cpu_pct: (
        Annotated[
            Percent,
            signal("CPU use", "%", source="psutil", description="all cores, since the last sample"),
        ]
        | None
    ) = None
    load_1m: (
        Annotated[
            NonNegative,
            signal("load (1 min)", source="`os.getloadavg`", description="1-minute load average"),
        ]
        | None
    ) = None
    mem_pct: (
        Annotated[
            Percent,
            signal("memory used", "%", source="psutil", description="RAM in use, cache excluded"),
        ]
        | None
    ) = None
    swap_pct: (
        Annotated[
            Percent,
            signal("swap used", "%", source="psutil", description="absent when no swap is set up"),
        ]
        | None
    ) = None
    disk_pct: (
        Annotated[
            Percent,
            signal(
                "disk used",
                "%",
                source="psutil",
                description="the watched filesystem (`disk_path`)",
            ),
        ]
        | None
    ) = None
    disk_io_errors: (
        Annotated[
            Count,
            signal(
                "storage I/O errors",
                source="`/sys/block/*/device/ioerr_cnt`",
                description="errors SCSI/USB disks counted since boot",
            ),
        ]
        | None
    ) = None
    temp_c: (
        Annotated[
            float,
            Meta(ge=-100, le=300),
            signal(
                "SoC temperature",
                "°C",
                source="`/sys/class/thermal/thermal_zone*/temp`, else hwmon `temp*_input`",
                description="the hottest sensor",
            ),
        ]
        | None
    ) = None
    throttled: (
        Annotated[
            int,
            Meta(ge=0, le=0xFFFFFFFF),
            signal(
                "Pi throttling bits",
                BITS,
                source="sysfs `get_throttled`, else `vcgencmd get_throttled` (once a minute)",
                description="Pi under-voltage, capping and throttling, now and since boot",
            ),
        ]
        | None
    ) = None
    undervoltage: (
        Annotated[
            bool,
            signal(
                "under-voltage alarm",
                source="hwmon `rpi_volt` `in0_lcrit_alarm`",
                description="Raspberry Pi supply below its limit",
            ),
        ]
        | None
    ) = None
    fan_rpm: (
        Annotated[
            NonNegative,
            signal("fan speed", "rpm", source="hwmon `fan*_input`", description="the fastest fan"),
        ]
        | None
    ) = None
    uptime_s: (
        Annotated[
            NonNegative,
            signal(
                "uptime", "s", source="`/proc/uptime`", description="time since the kernel booted"
            ),
        ]
        | None
    ) = None
    agent_rss_mb: (
        Annotated[
            NonNegative,
            signal("this process RSS", "MB", source="psutil", description="the agent's own memory"),
        ]
        | None
    ) = None
    net_rx_bytes: (
        Annotated[
            Count,
            signal("network received", "B", source="psutil", description="all interfaces but `lo`"),
        ]
        | None
    ) = None
    net_tx_bytes: (
        Annotated[
            Count,
            signal("network sent", "B", source="psutil", description="all interfaces but `lo`"),
        ]
        | None
    ) = None
    emmc_life_used_pct: (
        Annotated[
            Percent,
            signal(
                "SD/eMMC life used",
                "%",
                source="`/sys/block/mmcblk*/device/life_time`",
                description="JEDEC wear estimate, in 10 % steps",
            ),
        ]
        | None
    ) = None
    clock_synced: (
        Annotated[
            bool,
            signal(
                "clock synchronised",
                source="kernel `adjtimex` state",
                description="NTP keeps the clock in step",
            ),
        ]
        | None
    ) = None
    wifi_signal_dbm: (
        Annotated[
            float,
            Meta(ge=-150, le=0),
            signal(
                "Wi-Fi signal level",
                "dBm",
                source="`/proc/net/wireless`",
                description="the first associated wireless interface",
            ),
        ]
        | None
    ) = None
    custom: Annotated[
        dict[Annotated[str, Meta(min_length=1, max_length=64)], Finite], Meta(max_length=64)
    ] = {}


SIGNALS = signals_of(Sample)
"""Every health signal of :class:`Sample`, in field order (see :mod:`protocol.signals`)."""


class Telemetry(Envelope, kw_only=True, frozen=True):
    """A batch of samples; ``dropped_total`` counts samples the device's buffer dropped."""

    samples: Annotated[list[Sample], Meta(min_length=1, max_length=2000)]
    dropped_total: Count = 0


# --- events ---------------------------------------------------------------------------


class Event(Envelope, kw_only=True, frozen=True, tag_field="kind"):
    """Base of all device events; the ``kind`` field selects the subtype."""


class FaultRaised(Event, kw_only=True, frozen=True, tag="fault_raised"):
    """A fault rule's raise condition held for its debounce window."""

    code: Code
    severity: Severity
    value: Finite | None = None
    threshold: Finite | None = None
    message: ShortText = ""


class FaultCleared(Event, kw_only=True, frozen=True, tag="fault_cleared"):
    """A raised fault's clear condition held for its debounce window."""

    code: Code
    value: Finite | None = None


class UpdateStateChanged(Event, kw_only=True, frozen=True, tag="update_state"):
    """The device's update flow moved to ``state``."""

    execution_id: Identifier | None = None
    version: Version
    from_state: UpdateState | None = None
    state: UpdateState
    failure_class: FailureClass | None = None
    reason: ShortText = ""
    attack: Code | None = None
    """For security failures: the attack kind detected (e.g. ``tampered_target``)."""


class Boot(Event, kw_only=True, frozen=True, tag="boot"):
    """The agent started; ``reason`` is a :class:`RebootReason` code."""

    reason: Annotated[int, Meta(ge=0, le=0xFFFF)]
    agent_version: Version
    software_version: Version = ""
    slot: Annotated[str, Meta(max_length=16)] | None = None
    previous_boot_id: BootId | None = None


class CommandAck(Event, kw_only=True, frozen=True, tag="command_ack"):
    """The device's answer to a command; ``reason`` is set when rejected or failed."""

    command_id: Identifier
    status: AckStatus
    reason: RejectReason | None = None
    detail: ShortText = ""
    result: dict[str, Any] = {}


Pem = Annotated[str, Meta(min_length=1, max_length=16384)]


class CertificateRequest(Event, kw_only=True, frozen=True, tag="certificate_request"):
    """The device asks for a new certificate for the key in ``csr`` (renewal).

    Sent over the connection its current certificate authenticated, so the broker's ACL
    has already tied the topic to that certificate's CN; the key never leaves the device.
    """

    csr: Pem


DeviceEvent = (
    FaultRaised | FaultCleared | UpdateStateChanged | Boot | CommandAck | CertificateRequest
)

# --- presence -------------------------------------------------------------------------


class Presence(Envelope, kw_only=True, frozen=True):
    """Retained presence; the broker publishes the ``offline`` last will on a lost link.

    Order presence by ``seq`` (persisted across reboots): the last will is built at
    connect time, so a late will always carries a lower seq than a newer ``online``.
    """

    state: PresenceState
    agent_version: Version = ""
    keepalive_s: Annotated[int, Meta(ge=1, le=65535)] | None = None
    interval_s: Annotated[float, Meta(gt=0, le=86400)] | None = None
    """The agent's publish interval: it sends something at least this often."""


# --- commands (cloud -> device) -------------------------------------------------------


class Command(Envelope, kw_only=True, frozen=True, tag_field="kind"):
    """Base of all commands. ``boot_id``/``seq`` are the sender's; ``id`` is acked."""

    id: Identifier
    expires_at: Timestamp
    """Deadline in the device's clock (the server shifts it by the offset it measured);
    agents without ``ttl_s`` support judge expiry by it."""
    ttl_s: Annotated[float, Meta(ge=0, le=31_536_000)] | None = None
    """Seconds the command stays valid from the moment the device receives it, counted
    on the device's monotonic clock: a device whose wall clock is wrong can still judge
    it. When present it replaces the ``expires_at`` check."""

    def is_expired(self, now: float, held_s: float = 0.0) -> bool:
        """True when the command must be rejected instead of executed; ``held_s`` is how
        long the device has held it since receipt (monotonic)."""
        if self.ttl_s is not None:
            return held_s >= self.ttl_s
        return now >= self.expires_at


class CheckUpdate(Command, kw_only=True, frozen=True, tag="check_update"):
    """Refresh update metadata now instead of waiting for the next poll."""


class Install(Command, kw_only=True, frozen=True, tag="install"):
    """Install the TUF target ``target`` (a published bundle) as execution ``execution_id``."""

    target: Annotated[str, Meta(min_length=1, max_length=512)]
    version: Version
    execution_id: Identifier


class Reboot(Command, kw_only=True, frozen=True, tag="reboot"):
    """Restart the device (or, on a simulated device, the agent)."""

    reason: ShortText = ""


class CollectDiagnostics(Command, kw_only=True, frozen=True, tag="collect_diagnostics"):
    """Gather logs, vitals, fault state and config and upload them."""

    upload_url: Annotated[str, Meta(max_length=2048)] | None = None


class SetConfig(Command, kw_only=True, frozen=True, tag="set_config"):
    """Change agent settings at run time (validated by the agent)."""

    values: Annotated[dict[str, Any], Meta(max_length=64)]


class SafeMode(Command, kw_only=True, frozen=True, tag="safe_mode"):
    """Enter safe mode for a safety-critical recall: stop accepting installs except the
    campaign's remedy. ``signature`` is base64 Ed25519 over :func:`safe_mode_signed_bytes`
    (every other field of the command), made with the server's safety key; the agent
    obeys only a valid signature from its provisioned public key."""

    campaign_id: Identifier
    reason: ShortText = ""
    issued_at: Timestamp
    remedy_version: Version = ""
    """The one version installs may still target (empty = no installs at all)."""
    signature: Annotated[str, Meta(max_length=256)] = ""


def safe_mode_signed_bytes(cmd: SafeMode) -> bytes:
    """The canonical bytes a safe-mode signature covers: every field except
    ``signature``, as JSON with sorted keys (independent of field order and defaults)."""
    fields = msgspec.to_builtins(cmd)
    fields.pop("signature", None)
    return msgspec.json.encode(fields, order="sorted")


class InstallCertificate(Command, kw_only=True, frozen=True, tag="install_certificate"):
    """The answer to a :class:`CertificateRequest`: the new certificate and CA chain."""

    certificate: Pem
    ca_chain: Pem


DeviceCommand = (
    CheckUpdate | Install | Reboot | CollectDiagnostics | SetConfig | SafeMode | InstallCertificate
)

Message = Telemetry | DeviceEvent | Presence | DeviceCommand

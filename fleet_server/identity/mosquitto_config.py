"""The Mosquitto configuration of a fleet: mutual-TLS listener and topic ACLs.

Rendering is pure (settings in, text out); :func:`write_broker_config` writes the two
files. What the rendered configuration enforces, on Mosquitto 2.0:

* the only listener is TLS (1.2 or later) and requires a client certificate issued by
  the fleet CA (``cafile`` = ``ca-chain.pem``) that is not on the CRL (``crlfile``);
  there is no anonymous access and no password fallback;
* the client's identity is its certificate CN (``use_identity_as_username``), and its
  client id is replaced by that identity (``use_username_as_clientid``), so a device
  cannot take over another device's session by reusing its client id, and a client id of
  ``+`` or ``#`` means nothing;
* every device may publish only ``fleet/v1/<its CN>/{telemetry,event,presence}``
  (presence retained, and its last will on that same topic) and subscribe only to
  ``fleet/v1/<its CN>/command``;
* each fleet service identity (``svc-ingest`` by default, one per ingest worker if they
  should not share a session) may read every device's telemetry, events and presence
  (also through ``$share/<group>/...`` shared subscriptions) and publish every command;
* service identities may also read ``$SYS/broker/#`` (the broker's own counters: dropped
  messages, stored bytes, connected clients), so the ingest can alert on drops; nobody
  else may do anything: Mosquitto denies whatever the ACL file does not grant, the rest
  of ``$SYS`` included;
* nothing the broker acknowledged is lost while the ingest is down or the broker
  restarts cleanly (:func:`render_durability`): sessions and their queues are persisted
  (saved every ``autosave_interval_s`` and at shutdown; a crash or power loss loses at
  most that interval), and each session's queue is bounded by bytes
  (``queue_bytes``, 256 MiB by default; a count bound of ``queue_bytes / 256``
  stands behind it) instead of Mosquitto's default of 1,000 messages; past the bound
  the broker drops new messages for that session and counts them in
  ``$SYS/broker/publish/messages/dropped``;
* the broker-side limits Mosquitto 2.0 offers: no packet above ``max_packet_bytes``
  (the largest telemetry payload plus 4 KiB; the client is disconnected), QoS 1 at
  most (QoS 2 is refused), at most 20 unacknowledged messages in flight per client,
  and optionally ``max_connections`` on the listener.

After a revocation, make Mosquitto reload (``SIGHUP``, e.g. ``systemctl reload
mosquitto``): it then re-reads the CRL and refuses the revoked certificate on its next
connection. A session that is already open stays open until it ends; restart the broker
to cut it at once. Mosquitto also refuses *every* client once the CRL's ``next_update``
has passed, so re-sign the CRL (``fleet-server ca crl``) on a schedule well inside its
validity, then reload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from firmware_bundles.files import write_public_file
from fleet_server.identity.csr_policy import RESERVED_PREFIX
from protocol.codec import MAX_PAYLOAD_BYTES
from protocol.topics import TOPIC_ROOT, Kind, is_valid_device_id

DEFAULT_SERVICES = ("svc-ingest",)
DEVICE_WRITES = (Kind.TELEMETRY, Kind.EVENT, Kind.PRESENCE)
DEVICE_READS = (Kind.COMMAND,)
SERVICE_READS = (Kind.TELEMETRY, Kind.EVENT, Kind.PRESENCE)
SERVICE_WRITES = (Kind.COMMAND,)
SERVICE_SYS_READ = "$SYS/broker/#"

DEFAULT_PERSISTENCE_DIR = Path("/var/lib/mosquitto")
"""Debian's Mosquitto state directory, owned by the ``mosquitto`` account."""
DEFAULT_QUEUE_BYTES = 256 * 1024 * 1024
"""Per-client queue bound (payload bytes) of an offline persistent session."""
QUEUE_BYTES_PER_COUNT = 256
"""The queue's count bound is ``queue_bytes / 256``: fleet messages are larger (one
telemetry message is about 2 KB), so the byte bound decides, while a flood of tiny
messages (whose per-message overhead the byte bound does not see) is still capped."""
DEFAULT_AUTOSAVE_INTERVAL_S = 30
DEFAULT_SYS_INTERVAL_S = 10
MAX_INFLIGHT_MESSAGES = 20
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES[Kind.TELEMETRY] + 4 * 1024
"""The largest MQTT packet the broker accepts: the largest payload (telemetry) plus
room for the fixed header, topic and properties."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Everything the broker configuration depends on.

    ``port`` is a number, or a template placeholder such as ``"{port}"`` left for a
    deployment tool to fill in. Paths are written as given; make them absolute.
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    crlfile: Path
    acl_file: Path
    port: int | str = 8883
    bind_address: str = "127.0.0.1"
    services: Sequence[str] = field(default=DEFAULT_SERVICES)
    persistence_dir: Path | str = DEFAULT_PERSISTENCE_DIR
    """Where ``mosquitto.db`` (sessions, queues, retained messages) is saved; the
    broker's account must be able to write there. A ``"{placeholder}"`` is allowed."""
    user: str | None = None
    """The account Mosquitto switches to when started as root (its default is
    ``mosquitto``); that account must be able to read every file named here."""
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    autosave_interval_s: int = DEFAULT_AUTOSAVE_INTERVAL_S
    max_connections: int = -1
    """Clients the listener accepts at once; -1 means no limit."""
    sys_interval_s: int = DEFAULT_SYS_INTERVAL_S
    max_packet_bytes: int = MAX_PACKET_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.port, int) and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not between 1 and 65535")
        if isinstance(self.port, str) and not (
            self.port.startswith("{") and self.port.endswith("}")
        ):
            raise ValueError(f"port {self.port!r} must be a number or a '{{placeholder}}'")
        if self.user is not None and not self.user.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"user {self.user!r} is not a plain account name")
        check_service_names(self.services)
        if self.max_connections != -1 and self.max_connections < 1:
            raise ValueError("max_connections must be -1 (no limit) or at least 1")
        for name in ("queue_bytes", "autosave_interval_s", "sys_interval_s", "max_packet_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("cafile", "certfile", "keyfile", "crlfile", "acl_file", "persistence_dir"):
            value = getattr(self, name)
            if value is not None and any(c in str(value) for c in "\n\r"):
                raise ValueError(f"{name} path contains a line break")


def check_service_names(services: Sequence[str]) -> None:
    """Service identities must be ``svc-...`` names that are valid certificate CNs.

    Raises:
        ValueError: naming the bad entry.
    """
    if not services:
        raise ValueError("at least one service identity (e.g. svc-ingest) is needed")
    for name in services:
        if not name.startswith(RESERVED_PREFIX) or not is_valid_device_id(name):
            raise ValueError(
                f"service identity {name!r} must start with {RESERVED_PREFIX!r} and be a "
                "valid certificate CN (letters, digits, '.', '_', '-')"
            )


def render_acl(services: Sequence[str] = DEFAULT_SERVICES) -> str:
    """The ACL file: ``pattern`` lines on ``%u`` for devices, a ``user`` section per
    service identity, nothing for anyone else."""
    check_service_names(services)
    lines = [
        "# Edgefleet broker ACL, generated by fleet_server.identity.mosquitto_config.",
        "# The username is the client certificate's CN (use_identity_as_username).",
        "# Anything not granted here is denied.",
        "",
        "# Devices: only their own topics. Mosquitto skips a pattern for a username that",
        "# contains + or #, and the fleet CA never issues such a CN.",
    ]
    lines += [f"pattern write {TOPIC_ROOT}/%u/{kind.value}" for kind in DEVICE_WRITES]
    lines += [f"pattern read {TOPIC_ROOT}/%u/{kind.value}" for kind in DEVICE_READS]
    for service in services:
        lines += [
            "",
            f"# Fleet service {service}: reads every device, commands every device, and",
            "# reads the broker's own counters ($SYS/broker: drops, stored bytes, clients).",
        ]
        lines.append(f"user {service}")
        lines += [f"topic read {TOPIC_ROOT}/+/{kind.value}" for kind in SERVICE_READS]
        lines += [f"topic write {TOPIC_ROOT}/+/{kind.value}" for kind in SERVICE_WRITES]
        lines.append(f"topic read {SERVICE_SYS_READ}")
    return "\n".join(lines) + "\n"


def render_durability(
    *,
    persistence_dir: Path | str = DEFAULT_PERSISTENCE_DIR,
    queue_bytes: int = DEFAULT_QUEUE_BYTES,
    autosave_interval_s: int = DEFAULT_AUTOSAVE_INTERVAL_S,
    max_packet_bytes: int = MAX_PACKET_BYTES,
    sys_interval_s: int = DEFAULT_SYS_INTERVAL_S,
) -> str:
    """The global options that keep acknowledged messages and bound the broker's memory.

    The only source of these lines: the production configuration and the test
    harness's brokers both use it. Persistence keeps every session and its queue
    across a clean restart (a crash loses what arrived since the last autosave); the
    queue of an offline session is bounded by payload bytes (Mosquitto's default is
    1,000 messages, which a busy fleet fills in seconds), with a count bound of one
    message per 256 bytes behind it.
    """
    return (
        "\n".join(
            [
                "# Sessions, their queues and retained messages survive a broker restart;",
                f"# saved every {autosave_interval_s} s and at shutdown (a crash loses at most",
                "# that interval).",
                "persistence true",
                f"persistence_location {persistence_dir}/",
                f"autosave_interval {autosave_interval_s}",
                "autosave_on_changes false",
                "# An offline session (the ingest while it restarts) queues up to",
                f"# {queue_bytes} payload bytes; past that the broker drops new messages",
                "# for it and counts them in $SYS. The count bound only binds for messages",
                f"# averaging under {QUEUE_BYTES_PER_COUNT} B (0 would mean no count bound, but",
                "# Mosquitto 2.0.11 then disconnects a client on a denied QoS 1 PUBLISH).",
                f"max_queued_messages {queue_bytes // QUEUE_BYTES_PER_COUNT}",
                f"max_queued_bytes {queue_bytes}",
                "# No packet above the largest telemetry payload plus headers (disconnects).",
                f"max_packet_size {max_packet_bytes}",
                f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
                f"sys_interval {sys_interval_s}",
            ]
        )
        + "\n"
    )


def render_mosquitto_conf(settings: BrokerSettings) -> str:
    """The ``mosquitto.conf`` for one mutual-TLS listener of the fleet."""
    s = settings
    lines = [
        "# Edgefleet broker configuration, generated by",
        "# fleet_server.identity.mosquitto_config. Mosquitto 2.0 or later.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {s.acl_file}",
    ]
    if s.user is not None:
        lines.append(f"user {s.user}")
    lines.append(
        render_durability(
            persistence_dir=s.persistence_dir,
            queue_bytes=s.queue_bytes,
            autosave_interval_s=s.autosave_interval_s,
            max_packet_bytes=s.max_packet_bytes,
            sys_interval_s=s.sys_interval_s,
        ).rstrip("\n")
    )
    lines += [
        "",
        f"listener {s.port} {s.bind_address}",
        "protocol mqtt",
        "# QoS 2 is refused (the fleet uses QoS 1; a QoS 2 PUBLISH disconnects).",
        "max_qos 1",
    ]
    if s.max_connections != -1:
        lines.append(f"max_connections {s.max_connections}")
    lines += [
        f"cafile {s.cafile}",
        f"certfile {s.certfile}",
        f"keyfile {s.keyfile}",
        f"crlfile {s.crlfile}",
        "require_certificate true",
        "use_identity_as_username true",
        "# The client id is replaced by the certificate CN: no session takeover by id,",
        "# and a service's client id (svc-ingest-1) is reserved for its certificate.",
        "# (A listener option: placed before any listener it would open port 1883.)",
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
    ]
    return "\n".join(lines) + "\n"


def write_broker_config(settings: BrokerSettings, conf_path: Path) -> None:
    """Write ``mosquitto.conf`` to ``conf_path`` and the ACL file to
    ``settings.acl_file``, both atomically."""
    write_public_file(Path(settings.acl_file), render_acl(settings.services).encode())
    write_public_file(Path(conf_path), render_mosquitto_conf(settings).encode())

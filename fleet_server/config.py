"""Server configuration: a TOML file plus ``FLEET_*`` environment overrides, validated.

Every setting lives in a ``[section]`` of the TOML file and can be overridden by the
environment variable ``FLEET_<SECTION>_<KEY>`` (for example ``FLEET_DATABASE_URL`` is
``[database] url`` and ``FLEET_INGEST_AUTO_REGISTER`` is ``[ingest] auto_register``).
Validation happens once, at start, and a bad value raises :class:`ConfigError` naming the
key (``ingest.batch_size``) and, when it came from the environment, the variable.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_CONFIG_PATH = Path("fleet-server.toml")
DEFAULT_DATABASE_URL = "sqlite:///./var/fleet.db"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"configuration error at {key}: {message}")
        self.key = key
        self.message = message


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    """Where the fleet's data lives: SQLite (default, zero setup) or PostgreSQL."""

    url: str = DEFAULT_DATABASE_URL
    pool_size: int = Field(default=5, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value


class MqttSettings(_Section):
    """The broker. With no ``url`` the server starts an embedded broker on loopback."""

    url: str | None = None
    embedded_port: int = Field(default=1883, ge=0, le=65535)
    client_id: str = Field(default="fleet-server", min_length=1, max_length=64)
    keepalive_s: int = Field(default=30, ge=5, le=3600)

    @field_validator("url")
    @classmethod
    def _mqtt_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("mqtt://", "tcp://", "mqtts://")):
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        return value


class NatsSettings(_Section):
    """The NATS JetStream back-end (instead of ``[mqtt]``): devices speak MQTT 3.1.1 to the
    cluster's MQTT listeners; the server's ingest, commands and presence use NATS.

    Setting ``servers`` selects it. Ingest workers share one durable pull consumer on the
    stream that holds the devices' QoS 1 publishes (see README, Scaling out).
    """

    servers: list[str] = Field(default_factory=list)
    """``nats://host:4222`` (or ``tls://``) URLs of any nodes; the client finds the rest."""
    credentials: Path | None = None
    """A ``.creds`` file (JWT + NKey) for the server's NATS user."""
    user: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    durable: str = Field(default="fleet-ingest", min_length=1, max_length=64)
    """The durable consumer every ``fleet-server ingest`` process pulls from."""
    replicas: int = Field(default=0, ge=0, le=5)
    """Replicas of the stream and consumer; 0 = 3 on a cluster of 3 or more nodes, else 1."""
    fetch_batch: int = Field(default=2000, ge=1, le=10000)
    """Messages a worker fetches (and commits in one transaction) at most; a fetch returns
    what is there at once, so a large batch costs no latency at low rates."""
    ack_wait_s: float = Field(default=30.0, gt=0)
    """A fetched message not acknowledged within this is redelivered (to any worker)."""
    max_ack_pending: int = Field(default=40000, ge=1)
    """Fetched, unacknowledged messages over all workers. A worker holds up to two batches
    (2 x ``fetch_batch``), so past ``max_ack_pending / (2 x fetch_batch)`` workers (10 with
    the defaults) they wait on each other: raise it with the workers. An ingest that starts
    brings an existing consumer's ``max_ack_pending`` and ``ack_wait`` to these values."""

    @field_validator("servers", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("servers")
    @classmethod
    def _nats_scheme(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("nats://", "tls://")):
                raise ValueError(f"{url!r} must look like nats://host:port or tls://host:port")
        return value

    @field_validator("credentials", "tls_ca", "tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def enabled(self) -> bool:
        """True when the NATS back-end is selected."""
        return bool(self.servers)


class ApiSettings(_Section):
    """The HTTP API listener and the public base URL devices use to reach it."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    base_url: str | None = None
    """URL devices use for diagnostics uploads; defaults to ``http://host:port``."""
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest request body on every route without its own limit (bundles, diagnostics
    and CSV imports have theirs); larger ones get 413 before they are read."""
    max_concurrency: int = Field(default=64, ge=1)
    """Requests served at once; uvicorn answers 503 beyond."""
    auth_failure_limit: int = Field(default=10, ge=1)
    """Failed tokens one source may present within ``auth_failure_window_s``..."""
    auth_failure_window_s: float = Field(default=60, gt=0)
    auth_block_s: float = Field(default=60, gt=0)
    """...before it is refused (429) for this long."""


class IngestSettings(_Section):
    """The MQTT ingest workers."""

    auto_register: bool = False
    batch_size: int = Field(default=500, ge=1, le=20000)
    receive_maximum: int = Field(default=2000, ge=1, le=65535)
    shared_group: str | None = None
    """MQTT 5 shared subscription group, to split the load over several workers; ignored on
    the embedded broker (MQTT 3.1.1). Off by default: Mosquitto does not queue a shared
    subscription's messages for members that are disconnected, so a broker restart that the
    devices reconnect to before the workers do would lose messages (see README, Limits)."""
    session_expiry_s: int = Field(default=86400, ge=0)
    client_id: str = Field(default="fleet-ingest", min_length=1, max_length=64)
    device_messages_per_s: float = Field(default=2.0, gt=0)
    """Per-device budget: messages beyond it are acknowledged, counted as
    ``rejected{reason="rate_limited"}``, alarmed on (``ingest_rate_limited``) and not stored."""
    device_message_burst: int = Field(default=30_000, ge=1)
    """Sized for catch-up: an agent replays its whole outbox at once after an outage (at
    agent defaults a week offline is 10,080 telemetry messages; a full 50 MiB outbox of
    2 KB messages is ~25,600)."""
    device_bytes_per_s: float = Field(default=32 * 1024, gt=0)
    device_byte_burst: int = Field(default=64 * 1024 * 1024, ge=1024)
    broker_sys_interval_s: float = Field(default=10.0, ge=0)
    """The broker's ``sys_interval``: no ``$SYS/broker/uptime`` for 3x this makes the ingest
    not ready. 0: the broker publishes no ``$SYS`` tree."""
    stable_s: float = Field(default=10.0, ge=0)
    """After flapping or a lost session, connected this long before ``/readyz`` is 200."""


class PresenceSettings(_Section):
    """The backstop sweep (presence itself comes from the retained ``online`` and the last
    will) and the clock-skew bound. The defaults match the agent's (keepalive 30 s,
    publish interval 60 s): a device is timed out after ``timeout_factor`` x the longer of
    its keepalive and its announced publish interval."""

    sweep_interval_s: float = Field(default=5.0, gt=0)
    default_keepalive_s: int = Field(default=30, ge=1)
    """Assumed for a device that announced no keepalive (the agent's default)."""
    default_interval_s: float = Field(default=60.0, gt=0)
    """Assumed for a device that announced no publish interval (the agent's default)."""
    timeout_factor: float = Field(default=2.0, ge=1.0)
    max_clock_skew_s: float = Field(default=120.0, gt=0)
    """A device clock further than this from the server's raises ``clock_skew`` and its
    timestamps no longer order its presence and latest vitals (server receipt does)."""


class RetentionSettings(_Section):
    """How long raw telemetry is kept before it is downsampled to hourly aggregates."""

    raw_days: float = Field(default=30.0, gt=0)
    interval_s: float = Field(default=3600.0, gt=0)
    partition: Literal["day", "week"] = "day"
    """PostgreSQL: the period of a telemetry partition created ahead by the jobs."""
    partitions_ahead_days: float = Field(default=7.0, ge=1)


class DiagnosticsSettings(_Section):
    """Diagnostics bundles uploaded by devices."""

    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    token_ttl_s: int = Field(default=3600, ge=60)


class CommandSettings(_Section):
    """Commands sent to devices."""

    default_ttl_s: int = Field(default=600, ge=10)


class UpdatesSettings(_Section):
    """Signed updates: where the TUF repository and its online keys live, the default
    per-phase silence timeouts of a deployment, and how often the jobs run."""

    repo_dir: Path = Path("./var/tuf")
    """TUF repository directory, served at ``/tuf/metadata/`` and ``/tuf/targets/``."""
    keys_dir: Path = Path("./var/tuf-keys")
    """Online keys (targets, snapshot, timestamp); 0700, files 0600."""
    accept_s: float = Field(default=600.0, gt=0)
    """Sent, no report yet (the device is offline or ignores the command)."""
    download_s: float = Field(default=1800.0, gt=0)
    install_s: float = Field(default=900.0, gt=0)
    reboot_s: float = Field(default=600.0, gt=0)
    commit_s: float = Field(default=900.0, gt=0)
    """In trial (health checks running) without committed or rolled back."""
    max_bundle_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)
    """Largest bundle the upload endpoint accepts."""
    expiry_interval_s: float = Field(default=15.0, gt=0)
    resign_interval_s: float = Field(default=300.0, gt=0)

    def default_timeouts(self) -> dict[str, float]:
        """The per-phase timeouts a deployment gets unless it brings its own."""
        return {
            "accept_s": self.accept_s,
            "download_s": self.download_s,
            "install_s": self.install_s,
            "reboot_s": self.reboot_s,
            "commit_s": self.commit_s,
        }


class RolloutSettings(_Section):
    """The staged-rollout engine."""

    tick_interval_s: float = Field(default=5.0, gt=0)
    """How often the engine reconciles active rollouts."""


class RecallSettings(_Section):
    """Recall progress: snapshot interval and when a silent device counts as unreachable."""

    offline_days: float = Field(default=30.0, gt=0)
    """A device offline longer than this is ``unreachable`` (adjusted completion rate)."""
    snapshot_interval_s: float = Field(default=3600.0, gt=0)
    remedy_check_interval_s: float = Field(default=60.0, gt=0)
    """How often devices reporting the remedy version are marked remedied."""
    safety_key: str | None = None
    """Ed25519 private key (PEM) signing safe-mode commands (``fleet-server safety-key``)."""
    safe_mode_ttl_s: int = Field(default=7 * 86400, ge=60)
    """How long a safe-mode command stays valid for a device that is offline."""


class RegistrySettings(_Section):
    """The device registry."""

    activate_on_first_contact: bool = True
    """A device without an activation date gets the UTC day of its first message
    (warranty coverage and reliability analytics count from it); a registry value is kept."""


DEFAULT_FAILURE_MODE_ALARMS: dict[str, list[str]] = {
    "fan_failure": ["fan_stopped"],
    "overheating": ["overheating", "fan_stopped"],
    "storage_failure": ["disk_full", "storage_errors"],
    "power_failure": ["brownout", "power_loss"],
}


class WarrantySettings(_Section):
    """Warranty claims: which alarm codes are evidence for which failure mode."""

    failure_mode_alarms: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_FAILURE_MODE_ALARMS.items()}
    )
    """``failure mode -> alarm codes`` counted as evidence for a claim (a claim for
    ``fan_failure`` finds ``fan_stopped`` alarms). A mode not listed matches the alarm
    code of the same name; the mode's own code always counts."""


class WebhookSettings(_Section):
    """Outgoing webhooks: how often the delivery job runs, HTTP timeout, retries."""

    interval_s: float = Field(default=5.0, gt=0)
    """How often the delivery job sends what is due."""
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Per request (connect, read, write); a timeout is a failed attempt."""
    base_delay_s: float = Field(default=10.0, gt=0)
    """First retry after about this long; doubles per attempt, with jitter."""
    max_delay_s: float = Field(default=3600.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=100)
    """A delivery is ``failed`` after this many attempts."""
    disable_after: int = Field(default=20, ge=1)
    """Consecutive failed attempts of one subscription that disable it (audited)."""
    batch_size: int = Field(default=100, ge=1, le=10000)


class SupportSettings(_Section):
    """Support tickets, SLA policies and calendars, and service SLOs (README "Support")."""

    priority_matrix: dict[str, int] = Field(
        default_factory=lambda: {
            f"{i}x{u}": min(5, i + u - 1) for i in (1, 2, 3) for u in (1, 2, 3)
        }
    )
    """``"<impact>x<urgency>" -> priority`` (1 critical .. 5 planning), ITIL style."""
    calendars: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """``name -> {tz, hours = {mon = "09:00-17:00", ...} | "24x7", holidays, country}``;
    ``24x7`` always exists."""
    policies: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {
                "name": "p1",
                "priorities": [1],
                "first_response_h": 0.5,
                "next_update_h": 2,
                "resolution_h": 4,
            },
            {
                "name": "p2",
                "priorities": [2],
                "first_response_h": 1,
                "next_update_h": 4,
                "resolution_h": 8,
            },
            {"name": "standard", "first_response_h": 8, "next_update_h": 24, "resolution_h": 72},
        ]
    )
    """SLA policies, first match wins: selectors ``priorities``, ``categories``,
    ``customers``; targets ``first_response_h``, ``next_update_h``, ``resolution_h``;
    ``calendar``, ``pause_states``, ``reset_on_reopen``."""
    vendors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Underpinning contracts: ``vendor -> {target_h, calendar}`` for time in
    ``pending_third_party``."""
    alarm_ticket_min_severity: str | None = None
    """Open a ticket for every open alarm at or above this severity (None = never)."""
    claim_tickets: bool = False
    """Open a ticket for every new warranty claim."""
    exposure_tickets: bool = True
    """Open a security-incident ticket for every new critical exposure event."""
    tick_interval_s: float = Field(default=60.0, gt=0)
    """How often the SLA tick, the ticket rules and the SLO evaluation run."""
    slos: list[dict[str, Any]] = Field(default_factory=list)
    """Service level objectives (empty = the built-in ones): ``component``, ``objective``
    (0.999), ``window_days`` (30)."""


class SecuritySettings(_Section):
    """Demo or production mode, and where the fleet's certificate authority lives.

    ``mode`` defaults to ``production`` when the settings come from a configuration file and
    to ``demo`` for the zero-setup start with no file (see :func:`load_settings`).
    """

    mode: Literal["demo", "production"] = "demo"
    ca_dir: Path | None = None
    """The issuing CA directory (``fleet-server ca init-issuing --out``): provisioning,
    revocation and the CRL."""
    device_mqtt_url: str | None = None
    """Broker URL written into device credentials bundles; defaults to ``mqtt.url``."""
    tuf_root: Path | None = None
    """The TUF ``root.json`` copied into credentials bundles (the device's trust anchor)."""
    min_root_threshold: int = Field(default=2, ge=1, le=20)
    """Root signatures a production TUF root must require (its keys kept offline)."""

    @field_validator("ca_dir", "device_mqtt_url", "tuf_root", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


class TlsSettings(_Section):
    """TLS for the operator API and the server's own MQTT connections (mutual TLS)."""

    api_cert: Path | None = None
    api_key: Path | None = None
    api_client_ca: Path | None = None
    """CA chain for optional client certificates on the API listener."""
    mqtt_ca: Path | None = None
    mqtt_cert: Path | None = None
    """The ingest's service certificate (``svc-ingest-N``; one per worker, since the broker
    takes the client id from the certificate)."""
    mqtt_key: Path | None = None
    command_cert: Path | None = None
    """The command publisher's service certificate (e.g. ``svc-commands``); defaults to
    ``mqtt_cert``, which only works when the API runs in another process than the ingest."""
    command_key: Path | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


class Settings(_Section):
    """All server settings, validated."""

    database: DatabaseSettings = DatabaseSettings()
    mqtt: MqttSettings = MqttSettings()
    nats: NatsSettings = NatsSettings()
    api: ApiSettings = ApiSettings()
    ingest: IngestSettings = IngestSettings()
    presence: PresenceSettings = PresenceSettings()
    retention: RetentionSettings = RetentionSettings()
    diagnostics: DiagnosticsSettings = DiagnosticsSettings()
    commands: CommandSettings = CommandSettings()
    updates: UpdatesSettings = UpdatesSettings()
    rollouts: RolloutSettings = RolloutSettings()
    recalls: RecallSettings = RecallSettings()
    webhooks: WebhookSettings = WebhookSettings()
    warranty: WarrantySettings = WarrantySettings()
    support: SupportSettings = SupportSettings()
    registry: RegistrySettings = RegistrySettings()
    security: SecuritySettings = SecuritySettings()
    tls: TlsSettings = TlsSettings()

    @property
    def public_base_url(self) -> str:
        """Base URL of the API as devices see it."""
        return (self.api.base_url or f"http://{self.api.host}:{self.api.port}").rstrip("/")


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Collect ``FLEET_<SECTION>_<KEY>`` variables; return values and their origins."""
    values: dict[str, dict[str, str]] = {}
    origin: dict[str, str] = {}
    for section_name, field in Settings.model_fields.items():
        section_type = field.annotation
        for key in section_type.model_fields:  # type: ignore[union-attr]
            var = f"FLEET_{section_name}_{key}".upper()
            if var in env:
                values.setdefault(section_name, {})[key] = env[var]
                origin[f"{section_name}.{key}"] = var
    return values, origin


def load_settings(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (``path``, ``$FLEET_CONFIG`` or ``./fleet-server.toml`` when it
    exists), apply environment overrides and validate; raise :class:`ConfigError`."""
    env = os.environ if env is None else env
    explicit = path is not None or "FLEET_CONFIG" in env
    file_path = Path(path or env.get("FLEET_CONFIG") or DEFAULT_CONFIG_PATH)
    data: dict[str, Any] = {}
    if file_path.exists():
        try:
            data = tomllib.loads(file_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file_path), f"not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(str(file_path), f"cannot read: {exc}") from None
    elif explicit:
        raise ConfigError(str(file_path), "configuration file does not exist")
    for section, body in data.items():
        if section not in Settings.model_fields:
            raise ConfigError(section, f"unknown section [{section}] in {file_path}")
        if not isinstance(body, dict):
            raise ConfigError(section, "must be a [section] table")
    if file_path.exists():
        # A configuration file means a real installation: secure unless it says demo.
        data.setdefault("security", {}).setdefault("mode", "production")
    overrides, origin = _env_overrides(env)
    for section, body in overrides.items():
        data.setdefault(section, {}).update(body)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        where = f" (from ${origin[key]})" if key in origin else ""
        raise ConfigError(key, f"{err['msg']}{where}") from None

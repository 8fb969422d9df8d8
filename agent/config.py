"""The agent's TOML configuration: loading and strict validation.

Every problem is reported as a :class:`ConfigError` naming the key and the bad value, so
``fleet-agent run`` can refuse to start with one clear line instead of a traceback.
Unknown keys are errors: a typo must not silently fall back to a default.

Example (``/etc/edgefleet/agent.toml``)::

    device_id = "pi-0042"
    broker = "mqtts://fleet.example.com:8883"   # or a cluster's nodes: ["mqtts://n1:8883", ...]
    mqtt_version = "auto"        # or "5" / "3.1.1"; auto falls back to 3.1.1 if refused
    reconnect_min_s = 1          # reconnect backoff: exponential with jitter, reset on success
    reconnect_max_s = 60
    state_dir = "/var/lib/edgefleet"
    sample_interval_s = 10
    publish_interval_s = 60

    [tls]
    ca = "/etc/edgefleet/ca.pem"
    cert = "/etc/edgefleet/device.pem"
    key = "/etc/edgefleet/device.key"
    # or, instead of the three: a credentials bundle directory (renewed automatically)
    # bundle = "/etc/edgefleet/credentials"

    [buffer]
    max_bytes = 52428800
    max_age_s = 604800
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.core.rules import RuleConfigError, build_rules
from protocol import is_valid_device_id

DEFAULT_PATH = Path("/etc/edgefleet/agent.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")
MQTT_VERSIONS = ("auto", "5", "3.1.1")
"""``mqtt_version``: the same choices as :data:`agent.transport.MQTT_VERSIONS`."""


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Broker TLS: CA bundle, and the device's client certificate and key (mutual TLS)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    bundle: Path | None = None
    """A credentials bundle directory; ``ca``/``cert``/``key`` then point into it, and
    the agent renews the certificate in place before it expires."""


SLOT_BACKENDS = ("directory", "simulated", "tryboot")
TRYBOOT_ARM_WAYS = ("vcio", "vcmailbox", "reboot")
RESTART_MODES = ("exit", "reboot", "none")


@dataclass(frozen=True, slots=True)
class TrybootConfig:
    """``updates.tryboot_*``: where a Raspberry Pi's tryboot A/B layout lives."""

    autoboot: Path = Path("/boot/firmware/autoboot.txt")
    device_tree: Path = Path("/proc/device-tree")
    boot_partitions: tuple[int, int] = (2, 3)
    boot_devices: tuple[Path, Path] = (Path("/dev/mmcblk0p2"), Path("/dev/mmcblk0p3"))
    root_devices: tuple[Path, Path] = (Path("/dev/mmcblk0p5"), Path("/dev/mmcblk0p6"))
    arm: str = "vcio"
    watchdog: Path | None = None
    remount: bool = False
    """Keep ``autoboot.txt``'s filesystem read-only, remounted read-write per write."""


@dataclass(frozen=True, slots=True)
class UpdatesConfig:
    """The ``[updates]`` table: signed over-the-air updates (off unless enabled)."""

    enabled: bool = False
    metadata_url: str = ""
    targets_url: str = ""
    root_path: Path | None = None
    slots: str = "directory"
    slots_dir: Path | None = None
    hardware_revision: str = ""
    model: str | None = None
    max_attempts: int = 3
    health_timeout_s: float | None = None
    download_dir: Path | None = None
    restart: str = "exit"
    payload_mount: str | None = None
    simulate_outcomes: bool = False
    initial_version: str = "0.0.0"
    download_retries: int = 5
    retry_backoff_s: float = 2.0
    tryboot: TrybootConfig = field(default_factory=TrybootConfig)

    def redacted(self) -> dict[str, Any]:
        """Plain data for diagnostics (nothing secret here)."""
        return {
            "enabled": self.enabled,
            "metadata_url": self.metadata_url,
            "targets_url": self.targets_url,
            "root_path": str(self.root_path) if self.root_path else None,
            "slots": self.slots,
            "slots_dir": str(self.slots_dir) if self.slots_dir else None,
            "hardware_revision": self.hardware_revision,
            "model": self.model,
            "max_attempts": self.max_attempts,
            "health_timeout_s": self.health_timeout_s,
            "download_dir": str(self.download_dir) if self.download_dir else None,
            "restart": self.restart,
            "payload_mount": self.payload_mount,
            "simulate_outcomes": self.simulate_outcomes,
        }


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Validated agent settings (see the module docstring for the TOML shape)."""

    device_id: str
    broker_host: str
    broker_port: int
    broker_tls: bool
    tls: TlsConfig = field(default_factory=TlsConfig)
    broker_alternates: tuple[tuple[str, int], ...] = ()
    """Further nodes of a broker cluster (``broker = [url, ...]``), tried in turn."""
    username: str | None = None
    password_file: Path | None = None
    keepalive_s: int = 30
    mqtt_version: str = "auto"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    sample_interval_s: float = 10.0
    publish_interval_s: float = 60.0
    state_dir: Path = Path("/var/lib/edgefleet")
    buffer_max_bytes: int = 50 * 1024 * 1024
    buffer_max_age_s: float = 7 * 86400.0
    faults: dict[str, Any] = field(default_factory=dict)
    diagnostics_max_bytes: int = 5 * 1024 * 1024
    diagnostics_log_lines: int = 2000
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    log_level: str = "info"
    disk_path: str = "/"
    software_version: str = ""
    updates: UpdatesConfig = field(default_factory=lambda: UpdatesConfig())
    safety_public_key: Path | None = None
    """Ed25519 public key verifying safe-mode commands (``[safety] public_key``)."""
    source: Path | None = None

    @property
    def broker_url(self) -> str:
        """The broker as a URL (for display; credentials are never part of it)."""
        scheme = "mqtts" if self.broker_tls else "mqtt"
        return f"{scheme}://{self.broker_host}:{self.broker_port}"

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with secrets left out (for diagnostics bundles)."""
        return {
            "device_id": self.device_id,
            "broker": self.broker_url,
            "tls": {
                "ca": str(self.tls.ca) if self.tls.ca else None,
                "cert": str(self.tls.cert) if self.tls.cert else None,
                "key": "<redacted>" if self.tls.key else None,
                "bundle": str(self.tls.bundle) if self.tls.bundle else None,
            },
            "username": self.username,
            "password_file": "<redacted>" if self.password_file else None,
            "keepalive_s": self.keepalive_s,
            "mqtt_version": self.mqtt_version,
            "reconnect_min_s": self.reconnect_min_s,
            "reconnect_max_s": self.reconnect_max_s,
            "sample_interval_s": self.sample_interval_s,
            "publish_interval_s": self.publish_interval_s,
            "state_dir": str(self.state_dir),
            "buffer": {"max_bytes": self.buffer_max_bytes, "max_age_s": self.buffer_max_age_s},
            "faults": self.faults,
            "diagnostics": {
                "max_bytes": self.diagnostics_max_bytes,
                "log_lines": self.diagnostics_log_lines,
            },
            "reboot_command": list(self.reboot_command),
            "log_level": self.log_level,
            "disk_path": self.disk_path,
            "software_version": self.software_version,
            "updates": self.updates.redacted(),
            "safety_public_key": str(self.safety_public_key) if self.safety_public_key else None,
        }


_TOP_KEYS = {
    "device_id",
    "broker",
    "tls",
    "username",
    "password_file",
    "keepalive",
    "mqtt_version",
    "reconnect_min_s",
    "reconnect_max_s",
    "sample_interval_s",
    "publish_interval_s",
    "state_dir",
    "buffer",
    "faults",
    "diagnostics",
    "reboot_command",
    "log_level",
    "disk_path",
    "software_version",
    "updates",
    "safety",
}
_UPDATE_KEYS = {
    "enabled",
    "server_url",
    "metadata_url",
    "targets_url",
    "root_path",
    "slots",
    "slots_dir",
    "hardware_revision",
    "model",
    "max_attempts",
    "health_timeout_s",
    "download_dir",
    "restart",
    "payload_mount",
    "simulate_outcomes",
    "initial_version",
    "download_retries",
    "retry_backoff_s",
    "tryboot_autoboot",
    "tryboot_device_tree",
    "tryboot_boot_partitions",
    "tryboot_boot_devices",
    "tryboot_root_devices",
    "tryboot_arm",
    "tryboot_watchdog",
    "tryboot_remount",
}
_SECTIONS = {
    "tls": {"ca", "cert", "key", "bundle"},
    "buffer": {"max_bytes", "max_age_s"},
    "diagnostics": {"max_bytes", "log_lines"},
    "updates": _UPDATE_KEYS,
    "safety": {"public_key"},
}


def _unknown(keys: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in keys:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(
                f"unknown setting {prefix}{key!r} (known: {', '.join(sorted(allowed))})"
            )


def _num(
    data: Mapping[str, Any],
    key: str,
    default: float,
    *,
    low: float,
    high: float,
    where: str = "",
    integer: bool = False,
) -> float:
    name = f"{where}.{key}" if where else key
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{name}: expected a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value!r} is out of range ({low:g} to {high:g})")
    return value


def _str(data: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        name = f"{where}.{key}" if where else key
        raise ConfigError(f"{name}: expected a non-empty string, got {value!r}")
    return value


def _readable_file(data: Mapping[str, Any], key: str, where: str) -> Path | None:
    value = _str(data, key, where)
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{where}.{key}: file {value!r} does not exist")
    return path


def _bundle_tls(directory: Path, given: TlsConfig, device_id: str) -> TlsConfig:
    """TLS files from a credentials bundle, checked now (key mode, pair, device id)."""
    from agent.credentials import BundleError, read_bundle

    if given.ca or given.cert or given.key:
        raise ConfigError("tls.bundle: set either bundle or ca/cert/key, not both")
    try:
        bundle = read_bundle(directory)
    except BundleError as exc:
        raise ConfigError(f"tls.bundle: {exc}") from None
    if bundle.device_id != device_id:
        raise ConfigError(
            f"tls.bundle: the bundle is for {bundle.device_id!r}, not device_id {device_id!r}"
        )
    return TlsConfig(
        ca=bundle.chain_path, cert=bundle.cert_path, key=bundle.key_path, bundle=directory
    )


def parse_broker(url: object) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` to ``(host, port, tls)``."""
    if not isinstance(url, str):
        raise ConfigError(f"broker: expected a URL string like mqtts://host:8883, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"broker: {url!r} must start with mqtt:// or mqtts://")
    if parts.username or parts.password:
        raise ConfigError("broker: put credentials in username/password_file, not in the URL")
    if not parts.hostname:
        raise ConfigError(f"broker: {url!r} has no host name")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"broker: {url!r} has an invalid port") from None
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"broker: {url!r} must not have a path or query")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def parse_brokers(value: object) -> tuple[str, int, bool, tuple[tuple[str, int], ...]]:
    """``broker``: one URL, or a list of a cluster's nodes (one scheme for all)."""
    urls = value if isinstance(value, list) and value else [value]
    parsed = [parse_broker(u) for u in urls]
    if len({tls for _h, _p, tls in parsed}) > 1:
        raise ConfigError("broker: mix of mqtt:// and mqtts:// URLs; use one scheme for all")
    host, port, tls = parsed[0]
    return host, port, tls, tuple((h, p) for h, p, _t in parsed[1:])


def _mqtt_version(value: object) -> str:
    """``mqtt_version``: "auto", "5" or "3.1.1" (a bare ``5`` is read as "5")."""
    if value == 5 and not isinstance(value, bool):
        value = "5"
    if value not in MQTT_VERSIONS:
        choices = ", ".join(f'"{v}"' for v in MQTT_VERSIONS)
        raise ConfigError(f"mqtt_version: {value!r} is not one of {choices}")
    return str(value)


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> AgentConfig:
    """Validate a decoded TOML document into an :class:`AgentConfig`."""
    _unknown(data, _TOP_KEYS, "")
    for section, keys in _SECTIONS.items():
        value = data.get(section, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{section}: expected a table ([{section}])")
        _unknown(value, keys, section)

    device_id = data.get("device_id")
    if not isinstance(device_id, str) or not is_valid_device_id(device_id):
        raise ConfigError(
            f"device_id: {device_id!r} is missing or invalid (1-64 letters, digits, '.', '_', '-')"
        )
    if "broker" not in data:
        raise ConfigError('broker: required, e.g. broker = "mqtts://fleet.example.com:8883"')
    host, port, use_tls, alternates = parse_brokers(data["broker"])

    tls_data = data.get("tls", {})
    tls = TlsConfig(
        ca=_readable_file(tls_data, "ca", "tls"),
        cert=_readable_file(tls_data, "cert", "tls"),
        key=_readable_file(tls_data, "key", "tls"),
    )
    bundle_dir = _str(tls_data, "bundle", "tls")
    if bundle_dir is not None:
        tls = _bundle_tls(Path(bundle_dir), tls, device_id)
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError("tls: cert and key must be given together")
    if (tls.ca or tls.cert) and not use_tls:
        raise ConfigError("tls: certificates are set but broker is mqtt:// (use mqtts://)")
    username = _str(data, "username")
    password_file = _readable_file(data, "password_file", "") if "password_file" in data else None
    if password_file and not username:
        raise ConfigError("password_file: set only together with username")

    mqtt_version = _mqtt_version(data.get("mqtt_version", "auto"))
    reconnect_min = _num(data, "reconnect_min_s", 1.0, low=0.05, high=3600)
    reconnect_max = _num(data, "reconnect_max_s", 60.0, low=0.05, high=86400)
    if reconnect_max < reconnect_min:
        raise ConfigError(
            f"reconnect_max_s: {reconnect_max!r} must be >= reconnect_min_s ({reconnect_min!r})"
        )
    sample = _num(data, "sample_interval_s", 10.0, low=0.05, high=86400)
    publish = _num(data, "publish_interval_s", 60.0, low=0.05, high=86400)
    if publish < sample:
        raise ConfigError(
            f"publish_interval_s: {publish!r} must be >= sample_interval_s ({sample!r})"
        )
    buffer = data.get("buffer", {})
    diag = data.get("diagnostics", {})

    state_dir = _str(data, "state_dir") or "/var/lib/edgefleet"
    reboot = data.get("reboot_command", ["systemctl", "reboot"])
    if isinstance(reboot, str):
        reboot = reboot.split()
    if (
        not isinstance(reboot, list)
        or not reboot
        or not all(isinstance(a, str) and a for a in reboot)
    ):
        raise ConfigError(f"reboot_command: expected a command line, got {reboot!r}")
    level = data.get("log_level", "info")
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level: {level!r} is not one of {', '.join(LOG_LEVELS)}")

    faults = data.get("faults", {})
    if not isinstance(faults, Mapping):
        raise ConfigError("faults: expected a table ([faults.<rule>])")
    try:
        build_rules(faults)  # validate now, at start, not at the first sample
    except RuleConfigError as exc:
        raise ConfigError(str(exc)) from None

    return AgentConfig(
        device_id=device_id,
        broker_host=host,
        broker_port=port,
        broker_tls=use_tls,
        broker_alternates=alternates,
        tls=tls,
        username=username,
        password_file=password_file,
        keepalive_s=int(_num(data, "keepalive", 30, low=5, high=3600, integer=True)),
        mqtt_version=mqtt_version,
        reconnect_min_s=float(reconnect_min),
        reconnect_max_s=float(reconnect_max),
        sample_interval_s=float(sample),
        publish_interval_s=float(publish),
        state_dir=Path(state_dir),
        buffer_max_bytes=int(
            _num(
                buffer,
                "max_bytes",
                50 * 1024 * 1024,
                low=4096,
                high=2**40,
                where="buffer",
                integer=True,
            )
        ),
        buffer_max_age_s=float(
            _num(buffer, "max_age_s", 7 * 86400, low=1, high=10 * 365 * 86400, where="buffer")
        ),
        faults=dict(faults),
        diagnostics_max_bytes=int(
            _num(
                diag,
                "max_bytes",
                5 * 1024 * 1024,
                low=1024,
                high=2**31,
                where="diagnostics",
                integer=True,
            )
        ),
        diagnostics_log_lines=int(
            _num(diag, "log_lines", 2000, low=10, high=100000, where="diagnostics", integer=True)
        ),
        reboot_command=tuple(reboot),
        log_level=level,
        disk_path=_str(data, "disk_path") or "/",
        software_version=_str(data, "software_version") or "",
        updates=parse_updates(data.get("updates", {}), Path(state_dir)),
        safety_public_key=_readable_file(data.get("safety", {}), "public_key", "safety"),
        source=source,
    )


def _http_url(value: str, key: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"updates.{key}: {value!r} must be an http:// or https:// URL")
    return value if value.endswith("/") else value + "/"


def _pair(data: Mapping[str, Any], key: str, default: tuple[Any, Any], kind: type) -> Any:
    value = data.get(key)
    if value is None:
        return default
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, kind) and not isinstance(v, bool) and v for v in value)
    ):
        raise ConfigError(
            f"updates.{key}: expected a list of two {kind.__name__} values (slot a, slot b), "
            f"got {value!r}"
        )
    if value[0] == value[1]:
        raise ConfigError(f"updates.{key}: slot a and slot b must differ, got {value!r}")
    return tuple(Path(v) for v in value) if kind is str else tuple(value)


def _tryboot(data: Mapping[str, Any]) -> TrybootConfig:
    """The ``tryboot_*`` keys (defaults: a Pi with the MBR layout of the README)."""
    base = TrybootConfig()
    arm = data.get("tryboot_arm", base.arm)
    if arm not in TRYBOOT_ARM_WAYS:
        raise ConfigError(
            f"updates.tryboot_arm: {arm!r} is not one of {', '.join(TRYBOOT_ARM_WAYS)}"
        )
    partitions = _pair(data, "tryboot_boot_partitions", base.boot_partitions, int)
    if not all(2 <= p <= 63 for p in partitions):
        raise ConfigError(
            f"updates.tryboot_boot_partitions: {list(partitions)} must be partition numbers "
            "2 to 63 (partition 1 holds autoboot.txt)"
        )
    watchdog = _str(data, "tryboot_watchdog", "updates")
    remount = data.get("tryboot_remount", base.remount)
    if not isinstance(remount, bool):
        raise ConfigError(f"updates.tryboot_remount: expected true or false, got {remount!r}")
    return TrybootConfig(
        autoboot=Path(_str(data, "tryboot_autoboot", "updates") or base.autoboot),
        device_tree=Path(_str(data, "tryboot_device_tree", "updates") or base.device_tree),
        boot_partitions=partitions,
        boot_devices=_pair(data, "tryboot_boot_devices", base.boot_devices, str),
        root_devices=_pair(data, "tryboot_root_devices", base.root_devices, str),
        arm=arm,
        watchdog=Path(watchdog) if watchdog else None,
        remount=remount,
    )


def parse_updates(data: Mapping[str, Any], state_dir: Path) -> UpdatesConfig:
    """Validate the ``[updates]`` table (only checked in depth when ``enabled``)."""
    enabled = data.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"updates.enabled: expected true or false, got {enabled!r}")
    slots = data.get("slots", "directory")
    if slots not in SLOT_BACKENDS:
        raise ConfigError(f"updates.slots: {slots!r} is not one of {', '.join(SLOT_BACKENDS)}")
    restart = data.get("restart", {"simulated": "none", "tryboot": "reboot"}.get(slots, "exit"))
    if restart not in RESTART_MODES:
        raise ConfigError(f"updates.restart: {restart!r} is not one of {', '.join(RESTART_MODES)}")
    simulate = data.get("simulate_outcomes", slots == "simulated")
    if not isinstance(simulate, bool):
        raise ConfigError(f"updates.simulate_outcomes: expected true or false, got {simulate!r}")
    server = _str(data, "server_url", "updates")
    metadata_url = _str(data, "metadata_url", "updates")
    targets_url = _str(data, "targets_url", "updates")
    if server is not None:
        base = server.rstrip("/")
        metadata_url = metadata_url or f"{base}/tuf/metadata/"
        targets_url = targets_url or f"{base}/tuf/targets/"
    health = data.get("health_timeout_s")
    config = UpdatesConfig(
        enabled=enabled,
        metadata_url=_http_url(metadata_url, "metadata_url") if metadata_url else "",
        targets_url=_http_url(targets_url, "targets_url") if targets_url else "",
        root_path=Path(p) if (p := _str(data, "root_path", "updates")) else None,
        slots=slots,
        slots_dir=Path(_str(data, "slots_dir", "updates") or state_dir / "slots"),
        hardware_revision=_str(data, "hardware_revision", "updates") or "",
        model=_str(data, "model", "updates"),
        max_attempts=int(
            _num(data, "max_attempts", 3, low=1, high=100, where="updates", integer=True)
        ),
        health_timeout_s=(
            None
            if health is None
            else float(_num(data, "health_timeout_s", 60, low=1, high=3600, where="updates"))
        ),
        download_dir=Path(_str(data, "download_dir", "updates") or state_dir / "downloads"),
        restart=restart,
        payload_mount=(_str(data, "payload_mount", "updates") or "").rstrip("/") or None,
        simulate_outcomes=simulate,
        initial_version=_str(data, "initial_version", "updates") or "0.0.0",
        download_retries=int(
            _num(data, "download_retries", 5, low=0, high=1000, where="updates", integer=True)
        ),
        retry_backoff_s=float(
            _num(data, "retry_backoff_s", 2.0, low=0.01, high=3600, where="updates")
        ),
        tryboot=_tryboot(data),
    )
    if config.payload_mount is not None and not config.payload_mount.startswith("/"):
        raise ConfigError(f"updates.payload_mount: {config.payload_mount!r} must be absolute")
    if slots == "simulated" and restart != "none":
        raise ConfigError(
            'updates.restart: simulated slots live in memory; use restart = "none" with them'
        )
    if slots == "tryboot" and restart != "reboot":
        raise ConfigError(
            'updates.restart: tryboot slots switch at a reboot; use restart = "reboot" with them'
        )
    if not enabled:
        return config
    if not config.metadata_url or not config.targets_url:
        raise ConfigError(
            "updates: set server_url (or both metadata_url and targets_url) when enabled"
        )
    if config.root_path is None:
        raise ConfigError("updates.root_path: required when enabled (the provisioned root.json)")
    if not config.root_path.is_file():
        raise ConfigError(f"updates.root_path: file {str(config.root_path)!r} does not exist")
    if not config.hardware_revision:
        raise ConfigError('updates.hardware_revision: required when enabled (e.g. "rev-a")')
    return config


def load_config(path: Path | str) -> AgentConfig:
    """Read and validate the TOML file at ``path``."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (use --config PATH)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, source=path)

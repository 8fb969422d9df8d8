"""Production mode: the settings a production server refuses to start with.

The check is a pure function of the settings (and a file-existence probe tests can swap),
so ``fleet-server run|api|ingest|jobs`` and the tests share it. Demo mode starts with
anything on loopback (:func:`demo_problems`) and says loudly that it is insecure and
what any local client can do, at start (:func:`demo_warning`) and on ``/healthz``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleet_server.adapters.mqtt_url import is_tls_url
from fleet_server.config import Settings
from fleet_server.identity import ca_store
from fleet_server.updates.bootstrap import DEV_ROOT_DIR

DEMO_WARNING = """\
*****************************************************************************
*  INSECURE DEMO MODE                                                       *
*  No mutual TLS, possibly an embedded broker without authentication, and   *
*  devices may register themselves. Anyone who can reach these ports can    *
*  read and inject fleet data. Never expose this server; set                *
*  [security] mode = "production" and configure TLS (see SECURITY.md).      *
*****************************************************************************"""

LOCAL_CLIENTS = """\
*  Any process on this machine can connect to the embedded MQTT broker at
*  127.0.0.1:{port} without credentials and: publish as any device, read every
*  device's telemetry and events, send commands to any device, and take over the
*  ingest's session (client id {client_id}), which stops ingest until it reconnects.
*  Demo mode therefore listens on loopback only."""

DEMO_HEALTH_WARNING = "INSECURE DEMO MODE: no mutual TLS; not for production (see SECURITY.md)"

ROOT_FIX = (
    "create offline root keys (fleet-server keys create-root --out <offline dir> --count 3 "
    "--threshold 2) and rotate to them (fleet-server keys rotate-root --root-keys <current> "
    "--new-root-keys <offline dir>), or start over with fleet-server init --root-keys "
    "<offline dir>"
)
"""What every TUF root problem tells the operator to do."""

CRL_FILE = ca_store.CRL
CHAIN_FILE = ca_store.CHAIN


@dataclass(frozen=True)
class Problem:
    """One setting that is not acceptable in production: ``key`` names it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def demo_warning(settings: Settings) -> str:
    """The banner printed when a demo server starts: what it lacks, and with the embedded
    broker, what any local client can do to the fleet."""
    if settings.mqtt.url:
        return DEMO_WARNING
    local = LOCAL_CLIENTS.format(
        port=settings.mqtt.embedded_port, client_id=settings.ingest.client_id
    )
    return f"{DEMO_WARNING}\n{local}"


def _is_loopback(host: str | None) -> bool:
    if host is None or host == "localhost":
        return host is not None
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def demo_problems(settings: Settings) -> list[Problem]:
    """Demo mode has no authentication, so it binds and connects on loopback only: a
    non-loopback ``api.host`` or ``mqtt.url`` host is refused. Empty in production."""
    if settings.security.mode != "demo":
        return []
    problems: list[Problem] = []
    fix = "use 127.0.0.1, or production mode (TLS, tokens, mutual TLS) to serve other machines"
    if not _is_loopback(settings.api.host):
        problems.append(
            Problem("api.host", f"{settings.api.host} is not a loopback address; {fix}")
        )
    if settings.mqtt.url and not _is_loopback(urlsplit(settings.mqtt.url).hostname):
        problems.append(
            Problem("mqtt.url", f"{settings.mqtt.url} is not on a loopback address; {fix}")
        )
    return problems


def _need_file(
    problems: list[Problem], key: str, value: Path | None, what: str, exists: Callable[[Path], bool]
) -> None:
    if value is None:
        problems.append(Problem(key, f"must be set in production mode ({what})"))
    elif not exists(value):
        problems.append(Problem(key, f"{value} does not exist ({what})"))


def _read_root(path: Path) -> Any:
    from tuf.api.metadata import Metadata, Root

    return Metadata[Root].from_file(str(path)).signed


def tuf_root_problems(
    settings: Settings,
    *,
    exists: Callable[[Path], bool] = Path.exists,
    read_root: Callable[[Path], Any] = _read_root,
) -> list[Problem]:
    """What makes the TUF root under ``updates.repo_dir`` unfit for production.

    A production root is signed by at least ``security.min_root_threshold`` keys that
    live offline: no repository (``init`` would make a development root), a lower
    threshold, a root key stored next to the online keys (``updates.keys_dir`` or the
    development root directory) or a root key that also signs an online role are refused.
    """
    updates = settings.updates
    path = updates.repo_dir / "metadata" / "root.json"
    key = "updates.repo_dir"
    if not exists(path):
        return [Problem(key, f"{path} does not exist: no TUF repository; {ROOT_FIX}")]
    try:
        root = read_root(path)
    except Exception as exc:  # any unreadable root is a refusal, never a crash
        return [Problem(key, f"{path} is not a valid TUF root ({exc}); {ROOT_FIX}")]
    problems: list[Problem] = []
    role = root.roles["root"]
    minimum = settings.security.min_root_threshold
    if role.threshold < minimum:
        problems.append(
            Problem(
                key,
                f"the TUF root needs {role.threshold} signature(s), production needs at least "
                f"{minimum} (security.min_root_threshold): a development root; {ROOT_FIX}",
            )
        )
    online_dirs = (updates.keys_dir, updates.keys_dir.parent / DEV_ROOT_DIR)
    stored = sorted(kid for kid in role.keyids for d in online_dirs if exists(d / f"{kid}.pem"))
    if stored:
        problems.append(
            Problem(key, f"root key {stored[0][:16]}... is stored online on the server; {ROOT_FIX}")
        )
    online = {kid for name, r in root.roles.items() if name != "root" for kid in r.keyids}
    shared = sorted(set(role.keyids) & online)
    if shared:
        problems.append(
            Problem(key, f"root key {shared[0][:16]}... also signs an online role; {ROOT_FIX}")
        )
    return problems


def _nats_problems(
    problems: list[Problem], settings: Settings, exists: Callable[[Path], bool]
) -> None:
    """The NATS back-end in production: TLS to every node and a service certificate."""
    n = settings.nats
    for url in n.servers:
        if not url.startswith("tls://"):
            problems.append(Problem("nats.servers", f"{url} is not tls:// (TLS to the node)"))
    _need_file(problems, "nats.tls_ca", n.tls_ca, "CA chain the nodes' certs must match", exists)
    _need_file(problems, "nats.tls_cert", n.tls_cert, "service client certificate", exists)
    _need_file(problems, "nats.tls_key", n.tls_key, "service client key", exists)


def production_problems(
    settings: Settings,
    *,
    exists: Callable[[Path], bool] = Path.exists,
    read_root: Callable[[Path], Any] = _read_root,
) -> list[Problem]:
    """Every setting that makes ``settings`` insecure for production; empty in demo mode.

    Production needs: TLS on the API (certificate and key), an external broker reached over
    ``mqtts://`` with a client certificate (so the ingest and command publisher authenticate
    as their ``svc-`` service), no self-registration of devices, https URLs for what devices
    fetch and upload, the CA directory with its chain and CRL, and a TUF root kept
    offline (:func:`tuf_root_problems`).
    """
    if settings.security.mode != "production":
        return []
    problems: list[Problem] = []
    tls = settings.tls
    _need_file(problems, "tls.api_cert", tls.api_cert, "API TLS certificate", exists)
    _need_file(problems, "tls.api_key", tls.api_key, "API TLS private key", exists)
    if tls.api_client_ca is not None and not exists(tls.api_client_ca):
        problems.append(Problem("tls.api_client_ca", f"{tls.api_client_ca} does not exist"))
    if settings.nats.enabled:
        _nats_problems(problems, settings, exists)
    else:
        url = settings.mqtt.url
        if not url:
            problems.append(
                Problem(
                    "mqtt.url", "the embedded broker has no authentication; set an mqtts:// URL"
                )
            )
        elif not is_tls_url(url):
            problems.append(Problem("mqtt.url", f"{url} is not mqtts:// (TLS to the broker)"))
        _need_file(
            problems, "tls.mqtt_ca", tls.mqtt_ca, "CA chain the broker's cert must match", exists
        )
        _need_file(problems, "tls.mqtt_cert", tls.mqtt_cert, "service client certificate", exists)
        _need_file(problems, "tls.mqtt_key", tls.mqtt_key, "service client key", exists)
        _need_file(problems, "tls.command_cert", tls.command_cert, "publisher certificate", exists)
        _need_file(problems, "tls.command_key", tls.command_key, "publisher key", exists)
        if tls.command_cert is not None and tls.command_cert == tls.mqtt_cert:
            problems.append(
                Problem(
                    "tls.command_cert", "must differ from tls.mqtt_cert (one identity per client)"
                )
            )
    if settings.ingest.auto_register:
        problems.append(
            Problem("ingest.auto_register", "devices must be registered, not self-register")
        )
    base = settings.api.base_url
    if not base:
        problems.append(
            Problem("api.base_url", "must be set to the https:// URL devices use (diagnostics)")
        )
    elif not base.startswith("https://"):
        problems.append(Problem("api.base_url", f"{base} is not https:// (diagnostics uploads)"))
    ca_dir = settings.security.ca_dir
    if ca_dir is None:
        problems.append(Problem("security.ca_dir", "must name the issuing CA directory"))
    else:
        for name in (CHAIN_FILE, CRL_FILE):
            if not exists(ca_dir / name):
                problems.append(Problem("security.ca_dir", f"{ca_dir / name} is missing"))
    problems.extend(tuf_root_problems(settings, exists=exists, read_root=read_root))
    return problems

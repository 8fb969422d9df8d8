"""Production mode: the settings a production server refuses to start with.

The check is a pure function of the settings (and a file-existence probe tests can swap),
so ``fleet-server run|api|ingest|jobs`` and the tests share it. Demo mode starts with
anything and says loudly that it is insecure, at start and on ``/healthz``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet_server.adapters.mqtt_url import is_tls_url
from fleet_server.config import Settings
from fleet_server.identity import ca_store

DEMO_WARNING = """\
*****************************************************************************
*  INSECURE DEMO MODE                                                       *
*  No mutual TLS, possibly an embedded broker without authentication, and   *
*  devices may register themselves. Anyone who can reach these ports can    *
*  read and inject fleet data. Never expose this server; set                *
*  [security] mode = "production" and configure TLS (see SECURITY.md).      *
*****************************************************************************"""

DEMO_HEALTH_WARNING = "INSECURE DEMO MODE: no mutual TLS; not for production (see SECURITY.md)"

CRL_FILE = ca_store.CRL
CHAIN_FILE = ca_store.CHAIN


@dataclass(frozen=True)
class Problem:
    """One setting that is not acceptable in production: ``key`` names it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def _need_file(
    problems: list[Problem], key: str, value: Path | None, what: str, exists: Callable[[Path], bool]
) -> None:
    if value is None:
        problems.append(Problem(key, f"must be set in production mode ({what})"))
    elif not exists(value):
        problems.append(Problem(key, f"{value} does not exist ({what})"))


def production_problems(
    settings: Settings, *, exists: Callable[[Path], bool] = Path.exists
) -> list[Problem]:
    """Every setting that makes ``settings`` insecure for production; empty in demo mode.

    Production needs: TLS on the API (certificate and key), an external broker reached over
    ``mqtts://`` with a client certificate (so the ingest and command publisher authenticate
    as their ``svc-`` service), no self-registration of devices, https URLs for what devices
    fetch and upload, and the CA directory with its chain and CRL.
    """
    if settings.security.mode != "production":
        return []
    problems: list[Problem] = []
    tls = settings.tls
    _need_file(problems, "tls.api_cert", tls.api_cert, "API TLS certificate", exists)
    _need_file(problems, "tls.api_key", tls.api_key, "API TLS private key", exists)
    if tls.api_client_ca is not None and not exists(tls.api_client_ca):
        problems.append(Problem("tls.api_client_ca", f"{tls.api_client_ca} does not exist"))
    url = settings.mqtt.url
    if not url:
        problems.append(
            Problem("mqtt.url", "the embedded broker has no authentication; set an mqtts:// URL")
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
            Problem("tls.command_cert", "must differ from tls.mqtt_cert (one identity per client)")
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
    return problems

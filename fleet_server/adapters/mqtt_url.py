"""``mqtt://host:port`` parsing shared by the MQTT adapters."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``mqtt://``, ``tcp://`` or ``mqtts://`` URL; the port defaults
    to 1883 (8883 for ``mqtts://``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r} is not an mqtt://host:port URL")
    return parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883)


def is_tls_url(url: str | None) -> bool:
    """True for an ``mqtts://`` URL (TLS to the broker)."""
    return bool(url) and urlsplit(url or "").scheme == "mqtts"


@dataclass(frozen=True)
class ClientTls:
    """Mutual TLS to the broker: the CA chain to verify it, and our certificate and key."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def apply(self, client: Any) -> None:
        """Configure a paho client: verify the broker against ``ca`` (hostname included,
        TLS 1.2 or later) and present our certificate when one is set."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        client.tls_set_context(context)

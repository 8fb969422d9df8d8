"""``mqtt://host:port`` parsing shared by the MQTT adapters."""

from __future__ import annotations

from urllib.parse import urlsplit


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``mqtt://`` (or ``tcp://``) URL; port defaults to 1883."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError(f"{url!r} is not an mqtt://host:port URL")
    return parts.hostname, parts.port or 1883

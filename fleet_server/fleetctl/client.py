"""HTTP client of ``fleetctl``: configuration, authentication and error translation."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CONFIG_PATH = Path("~/.config/edgefleet/fleetctl.toml")


class CtlError(Exception):
    """A failure to report to the user (no traceback)."""


@dataclass(frozen=True)
class CtlConfig:
    """Where the API is and which token to use."""

    url: str
    token: str | None


def load_config(url: str | None, token: str | None, path: Path | None = None) -> CtlConfig:
    """Options win over ``FLEET_URL``/``FLEET_TOKEN``, which win over the config file
    (``~/.config/edgefleet/fleetctl.toml`` with ``url`` and ``token`` keys)."""
    data: dict[str, Any] = {}
    file = (path or CONFIG_PATH).expanduser()
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise CtlError(f"cannot read {file}: {exc}") from None
        unknown = set(data) - {"url", "token"}
        if unknown:
            raise CtlError(
                f"{file}: unknown key(s) {', '.join(sorted(unknown))}; known: url, token"
            )
    resolved_url = url or os.environ.get("FLEET_URL") or data.get("url") or "http://127.0.0.1:8080"
    resolved_token = token or os.environ.get("FLEET_TOKEN") or data.get("token")
    if not isinstance(resolved_url, str) or not resolved_url.startswith(("http://", "https://")):
        raise CtlError(f"the API URL must start with http:// or https:// (got {resolved_url!r})")
    return CtlConfig(resolved_url.rstrip("/"), resolved_token)


class ApiClient:
    """Thin wrapper over httpx that turns error bodies into :class:`CtlError`."""

    def __init__(self, config: CtlConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"User-Agent": "fleetctl"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self.config = config
        self.http = httpx.Client(
            base_url=config.url, headers=headers, timeout=30.0, transport=transport
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API; return the JSON body (or bytes for binary answers)."""
        if not self.config.token:
            raise CtlError(
                'no API token: pass --token, set FLEET_TOKEN, or put token = "efk_..." in '
                f"{CONFIG_PATH}"
            )
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CtlError(f"cannot reach the fleet API at {self.config.url}: {exc}") from None
        if response.status_code >= 400:
            raise CtlError(_describe_error(response))
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def paginate(self, path: str, params: dict[str, Any], limit: int | None) -> list[Any]:
        """Follow ``next_cursor`` until ``limit`` items (or all when None)."""
        items: list[Any] = []
        query = {k: v for k, v in params.items() if v is not None and v != []}
        query["limit"] = min(limit or 1000, 1000)
        while True:
            body = self.request("GET", path, params=query)
            items += body["items"]
            if body.get("next_cursor") is None or (limit is not None and len(items) >= limit):
                return items[:limit] if limit is not None else items
            query["cursor"] = body["next_cursor"]


def _describe_error(response: httpx.Response) -> str:
    try:
        err = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"
    text = f"{err.get('code')}: {err.get('message')}"
    details = err.get("details")
    if isinstance(details, list) and details:
        lines = []
        for d in details[:50]:
            if isinstance(d, dict) and "line" in d:
                col = f" [{d['column']}]" if d.get("column") else ""
                lines.append(f"  line {d['line']}{col}: {d['message']}")
            elif isinstance(d, dict):
                where = d.get("field") or ".".join(d.get("loc", []))
                lines.append(f"  {where}: {d.get('message')}")
        if len(details) > 50:
            lines.append(f"  ... and {len(details) - 50} more")
        text += "\n" + "\n".join(lines)
    return text

"""The few fleet-server API calls the simulator makes (stdlib HTTP, bearer token).

* registration: import the simulated fleet's factory CSV (``POST /api/v1/devices/import``),
  skipping devices the registry already has (``GET /api/v1/devices?device_id_prefix=``);
* diagnosis: a device's recent telemetry (``GET /api/v1/devices/{id}/telemetry``) and its
  alarm history (``GET /api/v1/devices/{id}/alarms``), paged with ``next_cursor``.

Every failure is a :class:`ServerError` with a sentence (status, error code, message from
the server's error body), never a traceback for the user.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from simulator.scenario_model import DeviceSpec

TIMEOUT_S = 30.0
SERVER_CSV_COLUMNS = (
    "device_id",
    "serial",
    "model",
    "hw_revision",
    "batch",
    "production_date",
    "region",
    "channel",
    "tags",
)


class ServerError(RuntimeError):
    """A server call failed; the message says which call and why."""


def server_csv(specs: Iterable[DeviceSpec]) -> str:
    """The fleet as the server registry's CSV (its column names; time zone as a tag)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SERVER_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for spec in specs:
        writer.writerow(
            {
                "device_id": spec.device_id,
                "serial": spec.serial,
                "model": spec.model,
                "hw_revision": spec.hardware_revision,
                "batch": spec.batch,
                "production_date": spec.production_date.isoformat(),
                "region": spec.region,
                "channel": spec.channel,
                "tags": f"simulated;tz:{spec.timezone}",
            }
        )
    return buf.getvalue()


class Registrar(Protocol):
    """Makes the simulated devices known to the fleet server before they connect."""

    def register(self, specs: list[DeviceSpec]) -> int:
        """Register the devices not yet known; returns how many were added."""
        ...


class ServerApi:
    """A small client of the fleet server's REST API."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = TIMEOUT_S) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ServerError(f"server URL must start with http:// or https://, got {base_url!r}")
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def healthy(self) -> bool:
        """Whether the server answers ``/healthz`` (False while it starts or once it is gone)."""
        try:
            self._request("GET", "/healthz", None)
            return True
        except ServerError:
            return False

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> Any:
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(
                {k: v for k, v in query.items() if v is not None}, doseq=True
            )
        request = urllib.request.Request(url, data=body, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ServerError(f"{method} {path}: {_error_text(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"{method} {path}: cannot reach {self.base}: {reason}") from None
        except json.JSONDecodeError:
            raise ServerError(f"{method} {path}: the server did not answer with JSON") from None

    def _pages(
        self, path: str, query: dict[str, Any], limit: int, max_items: int
    ) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        seen = 0
        while seen < max_items:
            body = self._request("GET", path, {**query, "limit": limit, "cursor": cursor})
            items = body.get("items", []) if isinstance(body, dict) else []
            for item in items:
                yield item
                seen += 1
                if seen >= max_items:
                    return
            cursor = body.get("next_cursor") if isinstance(body, dict) else None
            if not cursor or not items:
                return

    # --- registry ------------------------------------------------------------------------

    def device_ids(self, prefix: str) -> set[str]:
        """Ids of registered devices starting with ``prefix``."""
        return {
            str(d["device_id"])
            for d in self._pages("/api/v1/devices", {"device_id_prefix": prefix}, 1000, 10_000_000)
        }

    def import_devices(self, csv_text: str) -> int:
        """Import a registry CSV (all rows or none); returns the number imported."""
        body = self._request(
            "POST", "/api/v1/devices/import", body=csv_text.encode(), content_type="text/csv"
        )
        return int(body.get("imported", 0)) if isinstance(body, dict) else 0

    def device(self, device_id: str) -> dict[str, Any]:
        """The registry's record of one device."""
        return self._request("GET", f"/api/v1/devices/{urllib.parse.quote(device_id)}")

    # --- history -------------------------------------------------------------------------

    def telemetry(
        self, device_id: str, since: float | None = None, max_samples: int = 100_000
    ) -> list[dict[str, Any]]:
        """Raw samples (newest first as the API returns them) since unix time ``since``."""
        query: dict[str, Any] = {}
        if since is not None:
            query["since"] = dt.datetime.fromtimestamp(since, tz=dt.UTC).isoformat()
        path = f"/api/v1/devices/{urllib.parse.quote(device_id)}/telemetry"
        return list(self._pages(path, query, 1000, max_samples))

    def alarms(self, device_id: str, max_items: int = 1000) -> list[dict[str, Any]]:
        """The device's alarm history, newest first."""
        path = f"/api/v1/devices/{urllib.parse.quote(device_id)}/alarms"
        return list(self._pages(path, {}, 200, max_items))


class ServerRegistrar:
    """Registers simulated devices by importing the factory CSV through the API."""

    def __init__(self, api: ServerApi) -> None:
        self.api = api

    def register(self, specs: list[DeviceSpec]) -> int:
        """Import the devices whose ids the registry does not have yet."""
        if not specs:
            return 0
        prefix = _common_prefix([s.device_id for s in specs])
        known = self.api.device_ids(prefix)
        missing = [s for s in specs if s.device_id not in known]
        if not missing:
            return 0
        return self.api.import_devices(server_csv(missing))


def _common_prefix(ids: list[str]) -> str:
    first, last = min(ids), max(ids)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except (json.JSONDecodeError, OSError):
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = error.get("code", ""), error.get("message", "")
        details = error.get("details") or []
        if isinstance(details, dict):
            details = [f"{k}: {v}" for k, v in details.items()]
        elif not isinstance(details, list):
            details = [details]
        extra = "; ".join(
            f"line {d.get('line')}: {d.get('message')}" if isinstance(d, dict) else str(d)
            for d in details[:5]
        )
        return f"HTTP {exc.code} {code}: {message}" + (f" ({extra})" if extra else "")
    if isinstance(body, dict) and "detail" in body:
        return f"HTTP {exc.code}: {body['detail']}"
    return f"HTTP {exc.code} {exc.reason}"


__all__ = [
    "SERVER_CSV_COLUMNS",
    "Registrar",
    "ServerApi",
    "ServerError",
    "ServerRegistrar",
    "server_csv",
]

"""HTTP client of ``fleetctl``: configuration, authentication and error translation."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx is imported where a request is made: `--help` stays fast.
    import httpx

CONFIG_PATH = Path("~/.config/edgefleet/fleetctl.toml")


EXIT_LOCAL = 1
"""A problem found before asking the API (an option, a file, the configuration)."""
EXIT_INVALID = 3
"""The API refused the request's content (400, 413, 422: invalid input or a security
refusal)."""
EXIT_NOT_FOUND = 4
"""What the command names does not exist, or no longer (404, 410)."""
EXIT_CONFLICT = 5
"""Valid, but not in the current state (409)."""
EXIT_FORBIDDEN = 6
"""No token, an unknown token, or a role without the right (401, 403)."""
EXIT_UNAVAILABLE = 7
"""The API cannot be reached, a dependency is down (503) or this address is blocked
after failed tokens (429); retry later."""
EXIT_SERVER = 8
"""The server failed (500 or another unexpected status)."""

_EXIT_BY_STATUS = {
    400: EXIT_INVALID,
    401: EXIT_FORBIDDEN,
    403: EXIT_FORBIDDEN,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    410: EXIT_NOT_FOUND,
    413: EXIT_INVALID,
    422: EXIT_INVALID,
    429: EXIT_UNAVAILABLE,
    502: EXIT_UNAVAILABLE,
    503: EXIT_UNAVAILABLE,
    504: EXIT_UNAVAILABLE,
}


class CtlError(Exception):
    """A failure to report to the user (no traceback).

    ``code`` is the API's stable error code (``not_found``, ``invalid_csv``...) when the
    API refused; ``status`` its HTTP status; ``exit_code`` the process exit status for
    that kind of refusal (see the ``EXIT_*`` constants; 1 for a local problem).
    """

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    @property
    def exit_code(self) -> int:
        """The exit status ``fleetctl`` ends with for this error."""
        if self.status is None:
            return EXIT_UNAVAILABLE if self.code == "unreachable" else EXIT_LOCAL
        return _EXIT_BY_STATUS.get(self.status, EXIT_SERVER)

    def describe(self) -> str:
        """The line printed for the user: ``error [code]: message`` (``error: message``
        for a local problem)."""
        return f"error [{self.code}]: {self.message}" if self.code else f"error: {self.message}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> CtlError:
        """The error an API answer carries (its ``code`` and message, with per-line or
        per-field details), or ``http_<status>`` when the body is not the API's."""
        try:
            err = response.json()["error"]
            code, message = str(err["code"]), str(err.get("message", ""))
        except (ValueError, KeyError, TypeError):
            text = response.text[:300]
            return cls(text, code=f"http_{response.status_code}", status=response.status_code)
        return cls(
            message + _describe_details(err.get("details")),
            code=code,
            status=response.status_code,
        )


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
        import httpx

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
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CtlError(
                f"cannot reach the fleet API at {self.config.url}: {exc}", code="unreachable"
            ) from None
        if response.status_code >= 400:
            raise CtlError.from_response(response)
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


def _describe_details(details: Any) -> str:
    """Per-line (CSV) or per-field details as indented lines after the message."""
    if not isinstance(details, list) or not details:
        return ""
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
    return "\n" + "\n".join(lines)

"""HTTP client of ``fleetctl``: configuration, authentication and error translation.

It speaks HTTP through the standard library's ``http.client``: one request at a time is
all a command line needs, and a third-party client (with its own imports) would cost more
start-up time than the request itself (see "Start-up" in the README).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

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
    def from_response(cls, response: HttpAnswer) -> CtlError:
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
        import tomllib  # only with a config file: keeps start-up short without one

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


class HttpAnswer(Protocol):
    """What :meth:`CtlError.from_response` reads of an HTTP answer."""

    status_code: int

    @property
    def text(self) -> str:
        """The body as text."""
        ...

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` when it is not)."""
        ...


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, headers (lower-case names) and body."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.content)


def _query(params: dict[str, Any] | None) -> str:
    """``params`` as a query string: None left out, lists repeated, booleans as
    ``true``/``false``."""
    pairs: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is None:
                continue
            pairs.append((key, str(item).lower() if isinstance(item, bool) else str(item)))
    return urlencode(pairs)


class ApiClient:
    """The fleet API over HTTP(S); error bodies become :class:`CtlError`."""

    timeout_s = 30.0

    def __init__(self, config: CtlConfig) -> None:
        self.config = config
        self.headers = {"User-Agent": "fleetctl", "Accept": "application/json"}
        if config.token:
            self.headers["Authorization"] = f"Bearer {config.token}"
        self._url = urlsplit(config.url)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request on a new connection (``content``: bytes or a binary file)."""
        import http.client

        target = self._url.path.rstrip("/") + path
        query = _query(params)
        if query:
            target += "?" + query
        sent = {**self.headers, **(headers or {})}
        body = content
        if json is not None:
            body = _json_bytes(json)
            sent["Content-Type"] = "application/json"
        if hasattr(body, "fileno"):
            sent["Content-Length"] = str(os.fstat(body.fileno()).st_size - body.tell())
        connection: http.client.HTTPConnection
        if self._url.scheme == "https":
            import ssl

            connection = http.client.HTTPSConnection(
                self._url.netloc, timeout=self.timeout_s, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(self._url.netloc, timeout=self.timeout_s)
        try:
            connection.request(method, target, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
            found = {k.lower(): v for k, v in response.getheaders()}
            return Answer(response.status, found, data)
        finally:
            connection.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API; return the JSON body (or bytes for binary answers).
        ``kwargs``: ``params``, ``json``, ``content``, ``headers``."""
        if not self.config.token:
            raise CtlError(
                'no API token: pass --token, set FLEET_TOKEN, or put token = "efk_..." in '
                f"{CONFIG_PATH}"
            )
        from http.client import HTTPException

        try:
            response = self._send(method, path, **kwargs)
        except (OSError, HTTPException) as exc:
            raise CtlError(
                f"cannot reach the fleet API at {self.config.url}: {exc}", code="unreachable"
            ) from None
        if response.status_code >= 400:
            raise CtlError.from_response(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def page(self, path: str, params: dict[str, Any], limit: int | None) -> dict[str, Any]:
        """The API's list envelope ``{"items", "next_cursor", "total"}`` over as many
        pages as needed for ``limit`` items (all when None): ``items`` collected,
        ``total`` as the API counted it, ``next_cursor`` where a further call would
        continue (null once everything was read)."""
        items: list[Any] = []
        query = {k: v for k, v in params.items() if v is not None and v != []}
        query["limit"] = min(limit or 1000, 1000)
        while True:
            body = self.request("GET", path, params=query)
            items += body["items"]
            cursor = body.get("next_cursor")
            if cursor is None or (limit is not None and len(items) >= limit):
                envelope = {**body, "items": items[:limit] if limit is not None else items}
                envelope["next_cursor"] = cursor
                return envelope
            query["cursor"] = cursor

    def paginate(self, path: str, params: dict[str, Any], limit: int | None) -> list[Any]:
        """The items of :meth:`page` (for commands that use the rows, not the envelope)."""
        return list(self.page(path, params, limit)["items"])


def _json_bytes(value: Any) -> bytes:
    """A JSON request body."""
    return json.dumps(value).encode()


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

"""The server's one error family.

Services raise these; the API maps them to HTTP in one place
(:func:`fleet_server.api.errors.install_error_handlers`), ``fleetctl`` prints the same
``code``, and the console shows the same message. A subclass says *what kind* of refusal
it is (and therefore the HTTP status); ``code`` says *which* refusal, a stable snake_case
string clients may switch on; ``details`` is optional JSON for the specifics.

| kind | class | HTTP | retry? |
|---|---|---|---|
| invalid input | :class:`InvalidInputError` | 422 | no: fix the request |
| too large | :class:`TooLargeError` | 413 | no: send less |
| not found | :class:`NotFoundError` | 404 | no |
| gone (a one-time link used or expired) | :class:`GoneError` | 410 | no |
| conflict with the state | :class:`ConflictError` | 409 | maybe, once the state changed |
| not allowed for this caller | :class:`ForbiddenError` | 403 | no |
| refused for security (signature) | :class:`SecurityRefusalError` | 422 | never |
| transient (broker or database down) | :class:`TransientError` | 503 | yes, with backoff |
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ErrorKind(StrEnum):
    """The kinds of refusal; each maps to one HTTP status."""

    INVALID = "invalid"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    GONE = "gone"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"
    SECURITY = "security"
    TRANSIENT = "transient"


HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 422,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.GONE: 410,
    ErrorKind.CONFLICT: 409,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.SECURITY: 422,
    ErrorKind.TRANSIENT: 503,
}
"""The HTTP status answered for each kind (the only such table)."""


class FleetError(Exception):
    """A request the server refuses, with a stable ``code`` and a sentence for people.

    Raise a subclass; the base exists to be caught. ``details`` is JSON-friendly data a
    client may use (the offending field, the current state, ...).
    """

    kind: ClassVar[ErrorKind] = ErrorKind.INVALID

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        """The HTTP status this error is answered with."""
        return HTTP_STATUS[self.kind]

    def as_dict(self) -> dict[str, Any]:
        """The standard error body's inner object."""
        return {"code": self.code, "message": self.message, "details": self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class InvalidInputError(FleetError):
    """The request itself is wrong (a field, a file, a value out of range)."""

    kind = ErrorKind.INVALID


class TooLargeError(InvalidInputError):
    """The request is bigger than the route accepts."""

    kind = ErrorKind.TOO_LARGE


class NotFoundError(FleetError):
    """What the request names does not exist."""

    kind = ErrorKind.NOT_FOUND


class GoneError(FleetError):
    """What the request names existed but is no longer usable (a one-time token spent)."""

    kind = ErrorKind.GONE


class ConflictError(FleetError):
    """The request is valid but not in the current state (illegal transition, busy, ...)."""

    kind = ErrorKind.CONFLICT


class ForbiddenError(FleetError):
    """The caller may not do this (role, channel rule, ownership)."""

    kind = ErrorKind.FORBIDDEN


class SecurityRefusalError(FleetError):
    """Refused for security: never retried silently; ``details`` may name the attack kind."""

    kind = ErrorKind.SECURITY


class TransientError(FleetError):
    """A dependency is unavailable (broker, database, CA); retry with backoff."""

    kind = ErrorKind.TRANSIENT


BY_KIND: dict[ErrorKind, type[FleetError]] = {
    ErrorKind.INVALID: InvalidInputError,
    ErrorKind.TOO_LARGE: TooLargeError,
    ErrorKind.NOT_FOUND: NotFoundError,
    ErrorKind.GONE: GoneError,
    ErrorKind.CONFLICT: ConflictError,
    ErrorKind.FORBIDDEN: ForbiddenError,
    ErrorKind.SECURITY: SecurityRefusalError,
    ErrorKind.TRANSIENT: TransientError,
}


def error_for(kind: ErrorKind | str, code: str, message: str, details: Any = None) -> FleetError:
    """An error of ``kind`` (for code that decides the kind from data, e.g. a code table)."""
    return BY_KIND[ErrorKind(kind)](code, message, details)

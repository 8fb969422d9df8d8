"""fleetctl reports the API's error code and exits with a status per kind of refusal."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from fleet_server.errors import HTTP_STATUS, ErrorKind, error_for
from fleet_server.fleetctl.client import (
    EXIT_CONFLICT,
    EXIT_FORBIDDEN,
    EXIT_INVALID,
    EXIT_LOCAL,
    EXIT_NOT_FOUND,
    EXIT_SERVER,
    EXIT_UNAVAILABLE,
    ApiClient,
    CtlConfig,
    CtlError,
)

EXITS = {
    ErrorKind.INVALID: EXIT_INVALID,
    ErrorKind.TOO_LARGE: EXIT_INVALID,
    ErrorKind.SECURITY: EXIT_INVALID,
    ErrorKind.NOT_FOUND: EXIT_NOT_FOUND,
    ErrorKind.GONE: EXIT_NOT_FOUND,
    ErrorKind.CONFLICT: EXIT_CONFLICT,
    ErrorKind.FORBIDDEN: EXIT_FORBIDDEN,
    ErrorKind.TRANSIENT: EXIT_UNAVAILABLE,
}


def _answer(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_server_error_kind_has_its_exit_status(kind: ErrorKind) -> None:
    refusal = error_for(kind, f"some_{kind.value}", "refused")
    err = CtlError.from_response(_answer(refusal.status, {"error": refusal.as_dict()}))
    assert (err.code, err.status) == (f"some_{kind.value}", HTTP_STATUS[kind])
    assert err.exit_code == EXITS[kind]
    assert err.describe() == f"error [some_{kind.value}]: refused"


def test_exit_statuses_are_distinct_per_kind() -> None:
    kinds = {
        EXIT_LOCAL,
        EXIT_INVALID,
        EXIT_NOT_FOUND,
        EXIT_CONFLICT,
        EXIT_FORBIDDEN,
        EXIT_UNAVAILABLE,
        EXIT_SERVER,
    }
    assert len(kinds) == 7
    assert 0 not in kinds
    assert 2 not in kinds  # the usage error of the CLI library


def test_unauthenticated_and_server_failures() -> None:
    unauthorized = {"error": {"code": "unauthorized", "message": "unknown or revoked token"}}
    assert CtlError.from_response(_answer(401, unauthorized)).exit_code == EXIT_FORBIDDEN
    internal = {"error": {"code": "internal_error", "message": "see the server log"}}
    assert CtlError.from_response(_answer(500, internal)).exit_code == EXIT_SERVER
    proxy = CtlError.from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert (proxy.code, proxy.exit_code) == ("http_502", EXIT_UNAVAILABLE)
    assert "bad gateway" in proxy.describe()


def test_details_are_listed_under_the_message() -> None:
    body = {
        "error": {
            "code": "invalid_csv",
            "message": "2 error(s) in the CSV; nothing was imported",
            "details": [
                {"line": 2, "column": "production_date", "message": "not a date"},
                {"field": "serial", "message": "taken"},
            ],
        }
    }
    err = CtlError.from_response(_answer(422, body))
    assert err.describe().splitlines() == [
        "error [invalid_csv]: 2 error(s) in the CSV; nothing was imported",
        "  line 2 [production_date]: not a date",
        "  serial: taken",
    ]


def test_a_local_problem_has_no_code() -> None:
    err = CtlError("cannot read factory.csv: no such file")
    assert (err.code, err.exit_code) == (None, EXIT_LOCAL)
    assert err.describe() == "error: cannot read factory.csv: no such file"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_api_is_unavailable() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(CtlError) as info:
        ApiClient(CtlConfig(url, "efk_test")).request("GET", "/api/v1/whoami")
    assert (info.value.code, info.value.exit_code) == ("unreachable", EXIT_UNAVAILABLE)


def test_the_command_prints_the_code_and_exits_with_its_status() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    script = "from fleet_server.fleetctl.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", script, "--url", url, "--token", "efk_test", "whoami"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_UNAVAILABLE
    assert done.stderr.startswith("error [unreachable]: cannot reach the fleet API")
    assert "Traceback" not in done.stderr

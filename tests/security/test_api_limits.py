"""Issue 13, finding 3: request bodies are capped by route before they are read, and a
request without a token is refused before its body is read, on a real ``fleet-server api``.

Four parallel POSTs declaring 300 MB used to take the server from 407 to 2,882 MiB. Here
each is refused at once (401 without a token, 413 with one), a chunked body without a
length is cut off at the cap, and the server's peak RSS (VmHWM) grows less than 64 MiB.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.api_process import ApiProcess, api_process

DECLARED = 300 * 1024 * 1024
CHUNK = 64 * 1024
PARALLEL = 4
RSS_GROWTH_KIB = 64 * 1024
DEVICES = "/api/v1/devices"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    with api_process(tmp_path_factory.mktemp("api")) as srv:
        yield srv


def _head(path: str, token: str | None, length: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", length]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket) -> int:
    """The status code of the response on ``sock`` (reads the status line only)."""
    data = b""
    while b"\r\n" not in data:
        part = sock.recv(4096)
        if not part:
            break
        data += part
    return int(data.split(b" ", 2)[1])


def declared_post(port: int, token: str | None) -> tuple[int, float]:
    """POST declaring 300 MB and sending none of it: (status, seconds to answer)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_head(DEVICES, token, f"Content-Length: {DECLARED}"))
        return _status(sock), time.monotonic() - start


def chunked_post(port: int, token: str) -> tuple[int, int]:
    """POST a chunked body of up to 300 MB, stopping as soon as the server answers:
    (status, bytes sent)."""
    chunk = b"%x\r\n" % CHUNK + b" " * CHUNK + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_head(DEVICES, token, "Transfer-Encoding: chunked"))
        while sent < DECLARED:
            readable, _, _ = select.select([sock], [], [], 0.002)
            if readable:
                break
            sock.sendall(chunk)
            sent += CHUNK
        return _status(sock), sent


def _parallel(call: Callable[[], tuple[int, float | int]]) -> list[tuple[int, float | int]]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda _i: call(), range(PARALLEL)))


def test_huge_bodies_are_refused_before_they_are_read(server: ApiProcess) -> None:
    before = server.peak_rss_kib()
    anonymous = _parallel(lambda: declared_post(server.port, None))
    assert [status for status, _ in anonymous] == [401] * PARALLEL
    assert max(seconds for _, seconds in anonymous) < 5  # at once; unfixed, never
    declared = _parallel(lambda: declared_post(server.port, server.admin))
    assert [status for status, _ in declared] == [413] * PARALLEL
    chunked = _parallel(lambda: chunked_post(server.port, server.admin))
    assert [status for status, _ in chunked] == [413] * PARALLEL
    # Cut off near the 1 MiB cap, not after the whole 300 MB.
    assert max(sent for _, sent in chunked) < 64 * 1024 * 1024
    growth = server.peak_rss_kib() - before
    assert growth < RSS_GROWTH_KIB, f"peak RSS grew {growth} KiB"


def test_refusals_use_the_standard_error_body(server: ApiProcess) -> None:
    with server.client() as client:
        headers = {"Content-Type": "application/json"}
        big = b" " * (1024 * 1024 + 1)
        r = client.post(DEVICES, content=big, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        r = client.post(
            DEVICES, content=big, headers={**headers, "Authorization": f"Bearer {server.admin}"}
        )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "too_large"
        # A public route has a cap too (the diagnostics upload, 10 MiB by default), and
        # an unknown one-time token is refused before the body is read.
        r = client.post("/api/v1/diagnostics/upload/nope", content=b"x" * 1024)
        assert r.status_code == 404


def test_a_normal_body_still_works(server: ApiProcess) -> None:
    body = json.dumps({"device_id": "pi-big", "serial": "SN-big"}) + " " * 500_000
    with server.client(headers={"Authorization": f"Bearer {server.admin}"}) as client:
        r = client.post(DEVICES, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        assert client.get(f"{DEVICES}/pi-big").json()["serial"] == "SN-big"

"""The agent's fetcher never reuses a keep-alive connection whose response body it did
not read: the next request would read the old body as its status line."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from tuf.api import exceptions

from agent.adapters.tuf_client import ResumableFetcher


def _serve(listener: socket.socket, log: list[str]) -> None:
    """Answer the first request with 404 headers and hold back the body until the client
    either sends its next request on the same connection (then the body and a 200 follow,
    as a slow server would) or closes the connection; later connections get a 200."""
    conn, _ = listener.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n")
    conn.settimeout(10)
    try:
        again = conn.recv(65536)
    except OSError:
        again = b""
    if again:
        log.append("reused")
        conn.sendall(b"not foundHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn.close()
        return
    conn.close()
    log.append("closed")
    fresh, _ = listener.accept()
    fresh.recv(65536)
    fresh.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    fresh.close()


def test_a_404_body_left_unread_does_not_poison_the_next_request(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    log: list[str] = []
    server = threading.Thread(target=_serve, args=(listener, log), daemon=True)
    server.start()
    fetcher = ResumableFetcher(tmp_path / "partial", f"{base}/targets/", timeout_s=10)
    try:
        with pytest.raises(exceptions.DownloadHTTPError):
            fetcher.fetch(f"{base}/metadata/2.root.json")
        assert b"".join(fetcher.fetch(f"{base}/metadata/timestamp.json")) == b"ok"
    finally:
        server.join(timeout=15)
        listener.close()
    assert log == ["closed"]

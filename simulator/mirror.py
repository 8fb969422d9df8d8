"""A loopback mirror for a TUF repository directory that can cut a download mid-way.

``fleet-sim bench`` serves its temporary repository with it: plain static files with HTTP
``Range`` support (what the agent's resumable fetcher uses), and a switch that drops the
connection after ``n`` bytes of the next target download (a network cut mid-download).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class MirrorState:
    """What the mirror serves, the pending cut, and what it saw (path, Range header)."""

    root: Path
    cut_target_after: int | None = None
    cuts: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cut_next_download(self, after_bytes: int) -> None:
        """Drop the connection after ``after_bytes`` bytes of the next target request."""
        with self.lock:
            self.cut_target_after = max(0, int(after_bytes))

    def take_cut(self, path: str) -> int | None:
        """The cut to apply to this request (once), if any."""
        with self.lock:
            if "/targets/" not in path or self.cut_target_after is None:
                return None
            cut, self.cut_target_after = self.cut_target_after, None
            self.cuts += 1
            return cut


def _handler(state: MirrorState) -> type[BaseHTTPRequestHandler]:
    root = state.root.resolve()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """No access log on the console."""

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.path, rng))
            path = (root / self.path.split("?", 1)[0].lstrip("/")).resolve()
            if root not in path.parents or not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            start = 0
            if rng and rng.startswith("bytes="):
                try:
                    start = int(rng[6:].split("-", 1)[0])
                except ValueError:
                    self.send_error(400)
                    return
                if start >= size:
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            with open(path, "rb") as handle:
                handle.seek(start)
                data = handle.read()
            cut = state.take_cut(self.path)
            if cut is not None:
                self.wfile.write(data[:cut])
                self.wfile.flush()
                self.connection.shutdown(2)
                self.close_connection = True
                return
            self.wfile.write(data)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up on a cut connection is expected, not an error."""


@contextmanager
def serve_mirror(root: Path) -> Iterator[tuple[str, MirrorState]]:
    """Serve ``root`` on a free loopback port; yields ``(base_url, state)``."""
    state = MirrorState(Path(root))
    server = _Server(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, name="bench-mirror", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

"""A static mirror with HTTP Range support that can cut a download mid-way.

Used to prove that the agent resumes a large download after a network cut instead of
starting over: the mirror records every request's ``Range`` header.
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
class MirrorControl:
    """Knobs and observations shared with the request handler."""

    root: Path
    cut_next_target_after: int | None = None
    requests: list[tuple[str, str | None]] = field(default_factory=list)


def _handler(control: MirrorControl) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            control.requests.append((self.path, rng))
            path = (control.root / self.path.lstrip("/")).resolve()
            if control.root.resolve() not in path.parents or not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            start = 0
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-", 1)[0])
                if start >= size:
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            cut = None
            if "/targets/" in self.path and control.cut_next_target_after is not None:
                cut, control.cut_next_target_after = control.cut_next_target_after, None
            with open(path, "rb") as handle:
                handle.seek(start)
                data = handle.read()
            if cut is not None:
                self.wfile.write(data[:cut])
                self.wfile.flush()
                self.connection.shutdown(2)
                self.close_connection = True
                return
            self.wfile.write(data)

    return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up on a cut connection are expected here, not errors."""


@contextmanager
def flaky_mirror(root: Path) -> Iterator[tuple[str, MirrorControl]]:
    """Serve ``root``; yields ``(base_url, control)``."""
    control = MirrorControl(root)
    server = _Server(("127.0.0.1", 0), _handler(control))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", control
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

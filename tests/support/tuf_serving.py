"""Serve a TUF repository directory on loopback, and point a stock python-tuf client at it.

* ``static_mirror(repo_dir)``: the stdlib ``http.server`` serving the directory as-is
  (the "any static mirror" case); base URL has ``/metadata/`` and ``/targets/``.
* ``asgi_server(app)``: a real uvicorn on a free loopback port running a FastAPI app.
* ``stock_updater(...)``: a plain ``tuf.ngclient.Updater`` (not Edgefleet's agent code).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tuf.ngclient import Updater

from tests.conftest import free_port, wait_for


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""


@contextmanager
def static_mirror(repo_dir: Path) -> Iterator[str]:
    """Serve ``repo_dir`` with the stdlib static server; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(repo_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def asgi_server(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def stock_updater(
    client_dir: Path, metadata_url: str, targets_url: str, root: bytes | None
) -> Updater:
    """A stock ngclient ``Updater`` keeping its trusted metadata in ``client_dir/metadata``.

    ``root`` is the initial trusted root for a new client; ``None`` reuses what the client
    already trusts (a device on its next refresh).
    """
    (client_dir / "metadata").mkdir(parents=True, exist_ok=True)
    (client_dir / "targets").mkdir(parents=True, exist_ok=True)
    return Updater(
        str(client_dir / "metadata"),
        metadata_url,
        str(client_dir / "targets"),
        targets_url,
        bootstrap=root,
    )


def trusted_version(client_dir: Path, role: str) -> int:
    """Version of ``role`` the client trusts on disk (to prove an attack changed nothing)."""
    from tuf.api.metadata import Metadata

    return int(Metadata.from_file(str(client_dir / "metadata" / f"{role}.json")).signed.version)

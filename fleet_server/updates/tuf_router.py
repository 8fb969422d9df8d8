"""HTTP routes serving the TUF repository: ``/tuf/metadata/{name}`` and ``/tuf/targets/{path}``.

The routes are static file serving with strict names: metadata names must look like
``[N.]<role>.json``; target paths are checked part by part and must resolve inside
``targets/``. Target downloads support HTTP ``Range`` (206 responses), so a device can
resume an interrupted download; TUF still checks length and hashes of the whole file.
Versioned files never change, so they are cacheable forever; ``timestamp.json`` and
``root.json`` are not cached.

The same directory served by any static web server works too (``metadata/`` and
``targets/`` under one base URL): nothing here is needed for TUF's security.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

_METADATA_NAME = re.compile(r"^(?:[1-9][0-9]{0,18}\.)?(?:root|timestamp|snapshot|targets)\.json$")
_PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")
_IMMUTABLE = "public, max-age=31536000, immutable"


def _not_found() -> HTTPException:
    return HTTPException(status_code=404, detail="not found")


def resolve_target_path(targets_dir: Path, path: str) -> Path:
    """The file under ``targets_dir`` that URL path ``path`` names.

    Raises:
        HTTPException: 404 for any unsafe or unknown path (no detail leaks).
    """
    parts = path.split("/")
    if not parts or not all(_PATH_PART.match(part) for part in parts):
        raise _not_found()
    root = targets_dir.resolve()
    candidate = root.joinpath(*parts).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        raise _not_found()
    return candidate


def tuf_router(repo_dir: Path, prefix: str = "/tuf") -> APIRouter:
    """Routes serving the repository at ``repo_dir`` under ``prefix``.

    ``GET {prefix}/metadata/{name}`` and ``GET {prefix}/targets/{path}`` (with ``HEAD``
    and ``Range``). A device's TUF client uses ``{base}{prefix}/metadata/`` and
    ``{base}{prefix}/targets/`` as its metadata and target base URLs.
    """
    repo_dir = Path(repo_dir)
    metadata_dir = repo_dir / "metadata"
    targets_dir = repo_dir / "targets"
    router = APIRouter(prefix=prefix, tags=["updates"])

    meta_doc = {
        "summary": "TUF metadata file",
        "responses": {404: {"description": "no such metadata file"}},
    }

    # Separate GET and HEAD routes (not one api_route) so each gets its own OpenAPI
    # operation id.
    @router.get("/metadata/{name}", **meta_doc)  # type: ignore[arg-type]
    @router.head("/metadata/{name}", **meta_doc)  # type: ignore[arg-type]
    def get_metadata(name: str) -> FileResponse:
        """Serve one TUF metadata file (``root.json``, ``N.root.json``, ``timestamp.json``,
        ``N.snapshot.json``, ``N.targets.json``)."""
        if not _METADATA_NAME.match(name):
            raise _not_found()
        path = metadata_dir / name
        if not path.is_file():
            raise _not_found()
        mutable = name in ("timestamp.json", "root.json")
        return FileResponse(
            path,
            media_type="application/json",
            headers={"Cache-Control": "no-cache" if mutable else _IMMUTABLE},
        )

    target_doc = {
        "summary": "TUF target file (a bundle); supports Range",
        "responses": {404: {"description": "no such target file"}},
    }

    @router.get("/targets/{path:path}", **target_doc)  # type: ignore[arg-type]
    @router.head("/targets/{path:path}", **target_doc)  # type: ignore[arg-type]
    def get_target(path: str) -> FileResponse:
        """Serve one target file (``<sha256>.<bundle name>``), with Range support."""
        found = resolve_target_path(targets_dir, path)
        return FileResponse(
            found,
            media_type="application/octet-stream",
            headers={"Cache-Control": _IMMUTABLE},
        )

    return router

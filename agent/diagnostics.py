"""Diagnostics bundles: recent logs, vitals, fault state, redacted config and versions.

A bundle is a ``.tar.gz`` built in memory and kept under ``max_bytes`` (the oldest log
lines are cut first). It is HTTP POSTed to the command's ``upload_url`` (stdlib urllib),
or written to the state directory when no URL is given.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UPLOAD_TIMEOUT_S = 30.0


class DiagnosticsError(Exception):
    """Building or uploading the bundle failed; the message says why."""


@dataclass(frozen=True, slots=True)
class BundleResult:
    """What the command acknowledgement reports."""

    size: int
    sha256: str
    path: str | None = None
    http_status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """For ``CommandAck.result``."""
        out: dict[str, Any] = {"size": self.size, "sha256": self.sha256}
        if self.path:
            out["path"] = self.path
        if self.http_status is not None:
            out["http_status"] = self.http_status
        return out


def _tar(files: dict[str, bytes], mtime: float) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"diagnostics/{name}")
            info.size = len(data)
            info.mtime = int(mtime)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_bundle(
    *, log_lines: list[str], sections: dict[str, Any], max_bytes: int, now: float | None = None
) -> bytes:
    """The tar.gz bytes: ``logs.txt`` plus one JSON file per section, at most ``max_bytes``."""
    now = time.time() if now is None else now
    base = {
        f"{name}.json": json.dumps(value, indent=2, sort_keys=True, default=str).encode()
        for name, value in sections.items()
    }
    lines = list(log_lines)
    while True:
        files = {**base, "logs.txt": ("\n".join(lines) + "\n").encode() if lines else b""}
        data = _tar(files, now)
        if len(data) <= max_bytes:
            return data
        if not lines:
            raise DiagnosticsError(
                f"bundle is {len(data)} bytes even without logs (limit {max_bytes})"
            )
        lines = lines[len(lines) // 2 :] if len(lines) > 1 else []


def deliver(
    bundle: bytes, *, upload_url: str | None, state_dir: Path, device_id: str
) -> BundleResult:
    """Upload the bundle (or store it locally when there is no URL)."""
    digest = hashlib.sha256(bundle).hexdigest()
    if upload_url is None:
        path = Path(state_dir) / "diagnostics" / f"{device_id}-{int(time.time())}.tar.gz"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_bytes(bundle)
        path.chmod(0o600)
        return BundleResult(len(bundle), digest, path=str(path))
    request = urllib.request.Request(
        upload_url,
        data=bundle,
        method="POST",
        headers={
            "Content-Type": "application/gzip",
            "X-Edgefleet-Device": device_id,
            "X-Content-SHA256": digest,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=UPLOAD_TIMEOUT_S) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raise DiagnosticsError(f"upload refused: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DiagnosticsError(f"upload failed: {reason}") from None
    return BundleResult(len(bundle), digest, http_status=status)

"""The agent's TUF client: python-tuf's ``ngclient.Updater`` plus resumable downloads.

All verification (signatures and thresholds, versions, expiry, snapshot consistency,
length and hashes of the target) is python-tuf's. This module adds what a device needs
around it:

* :class:`ResumableFetcher` keeps a partial download on disk and continues it with an HTTP
  ``Range`` request after a network cut, so a large bundle is not fetched twice; the bytes
  still flow through ngclient, which verifies the whole target as usual;
* :func:`classify` turns python-tuf's exceptions into the attack kinds the agent reports
  (security errors are never retried silently) or a transient network failure;
* :func:`target_info` reads Edgefleet's custom target metadata (version, hardware,
  release counter) for the device-side checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import urllib3
from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from agent.core.update_flow import TargetInfo

CHUNK = 256 * 1024


class ResumableFetcher(FetcherInterface):
    """HTTP(S) fetcher that resumes target downloads from a partial file.

    Only URLs under ``resumable_prefix`` (the targets base URL) are cached; metadata is
    always fetched whole. The partial file is appended to as bytes arrive and is removed
    by :meth:`discard` once the target was verified or rejected.
    """

    def __init__(
        self,
        partial_dir: Path,
        resumable_prefix: str,
        *,
        timeout_s: float = 30.0,
        ca_certs: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.partial_dir = Path(partial_dir)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.resumable_prefix = resumable_prefix
        self.resumed_bytes = 0
        """Bytes served from a partial file in the last resumable fetch (for reports)."""
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            retries=False,
            ca_certs=ca_certs,
            cert_file=cert_file,
            key_file=key_file,
        )

    def partial_path(self, url: str) -> Path:
        """Where the partial download of ``url`` is kept."""
        return self.partial_dir / (hashlib.sha256(url.encode()).hexdigest() + ".part")

    def discard(self, url: str) -> None:
        """Forget the partial download of ``url``."""
        self.partial_path(url).unlink(missing_ok=True)

    def _request(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            response = self._pool.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"cannot fetch {url}: {exc}") from exc
        if response.status >= 400:
            # never hand a connection with an unread body back to the pool: the next
            # request on it would read this body as its status line
            response.close()
            raise exceptions.DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        return response

    def _stream(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        """Yield bytes as they arrive (``read1``), so a cut loses nothing received."""
        expected = response.headers.get("Content-Length")
        received = 0
        complete = False
        try:
            while chunk := response.read1(CHUNK):
                received += len(chunk)
                yield chunk
            complete = True
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise exceptions.DownloadError(
                f"connection lost after {received} bytes: {exc}"
            ) from exc
        finally:
            if complete:
                response.release_conn()
            else:  # stopped early (e.g. endless data): the rest must not reach the pool
                response.close()
        if expected is not None and expected.isdigit() and received < int(expected):
            raise exceptions.DownloadError(
                f"connection closed after {received} of {expected} bytes"
            )

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """Like python-tuf's ``download_file`` (same ``max_length`` limit against endless
        data), but for targets it hands back the partial file itself instead of copying
        every byte into one more temporary file: a large bundle is written once less."""
        if not url.startswith(self.resumable_prefix):
            with super().download_file(url, max_length) as handle:
                yield handle
            return
        received = 0
        chunks = self.fetch(url)
        try:
            for chunk in chunks:
                received += len(chunk)
                if received > max_length:
                    raise exceptions.DownloadLengthMismatchError(
                        f"Downloaded {received} bytes exceeding the maximum allowed length "
                        f"of {max_length}"
                    )
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # stop the transfer now (closes the connection mid-stream)
        with open(self.partial_path(url), "rb") as handle:
            yield handle

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.resumable_prefix):
            return self._stream(self._request(url, {}))
        return self._fetch_resumable(url)

    def _fetch_resumable(self, url: str) -> Iterator[bytes]:
        path = self.partial_path(url)
        have = path.stat().st_size if path.exists() else 0
        self.resumed_bytes = have
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            response = self._request(url, headers)
        except exceptions.DownloadHTTPError as exc:
            if exc.status_code != 416 or not have:
                raise
            # The partial file is not a prefix of what the server has: start over.
            path.unlink(missing_ok=True)
            have = self.resumed_bytes = 0
            response = self._request(url, {})
        skip = have if (have and response.status != 206) else 0
        with open(path, "ab") as partial:
            if have:
                with open(path, "rb") as existing:
                    while block := existing.read(CHUNK):
                        yield block
            for chunk in self._stream(response):
                if skip:
                    drop = min(skip, len(chunk))
                    chunk, skip = chunk[drop:], skip - drop
                    if not chunk:
                        continue
                partial.write(chunk)
                partial.flush()
                yield chunk
            # no fsync: the partial file only saves re-downloading after a cut or a crash;
            # it is discarded once python-tuf has verified the whole target, and a torn
            # tail after a power cut fails that verification instead of being trusted


# --- classification -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateProblem:
    """A failed refresh or download: ``attack`` is set for security refusals."""

    security: bool
    attack: str | None
    detail: str


def classify(exc: BaseException, *, during: str) -> UpdateProblem:
    """Map a python-tuf exception to an attack kind (``during`` is ``"refresh"`` or
    ``"download"``) or to a transient download problem."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, exceptions.DownloadLengthMismatchError):
        return UpdateProblem(True, "endless_data", detail)
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return UpdateProblem(True, "threshold_not_met", detail)
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return UpdateProblem(True, "freeze", detail)
    if isinstance(exc, exceptions.BadVersionNumberError):
        kind = "metadata_rollback" if "must be >=" in str(exc) else "mix_and_match"
        if "root version" in str(exc):
            kind = "metadata_rollback"
        return UpdateProblem(True, kind, detail)
    if isinstance(exc, exceptions.LengthOrHashMismatchError):
        return UpdateProblem(
            True, "tampered_target" if during == "download" else "mix_and_match", detail
        )
    if isinstance(exc, exceptions.RepositoryError):
        return UpdateProblem(True, "invalid_metadata", detail)
    return UpdateProblem(False, None, detail)


def target_info(target: TargetFile) -> TargetInfo:
    """Edgefleet's custom metadata of a target, as the device-side checks need it.

    Raises ``ValueError`` when the (signed) metadata lacks the Edgefleet block: such a
    target was not published by the fleet server and is not installable.
    """
    custom: dict[str, Any] = (target.custom or {}).get("edgefleet") or {}
    try:
        return TargetInfo(
            version=str(custom["version"]),
            hardware_revisions=tuple(str(r) for r in custom["hardware_revisions"]),
            release_counter=int(custom["release_counter"]),
            min_agent_version=str(custom.get("min_agent_version") or "0"),
            model=str(custom["model"]) if custom.get("model") else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"target {target.path} has no valid edgefleet metadata: {exc}") from None


class UpdateClient:
    """One refresh-and-download session against the fleet's TUF repository.

    ``metadata_dir`` holds the trusted root (bootstrapped from the root provisioned with
    the device) and is updated by python-tuf; a new instance is needed per refresh, as
    ngclient refreshes once per Updater. ``reference_time`` overrides the clock python-tuf
    checks expiry against (tests use it to simulate a device whose clock moved on).
    """

    def __init__(
        self,
        metadata_dir: Path,
        metadata_url: str,
        targets_url: str,
        download_dir: Path,
        *,
        bootstrap_root: bytes | None = None,
        fetcher: ResumableFetcher | None = None,
        reference_time: datetime | None = None,
        max_target_bytes: int = 2 * 1024**3,
    ) -> None:
        self.download_dir = Path(download_dir)
        self.download_dir.mkdir(parents=True, exist_ok=True)
        Path(metadata_dir).mkdir(parents=True, exist_ok=True)
        self.targets_url = targets_url.rstrip("/") + "/"
        self.fetcher = fetcher or ResumableFetcher(self.download_dir / "partial", self.targets_url)
        self.max_target_bytes = max_target_bytes
        self._updater = Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=metadata_url,
            target_dir=str(self.download_dir),
            target_base_url=self.targets_url,
            fetcher=self.fetcher,
            config=UpdaterConfig(),
            bootstrap=bootstrap_root,
        )
        if reference_time is not None:
            self._updater._trusted_set.reference_time = reference_time

    def refresh(self) -> None:
        """Fetch and verify top-level metadata (raises python-tuf exceptions)."""
        self._updater.refresh()

    def find(self, target_path: str) -> TargetFile | None:
        """The signed description of ``target_path``, or None when it is not published."""
        return self._updater.get_targetinfo(target_path)

    def download(self, target: TargetFile) -> Path:
        """Download (resuming if interrupted before) and verify ``target``; returns the
        local path. A verification failure discards the partial data."""
        if target.length > self.max_target_bytes:
            raise exceptions.DownloadLengthMismatchError(
                f"target {target.path} declares {target.length} bytes; the device accepts "
                f"at most {self.max_target_bytes}"
            )
        cached = self._updater.find_cached_target(target)
        if cached:
            return Path(cached)
        url = self._target_url(target)
        try:
            path = self._updater.download_target(target)
        except (exceptions.RepositoryError, exceptions.DownloadLengthMismatchError):
            self.fetcher.discard(url)
            raise
        self.fetcher.discard(url)
        return Path(path)

    def _target_url(self, target: TargetFile) -> str:
        name = target.path
        if self._updater._trusted_set.root.consistent_snapshot:
            digest = next(iter(target.hashes.values()))
            dirname, sep, basename = name.rpartition("/")
            name = f"{dirname}{sep}{digest}.{basename}"
        return f"{self.targets_url}{name}"

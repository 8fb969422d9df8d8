"""The device's target fetcher: python-tuf's ``ngclient.Updater`` behind the driver's
:class:`~agent.update_ports.TargetFetcher` protocol.

Each :meth:`TufFetcher.refresh` opens a new :class:`~agent.adapters.tuf_client.UpdateClient`
(ngclient refreshes once per ``Updater``) over the trusted metadata in ``metadata_dir``,
bootstrapped from the root provisioned with the device. python-tuf's exceptions become
:class:`~agent.update_ports.FetchError`: security refusals carry their attack kind and
are never retried, network problems are transient. This module imports python-tuf; the
agent imports it only when an update runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from tuf.api import exceptions
from tuf.api.metadata import Metadata, TargetFile, Targets

from agent.adapters.tuf_client import (
    ResumableFetcher,
    UpdateClient,
    UpdateProblem,
    classify,
    target_info,
)
from agent.update_ports import FetchedTarget, FetchError, TargetListing
from protocol import FailureClass


def fetch_error(problem: UpdateProblem, phase: str) -> FetchError:
    """A classified python-tuf problem as the driver's error (security: not retried)."""
    if problem.security:
        return FetchError(FailureClass.SECURITY, problem.detail, problem.attack)
    return FetchError(FailureClass.DOWNLOAD, problem.detail, transient=True, phase=phase)


class TufFetcher:
    """Targets from the fleet's TUF repository (or any mirror), verified by python-tuf."""

    def __init__(
        self,
        metadata_dir: Path,
        metadata_url: str,
        targets_url: str,
        download_dir: Path,
        *,
        root: Callable[[], bytes],
        reference_time: Callable[[], datetime | None] = lambda: None,
        ca_certs: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.metadata_url = metadata_url
        self.targets_url = targets_url
        self.download_dir = Path(download_dir)
        self.root = root
        self.reference_time = reference_time
        self.tls = (ca_certs, cert_file, key_file)
        self._client: UpdateClient | None = None
        self._found: dict[str, TargetFile] = {}

    def _open(self) -> UpdateClient:
        bootstrap = None if (self.metadata_dir / "root.json").exists() else self.root()
        ca_certs, cert_file, key_file = self.tls  # the fleet CA also serves HTTPS mirrors
        fetcher = ResumableFetcher(
            self.download_dir / "partial",
            self.targets_url,
            ca_certs=ca_certs,
            cert_file=cert_file,
            key_file=key_file,
        )
        return UpdateClient(
            self.metadata_dir,
            self.metadata_url,
            self.targets_url,
            self.download_dir / "targets",
            bootstrap_root=bootstrap,
            fetcher=fetcher,
            reference_time=self.reference_time(),
        )

    def refresh(self) -> None:
        """A new ngclient session, refreshed (timestamp, snapshot, targets)."""
        self._found.clear()
        try:
            self._client = self._open()
            self._client.refresh()
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            raise fetch_error(classify(exc, during="refresh"), "refresh") from None

    def _session(self) -> UpdateClient:
        if self._client is None:
            self.refresh()
        assert self._client is not None
        return self._client

    def target_info(self, name: str) -> FetchedTarget | None:
        """The signed description of ``name`` with Edgefleet's custom metadata."""
        try:
            found = self._session().find(name)
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            raise fetch_error(classify(exc, during="refresh"), "refresh") from None
        if found is None:
            return None
        try:
            info = target_info(found)
        except ValueError as exc:
            raise FetchError(FailureClass.SECURITY, str(exc), "invalid_metadata") from None
        self._found[name] = found
        return FetchedTarget(name, info, found.to_dict())

    def download(self, target: FetchedTarget) -> Path:
        """Download (resuming a cut transfer) and verify ``target``."""
        found = self._found.get(target.name) or TargetFile.from_dict(
            dict(target.described), target.name
        )
        try:
            return self._session().download(found)
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            raise fetch_error(classify(exc, during="download"), "download") from None

    def verify(self, target: FetchedTarget, path: Path) -> None:
        """Check ``path`` against the signed length and hashes kept in ``described``."""
        described = TargetFile.from_dict(dict(target.described), target.name)
        with open(path, "rb") as handle:
            try:
                described.verify_length_and_hashes(handle)
            except exceptions.LengthOrHashMismatchError as exc:
                raise FetchError(
                    FailureClass.SECURITY, f"downloaded bundle changed: {exc}", "tampered_target"
                ) from None

    def listing(self) -> TargetListing:
        """Every target of the trusted targets metadata with valid Edgefleet metadata."""
        self._session()
        signed = Metadata[Targets].from_file(str(self.metadata_dir / "targets.json")).signed
        targets = []
        for name, target in signed.targets.items():
            try:
                targets.append(FetchedTarget(name, target_info(target), {}))
            except ValueError:
                continue
        return TargetListing(signed.version, targets)

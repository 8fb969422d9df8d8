"""Simulated devices fetch targets with the agent's real TUF client (``TufTargets``) from a
signed repository served on loopback, as ``fleet-sim demo`` does from the server's /tuf/."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.update_ports import FetchError
from firmware_bundles.examples import build_examples
from fleet_server.updates.keys import create_root_keys
from fleet_server.updates.tuf_repository import TufRepository, root_bytes
from protocol import FailureClass
from simulator.mirror import serve_mirror
from simulator.update_backends import TufTargets


def test_targets_are_fetched_verified_and_described(tmp_path: Path) -> None:
    bundles = build_examples(tmp_path / "bundles", ("good-1.2.0", "boot-crash"))
    keys = create_root_keys(tmp_path / "root-keys", count=1, threshold=1)
    repo = TufRepository.create(
        tmp_path / "site" / "tuf", tmp_path / "online", list(keys.signers.values()), threshold=1
    )
    names = {k: repo.publish(b.path).name for k, b in bundles.items()}
    with serve_mirror(tmp_path / "site") as (base_url, mirror):
        source = TufTargets(base_url, root_bytes(repo.path), tmp_path / "device")
        crash = source.fetch(names["boot-crash"])
        assert crash.info.version == "1.3.1"
        assert crash.info.hardware_revisions == ("rev-a", "rev-b")
        assert crash.info.release_counter == 4
        assert crash.simulation["boot"] == "crash"
        good = source.fetch(names["good-1.2.0"])
        assert good.info.version == "1.2.0"
        assert source.downloads == 2
        requests = len(mirror.requests)
        assert source.fetch(names["good-1.2.0"]) is good
        assert len(mirror.requests) == requests  # verified once, shared
        with pytest.raises(FetchError) as missing:
            source.fetch("edgefleet-demo-gw-100-9.9.9-r9.tar.gz")
        assert missing.value.failure_class is FailureClass.VERIFICATION
    # the repository is gone: a new target cannot be had (a download failure, no crash)
    with pytest.raises(FetchError) as offline:
        TufTargets(base_url, root_bytes(repo.path), tmp_path / "other").fetch(names["good-1.2.0"])
    assert offline.value.failure_class in (FailureClass.DOWNLOAD, FailureClass.SECURITY)

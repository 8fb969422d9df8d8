"""The TUF attack table: each attack on the served repository is refused by a stock
python-tuf client with the right exception, and the client's trusted state is unchanged.

The repository is Edgefleet's server repository served by a plain static HTTP server
(the "untrusted mirror"); the attacks come from ``tests/support/tuf_attacks.py``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions

from fleet_server.updates.tuf_repository import utc_now
from tests.support import tuf_attacks as attack
from tests.support.tuf_serving import static_mirror, stock_updater, trusted_version
from tests.support.tuf_world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = make_world(tmp_path)
    w.repo.publish(w.bundles["good-1.1.0"].path, "production")
    return w


def _client(world: World, base: str, name: str = "device", fresh: bool = True):  # type: ignore[no-untyped-def]
    return stock_updater(
        world.tmp / name, f"{base}/metadata/", f"{base}/targets/", world.root if fresh else None
    )


def _target_name(world: World, example: str) -> str:
    return world.bundles[example].manifest.bundle_filename()


def test_tampered_target_bytes(world: World) -> None:
    name = _target_name(world, "good-1.1.0")
    attack.tamper_target(world.repo_dir, name)
    with static_mirror(world.repo_dir) as base:
        client = _client(world, base)
        client.refresh()
        info = client.get_targetinfo(name)
        assert info is not None
        with pytest.raises(exceptions.LengthOrHashMismatchError):
            client.download_target(info)
    assert not list((world.tmp / "device" / "targets").iterdir())


def test_metadata_rollback(world: World) -> None:
    old = attack.capture(world.repo_dir)
    world.repo.publish(world.bundles["good-1.2.0"].path)
    with static_mirror(world.repo_dir) as base:
        _client(world, base).refresh()
        trusted = trusted_version(world.tmp / "device", "timestamp")
        attack.replay_metadata(world.repo_dir, old, ["timestamp.json"])
        with pytest.raises(exceptions.BadVersionNumberError):
            _client(world, base, fresh=False).refresh()
    assert trusted_version(world.tmp / "device", "timestamp") == trusted


def test_freeze_with_expired_timestamp(tmp_path: Path) -> None:
    # The repository's clock is injected: it signed everything three days ago, so the
    # timestamp (1 day) and snapshot (7 days, re-signed 2 days early) tell their age.
    past = utc_now() - timedelta(days=3)
    world = make_world(tmp_path, clock=lambda: past)
    world.repo.publish(world.bundles["good-1.1.0"].path)
    stale = attack.capture(world.repo_dir)
    with static_mirror(world.repo_dir) as base:
        with pytest.raises(exceptions.ExpiredMetadataError):
            _client(world, base, "frozen-device").refresh()
        # the background job re-signs what is about to expire; devices update again
        result = world.repo.refresh_expiring(now=utc_now())
        assert result.resigned == ["timestamp"]
        _client(world, base, "device").refresh()
        # a mirror that keeps serving the old, validly signed metadata is a freeze
        attack.serve_stale(world.repo_dir, stale)
        with pytest.raises(exceptions.ExpiredMetadataError):
            _client(world, base, "new-device").refresh()


@pytest.mark.parametrize("role", ["targets", "snapshot"])
def test_mix_and_match(world: World, role: str) -> None:
    old = attack.capture(world.repo_dir)
    world.repo.publish(world.bundles["good-1.2.0"].path)
    attack.mix_and_match(world.repo_dir, old, role)
    with static_mirror(world.repo_dir) as base, pytest.raises(exceptions.LengthOrHashMismatchError):
        _client(world, base).refresh()


def test_endless_target_data(world: World) -> None:
    name = _target_name(world, "good-1.1.0")
    attack.endless_target(world.repo_dir, name)
    with static_mirror(world.repo_dir) as base:
        client = _client(world, base)
        client.refresh()
        info = client.get_targetinfo(name)
        assert info is not None
        with pytest.raises(exceptions.DownloadLengthMismatchError):
            client.download_target(info)


def test_endless_metadata(world: World) -> None:
    attack.endless_metadata(world.repo_dir, "timestamp.json")
    with (
        static_mirror(world.repo_dir) as base,
        pytest.raises(exceptions.DownloadLengthMismatchError),
    ):
        _client(world, base).refresh()


def test_root_signed_below_threshold(world: World) -> None:
    stolen = world.root_signers(1)  # one key of a 2-of-3 root
    with static_mirror(world.repo_dir) as base:
        device = _client(world, base)
        device.refresh()
        attack.forge_root(world.repo_dir, stolen)
        with pytest.raises(exceptions.UnsignedMetadataError):
            _client(world, base, fresh=False).refresh()
    assert trusted_version(world.tmp / "device", "root") == 1


def test_timestamp_signed_by_untrusted_key(world: World) -> None:
    attack.forge_role(world.repo_dir, "timestamp")
    with static_mirror(world.repo_dir) as base, pytest.raises(exceptions.UnsignedMetadataError):
        _client(world, base).refresh()

"""The agent's TUF client against the server's repository: verified downloads that resume
after a network cut, and every attack of the table classified by kind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tuf.api import exceptions

from agent.adapters.tuf_client import UpdateClient, classify, target_info
from tests.support import tuf_attacks as attack
from tests.support.flaky_mirror import flaky_mirror
from tests.support.tuf_world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = make_world(tmp_path)
    w.repo.publish(w.bundles["good-1.1.0"].path, "production")
    return w


def _client(world: World, base: str, name: str = "device", fresh: bool = True) -> UpdateClient:
    return UpdateClient(
        world.tmp / name / "metadata",
        f"{base}/metadata/",
        f"{base}/targets/",
        world.tmp / name / "downloads",
        bootstrap_root=world.root if fresh else None,
    )


def _name(world: World, example: str = "good-1.1.0") -> str:
    return world.bundles[example].manifest.bundle_filename()


def test_download_is_verified_and_custom_metadata_parsed(world: World) -> None:
    with flaky_mirror(world.repo_dir) as (base, _control):
        client = _client(world, base)
        client.refresh()
        target = client.find(_name(world))
        assert target is not None
        info = target_info(target)
        assert info.version == "1.1.0"
        assert info.release_counter == 1
        path = client.download(target)
    expected = hashlib.sha256(world.bundles["good-1.1.0"].path.read_bytes()).hexdigest()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected


def test_download_resumes_after_a_network_cut(world: World) -> None:
    name = _name(world)
    size = world.bundles["good-1.1.0"].path.stat().st_size
    cut = size // 2
    with flaky_mirror(world.repo_dir) as (base, control):
        first = _client(world, base)
        first.refresh()
        target = first.find(name)
        assert target is not None
        control.cut_next_target_after = cut
        with pytest.raises(exceptions.DownloadError) as info:
            first.download(target)
        assert not classify(info.value, during="download").security, "a cut is transient"

        again = _client(world, base, fresh=False)
        again.refresh()
        target = again.find(name)
        assert target is not None
        path = again.download(target)
    target_requests = [r for r in control.requests if "/targets/" in r[0]]
    assert target_requests[-1][1] == f"bytes={cut}-", "the second attempt asked for the rest only"
    assert path.read_bytes() == world.bundles["good-1.1.0"].path.read_bytes()


def test_tampered_target_is_refused_and_partial_data_discarded(world: World) -> None:
    attack.tamper_target(world.repo_dir, _name(world))
    with flaky_mirror(world.repo_dir) as (base, _control):
        client = _client(world, base)
        client.refresh()
        target = client.find(_name(world))
        assert target is not None
        with pytest.raises(exceptions.RepositoryError) as info:
            client.download(target)
    problem = classify(info.value, during="download")
    assert problem.security
    assert problem.attack == "tampered_target"
    assert not list((world.tmp / "device" / "downloads" / "partial").iterdir())


@pytest.mark.parametrize(
    ("prepare", "expected"),
    [
        ("rollback", "metadata_rollback"),
        ("mix_targets", "mix_and_match"),
        ("endless_metadata", "endless_data"),
        ("forged_timestamp", "threshold_not_met"),
        ("forged_root", "threshold_not_met"),
    ],
)
def test_refresh_attacks_are_reported_with_their_kind(
    world: World, prepare: str, expected: str
) -> None:
    with flaky_mirror(world.repo_dir) as (base, _control):
        _client(world, base).refresh()
        old = attack.capture(world.repo_dir)
        world.repo.publish(world.bundles["good-1.2.0"].path)
        if prepare == "rollback":
            _client(world, base, fresh=False).refresh()
            attack.replay_metadata(world.repo_dir, old, ["timestamp.json"])
        elif prepare == "mix_targets":
            attack.mix_and_match(world.repo_dir, old, "targets")
        elif prepare == "endless_metadata":
            attack.endless_metadata(world.repo_dir, "timestamp.json")
        elif prepare == "forged_timestamp":
            attack.forge_role(world.repo_dir, "timestamp")
        else:
            attack.forge_root(world.repo_dir, world.root_signers(1))
        with pytest.raises((exceptions.RepositoryError, exceptions.DownloadError)) as info:
            _client(world, base, fresh=False).refresh()
    problem = classify(info.value, during="refresh")
    assert problem.security
    assert problem.attack == expected


def test_endless_target_is_refused(world: World) -> None:
    attack.endless_target(world.repo_dir, _name(world))
    with flaky_mirror(world.repo_dir) as (base, _control):
        client = _client(world, base)
        client.refresh()
        target = client.find(_name(world))
        assert target is not None
        with pytest.raises(exceptions.DownloadError) as info:
            client.download(target)
    assert classify(info.value, during="download").attack == "endless_data"

"""The server's TUF repository with a stock python-tuf client (``tuf.ngclient.Updater``):
bootstrap, refresh, download, rotations, re-signing, publishing rules, HTTP serving."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tuf.api.metadata import Metadata

from firmware_bundles.target_meta import parse_target_custom
from firmware_bundles.verify import verify_bundle
from fleet_server.updates.keys import KeyFileError, create_root_keys, load_key, load_keys
from fleet_server.updates.tuf_expiries import Expiries
from fleet_server.updates.tuf_repository import (
    PublishError,
    RepositoryStateError,
    TufRepository,
    utc_now,
)
from fleet_server.updates.tuf_router import tuf_router
from fleet_server.updates.tuf_signing import SigningError
from tests.support import tuf_attacks as attack
from tests.support.tuf_serving import asgi_server, static_mirror, stock_updater, trusted_version
from tests.support.tuf_world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def _app(world: World) -> FastAPI:
    app = FastAPI()
    app.include_router(tuf_router(world.repo_dir))
    return app


def test_stock_client_bootstraps_refreshes_and_downloads_from_the_api(world: World) -> None:
    first = world.repo.publish(world.bundles["good-1.1.0"].path, "beta")
    with asgi_server(_app(world)) as base:
        urls = (f"{base}/tuf/metadata/", f"{base}/tuf/targets/")
        device = stock_updater(world.tmp / "device", *urls, world.root)
        device.refresh()
        info = device.get_targetinfo(first.name)
        assert info is not None
        meta = parse_target_custom(info.custom)
        assert (meta.version, meta.release_counter, meta.channel) == ("1.1.0", 1, "beta")
        assert meta.hardware_revisions == ["rev-a", "rev-b"]
        path = Path(device.download_target(info))
        assert path.read_bytes() == world.bundles["good-1.1.0"].path.read_bytes()
        assert verify_bundle(path).version == "1.1.0"

        second = world.repo.publish(world.bundles["good-1.2.0"].path)
        again = stock_updater(world.tmp / "device", *urls, None)
        again.refresh()
        info2 = again.get_targetinfo(second.name)
        assert info2 is not None
        assert parse_target_custom(info2.custom).channel == "production"  # manifest's hint
        assert Path(again.download_target(info2)).read_bytes() == (
            world.bundles["good-1.2.0"].path.read_bytes()
        )


def test_any_static_mirror_serves_the_same_directory(world: World) -> None:
    published = world.repo.publish(world.bundles["good-1.1.0"].path)
    copy = world.tmp / "cdn"
    import shutil

    shutil.copytree(world.repo_dir / "metadata", copy / "metadata")
    shutil.copytree(world.repo_dir / "targets", copy / "targets")
    with static_mirror(copy) as base:
        device = stock_updater(world.tmp / "d", f"{base}/metadata/", f"{base}/targets/", world.root)
        device.refresh()
        info = device.get_targetinfo(published.name)
        assert info is not None
        assert Path(device.download_target(info)).stat().st_size == published.length


def test_root_and_online_key_rotation_accepted_by_stock_client(world: World) -> None:
    world.repo.publish(world.bundles["good-1.1.0"].path)
    with static_mirror(world.repo_dir) as base:
        urls = (f"{base}/metadata/", f"{base}/targets/")
        stock_updater(world.tmp / "device", *urls, world.root).refresh()

        new_keys = create_root_keys(world.tmp / "new-root", count=2, threshold=2)
        signers = world.root_signers(2) + list(new_keys.signers.values())
        version = world.repo.rotate_root(
            [s.public_key for s in new_keys.signers.values()], 2, signers
        )
        assert version == 2
        new_ts_key = world.repo.rotate_online_key("timestamp", list(new_keys.signers.values()))
        later = world.repo.publish(world.bundles["good-1.2.0"].path)

        device = stock_updater(world.tmp / "device", *urls, None)
        device.refresh()
        assert trusted_version(world.tmp / "device", "root") == 3
        ts = Metadata.from_file(str(world.tmp / "device" / "metadata" / "timestamp.json"))
        assert set(ts.signatures) == {new_ts_key}
        info = device.get_targetinfo(later.name)
        assert info is not None
        device.download_target(info)
        # the old root keys no longer count
        with pytest.raises(SigningError):
            world.repo.resign_root(world.root_signers(2))
    assert not (world.tmp / "server-keys" / "old").exists()
    assert new_ts_key in load_keys(world.tmp / "server-keys")


def test_root_change_below_threshold_writes_nothing(world: World) -> None:
    before = sorted(p.name for p in (world.repo_dir / "metadata").iterdir())
    with pytest.raises(SigningError, match="needs 2 signatures"):
        world.repo.rotate_online_key("snapshot", world.root_signers(1))
    new_keys = create_root_keys(world.tmp / "new-root", count=1, threshold=1)
    only_new = list(new_keys.signers.values())
    with pytest.raises(SigningError):
        world.repo.rotate_root([only_new[0].public_key], 1, only_new)  # old root did not sign
    assert sorted(p.name for p in (world.repo_dir / "metadata").iterdir()) == before
    assert len(load_keys(world.tmp / "server-keys")) == 3  # the would-be new key is gone


def test_refresh_resigns_before_expiry_with_injected_clock(tmp_path: Path) -> None:
    start = utc_now()
    now = [start]
    world = make_world(tmp_path, clock=lambda: now[0])
    repo = world.repo
    assert repo.refresh_expiring(start + timedelta(hours=15)).resigned == []
    assert repo.refresh_expiring(start + timedelta(hours=17)).resigned == ["timestamp"]
    assert repo.refresh_expiring(start + timedelta(days=6)).resigned == ["snapshot", "timestamp"]
    due_all = repo.refresh_expiring(start + timedelta(days=80))
    assert due_all.resigned == ["targets", "snapshot", "timestamp"]
    assert not due_all.root_needs_resigning
    assert repo.refresh_expiring(start + timedelta(days=340)).root_needs_resigning
    now[0] = start + timedelta(days=340)
    assert repo.resign_root(world.root_signers(2)) == 2
    assert repo.status()["roles"]["root"]["expires"] > (start + timedelta(days=700)).isoformat()  # type: ignore[index]
    # every version the new timestamp names exists, and a stock client accepts the chain
    with static_mirror(world.repo_dir) as base:
        device = stock_updater(tmp_path / "d", f"{base}/metadata/", f"{base}/targets/", world.root)
        device.refresh()


def test_publish_rules(world: World) -> None:
    good = world.bundles["good-1.1.0"]
    first = world.repo.publish(good.path, "beta")
    version = attack.current_version(world.repo_dir, "targets")
    assert world.repo.publish(good.path, "beta") == first  # idempotent
    assert attack.current_version(world.repo_dir, "targets") == version
    promoted = world.repo.publish(good.path, "production")
    assert promoted.meta.channel == "production"
    assert [t.meta.channel for t in world.repo.list_targets()] == ["production"]

    other = world.tmp / "other.tar.gz"
    data = bytearray(good.path.read_bytes())
    data[-1] ^= 1  # corrupt: not a valid bundle
    other.write_bytes(bytes(data))
    with pytest.raises(PublishError, match="bundle refused"):
        world.repo.publish(other)
    with pytest.raises(PublishError, match="channel"):
        world.repo.publish(good.path, "Not A Slug")

    assert world.repo.unpublish(first.name)
    assert world.repo.list_targets() == []
    assert not world.repo.unpublish(first.name)
    with static_mirror(world.repo_dir) as base:
        device = stock_updater(world.tmp / "d", f"{base}/metadata/", f"{base}/targets/", world.root)
        device.refresh()
        assert device.get_targetinfo(first.name) is None


def test_same_name_with_other_bytes_is_refused(world: World, tmp_path: Path) -> None:
    import shutil

    from firmware_bundles.build import build_bundle
    from firmware_bundles.examples import example_source

    world.repo.publish(world.bundles["good-1.1.0"].path)
    src = tmp_path / "changed"
    shutil.copytree(example_source("good-1.1.0"), src)
    (src / "payload" / "etc" / "demo-app.conf").write_text("changed\n")
    changed = build_bundle(src, tmp_path / "changed.tar.gz")
    with pytest.raises(PublishError, match="raise release_counter"):
        world.repo.publish(changed.path)


def test_metadata_written_in_safe_order_and_layout(world: World) -> None:
    world.repo.publish(world.bundles["good-1.1.0"].path)
    meta = world.repo_dir / "metadata"
    names = {p.name for p in meta.iterdir()}
    assert {
        "root.json",
        "1.root.json",
        "timestamp.json",
        "2.snapshot.json",
        "2.targets.json",
    } <= names
    assert not [n for n in names if n.startswith(".")]  # no temp files left
    root = json.loads((meta / "root.json").read_text())["signed"]
    assert root["consistent_snapshot"] is True
    assert root["roles"]["root"]["threshold"] == 2
    expires = {
        role: Metadata.from_file(str(p)).signed.expires - utc_now()
        for role, p in [("root", meta / "root.json"), ("timestamp", meta / "timestamp.json")]
    }
    assert timedelta(days=364) < expires["root"] <= timedelta(days=365)
    assert timedelta(hours=23) < expires["timestamp"] <= timedelta(days=1)


def test_keys_are_private_and_refused_when_too_open(world: World) -> None:
    keys_dir = world.tmp / "server-keys"
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    files = list(keys_dir.glob("*.pem"))
    assert len(files) == 3
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert all(
        stat.S_IMODE(p.stat().st_mode) == 0o600 for p in world.root_keys.directory.glob("*.pem")
    )
    files[0].chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(files[0])
    with pytest.raises(KeyFileError):
        world.repo.publish(world.bundles["good-1.1.0"].path)


def test_repository_state_errors(world: World, tmp_path: Path) -> None:
    with pytest.raises(RepositoryStateError, match="already holds"):
        TufRepository.create(world.repo_dir, tmp_path / "k", world.root_signers(2), 2)
    with pytest.raises(RepositoryStateError, match="init-repo"):
        TufRepository(tmp_path / "nothing", tmp_path / "k")
    with pytest.raises(SigningError):
        TufRepository.create(tmp_path / "r2", tmp_path / "k2", world.root_signers(1), 2)
    with pytest.raises(ValueError, match="margin"):
        Expiries(timestamp=timedelta(hours=1)).check()


# --- HTTP routes --------------------------------------------------------------------


def test_routes_serve_ranges_and_refuse_unsafe_paths(world: World) -> None:
    published = world.repo.publish(world.bundles["good-1.1.0"].path)
    client = TestClient(_app(world))
    data = world.bundles["good-1.1.0"].path.read_bytes()
    url = f"/tuf/targets/{published.file_path}"
    whole = client.get(url)
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["content-length"] == str(len(data))
    part = client.get(url, headers={"Range": "bytes=100-"})
    assert part.status_code == 206
    assert part.content == data[100:]
    assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    assert client.head(url).headers["content-length"] == str(len(data))

    ts = client.get("/tuf/metadata/timestamp.json")
    assert ts.status_code == 200
    assert ts.headers["cache-control"] == "no-cache"
    assert client.get("/tuf/metadata/1.root.json").headers["cache-control"].endswith("immutable")
    for bad in [
        "/tuf/metadata/edgefleet-repo.json",
        "/tuf/metadata/..%2Fedgefleet-repo.json",
        "/tuf/metadata/99.targets.json",
        "/tuf/targets/..%2Fedgefleet-repo.json",
        "/tuf/targets/%2E%2E/%2E%2E/etc/passwd",
        "/tuf/targets/.lock",
        f"/tuf/targets/{published.name}",
    ]:
        assert client.get(bad).status_code == 404, bad


def test_a_reader_never_sees_a_timestamp_ahead_of_its_files(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After every single file write, the chain timestamp -> snapshot -> targets ->
    target files is complete on disk: what a mirror serves at any moment is usable."""
    from fleet_server.updates import tuf_repository as module

    real_write = module._write_atomic
    checked: list[str] = []

    def write_and_check(path: Path, data: bytes) -> None:
        real_write(path, data)
        checked.append(path.name)
        snap = attack.capture(world.repo_dir)
        for role in ("snapshot", "targets"):
            assert f"{snap.version_of(role)}.{role}.json" in snap.files, (path.name, role)
        targets = json.loads(snap.files[f"{snap.version_of('targets')}.targets.json"])
        for name, info in targets["signed"]["targets"].items():
            assert (world.repo_dir / "targets" / f"{info['hashes']['sha256']}.{name}").exists()

    monkeypatch.setattr(module, "_write_atomic", write_and_check)
    world.repo.publish(world.bundles["good-1.1.0"].path)
    world.repo.rotate_online_key("targets", world.root_signers(2))
    world.repo.publish(world.bundles["good-1.2.0"].path)
    world.repo.refresh_expiring(utc_now() + timedelta(days=80))
    assert checked.count("timestamp.json") == 4


def test_concurrent_publishers_lose_nothing(world: World) -> None:
    import threading

    other = TufRepository(world.repo_dir, world.tmp / "server-keys")
    errors: list[BaseException] = []

    def publish(repo: TufRepository, example: str) -> None:
        try:
            repo.publish(world.bundles[example].path)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=publish, args=(world.repo, "good-1.1.0")),
        threading.Thread(target=publish, args=(other, "good-1.2.0")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert {t.meta.version for t in world.repo.list_targets()} == {"1.1.0", "1.2.0"}

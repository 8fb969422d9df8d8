"""Hostile bundles whose tar metadata would take gigabytes are refused in bounded memory.

Issue 13, finding 4: a 0.9 MB bundle whose first entry carried a 900 MB PAX header was
verified and signed by the server (4.4 GB) and passed ``fleet-bundle verify``, the agent's
verifier (2.9 GB). Each variant here is run through the real ``fleet-bundle verify`` in a
subprocess whose own peak RSS is read with ``os.wait4`` (address space capped at 1 GiB so
a regression fails instead of eating the machine), and through a real ``fleet-server api``
whose VmHWM is read from ``/proc``.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from firmware_bundles.build import build_bundle
from firmware_bundles.errors import BundleError, Reason
from firmware_bundles.tar_guard import Limits
from firmware_bundles.verify import verify_bundle
from tests.conftest import free_port, wait_for
from tests.support.hostile_tar import BLOCK, VARIANTS, header
from tests.unit.test_bundles import GOOD

BIN = Path(sys.executable).parent
GIB = 1024**3
MIB = 1024**2
HEADROOM_KIB = 24 * 1024  # peak RSS allowed above verifying a good bundle
LONG_PATH = "lib/" + "deep-directory-name/" * 10 + "module-with-a-long-name.so"

MANIFEST = {k: v for k, v in GOOD.items() if k != "payload"}  # the build lists the payload


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid bundle with a payload path over 100 characters (so it carries a PAX header)."""
    src = tmp_path_factory.mktemp("src")
    (src / "manifest.json").write_text(json.dumps(MANIFEST))
    target = src / "payload" / LONG_PATH
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x7fELF" + b"x" * 4000)
    (src / "payload" / "app.bin").write_bytes(b"app" * 1000)
    return build_bundle(src, tmp_path_factory.mktemp("out") / "good.tar.gz").path


@dataclass(frozen=True)
class Run:
    code: int
    out: dict[str, object]
    maxrss_kib: int
    seconds: float


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (GIB, GIB))


def _verify(bundle: Path, tmp: Path) -> Run:
    """``fleet-bundle verify --json`` in a child; its own peak RSS via ``os.wait4``."""
    out_path = tmp / f"{bundle.name}.out"
    start = time.monotonic()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "fleet-bundle"), "verify", "--json", str(bundle)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_cap_memory,
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    text = out_path.read_text()
    try:
        out = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = {"raw": text[-2000:]}
    return Run(proc.returncode, out, usage.ru_maxrss, time.monotonic() - start)


def test_good_bundle_with_long_paths_verifies(good: Path, tmp_path: Path) -> None:
    run = _verify(good, tmp_path)
    assert run.code == 0, run.out
    assert run.out == {"ok": True, "version": "2.0.0", "files": 2}
    assert verify_bundle(good).payload[1].path == LONG_PATH


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hostile_metadata_is_refused_in_bounded_memory(
    variant: str, good: Path, tmp_path: Path
) -> None:
    make, reason = VARIANTS[variant]
    good_tar = gzip.decompress(good.read_bytes())
    bundle = make(tmp_path / f"{variant}.tar.gz", good_tar)
    assert bundle.stat().st_size < 2 * MIB  # small on disk, huge once expanded
    baseline = _verify(good, tmp_path)
    assert baseline.code == 0, baseline.out
    run = _verify(bundle, tmp_path)
    assert run.code == 1, run.out
    assert run.out.get("reason") == reason, run.out
    assert run.maxrss_kib <= baseline.maxrss_kib + HEADROOM_KIB, (
        f"{variant}: peak RSS {run.maxrss_kib} KiB, good bundle {baseline.maxrss_kib} KiB"
    )
    assert run.seconds < 5, f"{variant} took {run.seconds:.1f}s"


def test_header_count_and_total_metadata_are_bounded(good: Path, tmp_path: Path) -> None:
    """Past 2 x max_members headers, or max_metadata_bytes of PAX, the guard refuses
    even while tarfile is still on the first member."""
    good_tar = gzip.decompress(good.read_bytes())
    manifest_end = BLOCK + BLOCK * -(-int(good_tar[124:135], 8) // BLOCK)
    dirs = tmp_path / "dirs.tar.gz"
    many = good_tar[:manifest_end] + header("payload/", b"5", 0) * 100 + good_tar[manifest_end:]
    dirs.write_bytes(gzip.compress(many))  # one gzip member: tarfile's first read takes 10 KiB
    with pytest.raises(BundleError) as info:
        verify_bundle(dirs, Limits(max_members=5))
    assert info.value.reason is Reason.TOO_LARGE
    assert "tar headers" in info.value.message
    with pytest.raises(BundleError) as info:
        verify_bundle(good, Limits(max_metadata_bytes=100))
    assert info.value.reason is Reason.TOO_LARGE
    assert verify_bundle(good).version == "2.0.0"


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_server_refuses_the_900mb_pax_bundle_in_bounded_memory(good: Path, tmp_path: Path) -> None:
    """The real publish path (``POST /api/v1/bundles`` on ``fleet-server api``): 422 with
    the verifier's reason, and the server's peak RSS grows by less than 64 MiB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    port = free_port()
    env.update(
        FLEET_DATABASE_URL=f"sqlite:///{tmp_path}/fleet.db",
        FLEET_API_PORT=str(port),
        FLEET_UPDATES_REPO_DIR=str(tmp_path / "tuf"),
        FLEET_UPDATES_KEYS_DIR=str(tmp_path / "keys"),
    )
    init = subprocess.run(
        [str(BIN / "fleet-server"), "init", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    token = json.loads(init.stdout)["admin_token"]
    good_tar = gzip.decompress(good.read_bytes())
    bombs = {
        name: VARIANTS[name][0](tmp_path / f"{name}.tar.gz", good_tar)
        for name in ("pax-900mb", "gnu-longname-900mb")
    }
    log = (tmp_path / "api.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "fleet-server"), "api"], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            # warm up the upload path with the good bundle so the baseline includes it
            ok = client.post("/api/v1/bundles", content=good.read_bytes())
            assert ok.status_code == 201, ok.text
            before = _vm_hwm_kib(proc.pid)
            for name, bomb in bombs.items():
                start = time.monotonic()
                r = client.post("/api/v1/bundles", content=bomb.read_bytes())
                assert r.status_code == 422, (name, r.text)
                assert VARIANTS[name][1] in r.text, (name, r.text)
                assert time.monotonic() - start < 5
            grown = _vm_hwm_kib(proc.pid) - before
        assert grown < 64 * 1024, f"server peak RSS grew by {grown} KiB"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()

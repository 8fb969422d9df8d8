"""Bundles: strict manifests, deterministic builds, and hostile archives refused safely."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bundles.build import build_bundle
from firmware_bundles.errors import BundleError, Reason
from firmware_bundles.examples import EXAMPLE_NAMES, build_examples, example_source
from firmware_bundles.inspect import read_manifest
from firmware_bundles.manifest import (
    ManifestError,
    encode_manifest,
    parse_manifest,
    semver_key,
)
from firmware_bundles.verify import Limits, extract_bundle, verify_bundle

GOOD = {
    "product": "acme",
    "model": "gw-1",
    "version": "2.0.0",
    "hardware_revisions": ["rev-a"],
    "min_agent_version": "0.1.0",
    "release_counter": 5,
    "payload": [],
    "sbom": [{"name": "app", "version": "2.0.0", "licence": "MIT"}],
}


def _manifest_doc(files: dict[str, bytes]) -> dict[str, object]:
    payload = [
        {"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
        for p, b in sorted(files.items())
    ]
    return dict(GOOD, payload=payload)


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def _hostile(
    tmp_path: Path, files: dict[str, bytes], extra: list[tuple[tarfile.TarInfo, bytes | None]]
) -> Path:
    manifest = json.dumps(_manifest_doc(files)).encode()
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(_file("manifest.json"), manifest)]
    members += [(_file(f"payload/{p}"), b) for p, b in sorted(files.items())]
    return _write_tar(tmp_path / "hostile.tar.gz", members + extra)


# --- manifest -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"version": "1.0"}, "version '1.0' is not a semantic version"),
        ({"min_agent_version": "latest"}, "min_agent_version"),
        ({"hardware_revisions": []}, "hardware_revisions"),
        ({"release_counter": -1}, "release_counter"),
        ({"payload": [{"path": "a", "sha256": "XYZ", "size": 1}]}, "sha256"),
        ({"payload": [{"path": "../etc/passwd", "sha256": "0" * 64, "size": 1}]}, "'..'"),
        ({"payload": [{"path": "/etc/passwd", "sha256": "0" * 64, "size": 1}]}, "relative"),
        ({"sbom": []}, "sbom"),
        ({"health_check": {"timeout_s": 0}}, "timeout_s"),
        ({"simulation": {"boot": "maybe"}}, "boot"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_manifest_is_refused_naming_the_field(
    patch: dict[str, object], needle: str
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(dict(GOOD, **patch)))
    assert needle in str(info.value)


def test_manifest_round_trips_and_accepts_spdx_expressions() -> None:
    doc = dict(
        GOOD,
        sbom=[{"name": "x", "version": "1", "licence": "(MIT OR Apache-2.0) AND BSD-3-Clause"}],
    )
    manifest = parse_manifest(json.dumps(doc))
    assert parse_manifest(encode_manifest(manifest)) == manifest


def test_semver_precedence() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-beta",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
    ]
    assert sorted(ordered, key=semver_key) == ordered


# --- build ----------------------------------------------------------------------------


def test_build_is_byte_identical_whatever_the_file_times(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(example_source("good-1.1.0"), src)
    first = build_bundle(src, tmp_path / "a.tar.gz")
    for path in src.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    second = build_bundle(src, tmp_path / "b.tar.gz")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == second.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()


def test_build_lists_payload_and_archive_is_normalised(tmp_path: Path) -> None:
    built = build_examples(tmp_path, ("good-1.2.0",))["good-1.2.0"]
    assert [f.path for f in built.manifest.payload] == ["bin/demo-app", "etc/demo-app.conf"]
    with tarfile.open(built.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "manifest.json",
        "payload/bin/demo-app",
        "payload/etc/demo-app.conf",
    ]
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in members)
    assert members[1].mode == 0o755
    assert members[2].mode == 0o644


def test_build_refuses_symlinks_and_payload_that_disagrees_with_manifest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(example_source("good-1.1.0"), src)
    (src / "payload" / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleError) as info:
        build_bundle(src, tmp_path / "x.tar.gz")
    assert info.value.reason is Reason.BAD_SOURCE
    (src / "payload" / "link").unlink()
    doc = json.loads((src / "manifest.json").read_text())
    doc["payload"] = [{"path": "bin/demo-app", "sha256": "0" * 64, "size": 77}]
    (src / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="differs from payload"):
        build_bundle(src, tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def test_examples_build_verify_and_carry_their_bad_behaviour(tmp_path: Path) -> None:
    built = build_examples(tmp_path)
    assert set(built) == set(EXAMPLE_NAMES)
    for bundle in built.values():
        assert verify_bundle(bundle.path) == bundle.manifest
        assert read_manifest(bundle.path) == bundle.manifest
    sim = {name: b.manifest.simulation for name, b in built.items()}
    assert sim["health-fail"] is not None
    assert sim["health-fail"].health == "fail"
    assert sim["boot-crash"] is not None
    assert sim["boot-crash"].boot == "crash"
    assert "rev-a" not in built["wrong-hardware"].manifest.hardware_revisions
    counters = [built[n].manifest.release_counter for n in ("good-1.1.0", "good-1.2.0")]
    assert counters == sorted(counters)


# --- verify and extract ---------------------------------------------------------------


def test_extract_writes_payload_with_modes(tmp_path: Path) -> None:
    built = build_examples(tmp_path / "b", ("good-1.1.0",))["good-1.1.0"]
    dest = tmp_path / "out"
    extract_bundle(built.path, dest)
    app = dest / "bin" / "demo-app"
    assert app.read_bytes() == (example_source("good-1.1.0") / "payload/bin/demo-app").read_bytes()
    assert app.stat().st_mode & 0o777 == 0o755
    assert (dest / "etc" / "demo-app.conf").stat().st_mode & 0o777 == 0o644


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "payload/a" if kind == tarfile.LNKTYPE else ""
    return info


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ([(_file("payload/../../escape"), b"x")], Reason.UNSAFE_PATH),
        ([(_file("/tmp/absolute"), b"x")], Reason.UNSAFE_PATH),
        ([(_symlink("payload/link", "/etc/passwd"), None)], Reason.UNSUPPORTED_MEMBER),
        ([(_special("payload/hard", tarfile.LNKTYPE), None)], Reason.UNSUPPORTED_MEMBER),
        ([(_special("payload/dev", tarfile.CHRTYPE), None)], Reason.UNSUPPORTED_MEMBER),
        ([(_special("payload/fifo", tarfile.FIFOTYPE), None)], Reason.UNSUPPORTED_MEMBER),
        ([(_file("payload/unlisted"), b"surprise")], Reason.UNEXPECTED_FILE),
        ([(_file("payload/a"), b"again")], Reason.DUPLICATE_MEMBER),
    ],
)
def test_hostile_members_are_refused(
    tmp_path: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]], reason: Reason
) -> None:
    bundle = _hostile(tmp_path, {"a": b"alpha"}, extra)
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle)
    assert info.value.reason is reason
    dest = tmp_path / "dest"
    with pytest.raises(BundleError):
        extract_bundle(bundle, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_tampered_missing_and_misplaced_content_is_refused(tmp_path: Path) -> None:
    files = {"a": b"alpha", "b": b"beta"}
    manifest = json.dumps(_manifest_doc(files)).encode()
    cases = {
        Reason.HASH_MISMATCH: [
            (_file("manifest.json"), manifest),
            (_file("payload/a"), b"alphA"),
            (_file("payload/b"), b"beta"),
        ],
        Reason.SIZE_MISMATCH: [
            (_file("manifest.json"), manifest),
            (_file("payload/a"), b"alpha!"),
            (_file("payload/b"), b"beta"),
        ],
        Reason.MISSING_FILE: [(_file("manifest.json"), manifest), (_file("payload/a"), b"alpha")],
        Reason.MANIFEST_NOT_FIRST: [
            (_file("payload/a"), b"alpha"),
            (_file("manifest.json"), manifest),
        ],
        Reason.BAD_MANIFEST: [(_file("manifest.json"), b"{not json")],
    }
    for reason, members in cases.items():
        bundle = _write_tar(tmp_path / f"{reason.value}.tar.gz", members)
        with pytest.raises(BundleError) as info:
            verify_bundle(bundle)
        assert info.value.reason is reason, reason


def test_decompression_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    big = b"\0" * (4 * 1024 * 1024)
    bundle = _hostile(tmp_path, {"big": big}, [])
    assert bundle.stat().st_size < 64 * 1024  # compresses very well
    limits = Limits(max_payload_bytes=1024 * 1024, max_archive_overhead=64 * 1024)
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle, limits)
    assert info.value.reason is Reason.TOO_LARGE


def test_garbage_is_not_a_bundle(tmp_path: Path) -> None:
    for name, data in {
        "text": b"hello",
        "gzip-not-tar": gzip.compress(b"x" * 1000),
        "empty": b"",
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(BundleError) as info:
            verify_bundle(path)
        assert info.value.reason is Reason.NOT_A_BUNDLE, name


# --- CLI ------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware_bundles.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_build_inspect_verify(tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    assert _cli("build", str(example_source("boot-crash")), "-o", str(out)).returncode == 0
    shown = json.loads(_cli("inspect", str(out), "--json").stdout)
    assert shown["manifest"]["version"] == "1.3.1"
    assert shown["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert _cli("verify", str(out)).returncode == 0
    tampered = tmp_path / "t.tar.gz"
    _hostile(tmp_path, {"a": b"x"}, [(_file("payload/zz"), b"y")]).rename(tampered)
    result = _cli("verify", str(tampered))
    assert result.returncode == 1
    assert "unexpected_file" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_gzip_trailer_or_trailing_data_is_refused(tmp_path: Path) -> None:
    built = build_examples(tmp_path / "b", ("good-1.1.0",))["good-1.1.0"]
    data = built.path.read_bytes()
    corrupt = tmp_path / "crc.tar.gz"
    corrupt.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:])
    appended = tmp_path / "trailing.tar.gz"
    raw = gzip.decompress(data)
    appended.write_bytes(gzip.compress(raw + b"hidden payload" + b"\0" * 512))
    for path in (corrupt, appended):
        with pytest.raises(BundleError) as info:
            verify_bundle(path)
        assert info.value.reason is Reason.NOT_A_BUNDLE, path.name


# --- robustness: any corruption is a BundleError, never a crash -------------------------

_FUZZ_BUNDLE: dict[str, bytes] = {}


def _fuzz_source(tmp_dir: Path) -> bytes:
    if "data" not in _FUZZ_BUNDLE:
        _FUZZ_BUNDLE["data"] = build_examples(tmp_dir, ("good-1.1.0",))[
            "good-1.1.0"
        ].path.read_bytes()
    return _FUZZ_BUNDLE["data"]


@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4)
)
@settings(max_examples=150)
def test_corrupted_bundles_are_refused_cleanly(
    tmp_path_factory: pytest.TempPathFactory, flips: list[tuple[int, int]]
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    data = bytearray(_fuzz_source(tmp))
    for offset, mask in flips:
        data[offset % len(data)] ^= mask
    path = tmp / "fuzzed.tar.gz"
    path.write_bytes(bytes(data))
    try:
        verify_bundle(path)
    except BundleError:
        return
    # accepted only if the archive inside is intact (gzip header bits such as FTEXT, MTIME
    # or OS are not covered by the CRC and change nothing)
    assert gzip.decompress(bytes(data)) == gzip.decompress(_fuzz_source(tmp))


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(doc=st.dictionaries(st.sampled_from(sorted(GOOD)), _JSONISH))
@settings(max_examples=200)
def test_any_manifest_document_is_parsed_or_refused_cleanly(doc: dict[str, object]) -> None:
    """Whatever the field values, the outcome is a Manifest or a ManifestError."""
    try:
        parse_manifest(json.dumps(dict(GOOD, **doc)))
    except ManifestError as exc:
        assert str(exc)

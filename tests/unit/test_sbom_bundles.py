"""Standard SBOMs in bundles: CycloneDX 1.4-1.6 and SPDX 2.2/2.3 (JSON, tag-value) are
validated and stored; malformed variants are refused clearly and nothing is written."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firmware_bundles.build import build_bundle
from firmware_bundles.cli import app as bundle_cli
from firmware_bundles.errors import BundleError, Reason
from firmware_bundles.inspect import read_manifest
from firmware_bundles.sbom import parse_sbom
from firmware_bundles.verify import read_sbom_member, verify_bundle
from tests.support.sbom_docs import cyclonedx, spdx_json, spdx_tag_value

FIXTURE = Path(__file__).parents[1] / "fixtures" / "sbom" / "edgefleet-venv.cdx.json"
MANIFEST = {
    "product": "acme",
    "model": "gw-1",
    "version": "2.0.0",
    "hardware_revisions": ["rev-a"],
    "min_agent_version": "0.1.0",
    "release_counter": 5,
}


def _source(tmp_path: Path, sbom_name: str | None, data: bytes | None, **extra: object) -> Path:
    src = tmp_path / "src"
    (src / "payload").mkdir(parents=True)
    (src / "payload" / "app.bin").write_bytes(b"app")
    (src / "manifest.json").write_text(json.dumps({**MANIFEST, **extra}))
    if sbom_name and data is not None:
        (src / sbom_name).write_bytes(data)
    return src


@pytest.mark.parametrize(
    ("name", "data", "fmt", "spec", "count"),
    [
        ("sbom.cdx.json", cyclonedx("1.4"), "cyclonedx", "1.4", 3),
        ("sbom.cdx.json", cyclonedx("1.5"), "cyclonedx", "1.5", 3),
        ("sbom.cdx.json", cyclonedx("1.6"), "cyclonedx", "1.6", 3),
        ("sbom.spdx.json", spdx_json("SPDX-2.2"), "spdx", "2.2", 2),
        ("sbom.spdx.json", spdx_json("SPDX-2.3"), "spdx", "2.3", 2),
        ("sbom.spdx", spdx_tag_value("SPDX-2.2"), "spdx", "2.2", 1),
        ("sbom.spdx", spdx_tag_value("SPDX-2.3"), "spdx", "2.3", 1),
    ],
)
def test_build_stores_a_validated_sbom_and_its_components(
    tmp_path: Path, name: str, data: bytes, fmt: str, spec: str, count: int
) -> None:
    built = build_bundle(_source(tmp_path, name, data), tmp_path / "out.tar.gz")
    manifest = verify_bundle(built.path)
    assert manifest.sbom_document is not None
    assert (manifest.sbom_document.format, manifest.sbom_document.spec_version) == (fmt, spec)
    assert len(manifest.sbom) == count
    assert read_sbom_member(built.path) == data
    comp = next(c for c in manifest.sbom if c.purl and "openssl" not in c.purl)
    assert comp.purl.startswith("pkg:generic/")
    assert comp.licence
    with tarfile.open(built.path) as tar:
        assert tar.getnames()[:2] == ["manifest.json", f"sbom/{name}"]


def test_the_real_cyclonedx_py_sbom_of_this_project_is_accepted(tmp_path: Path) -> None:
    data = FIXTURE.read_bytes()
    doc = parse_sbom(data, FIXTURE.name)
    assert doc.format == "cyclonedx"
    assert len(doc.components) >= 50
    purls = {c.purl for c in doc.components}
    assert any(p and p.startswith("pkg:pypi/msgspec@") for p in purls)
    built = build_bundle(_source(tmp_path, "sbom.cdx.json", data), tmp_path / "real.tar.gz")
    result = CliRunner().invoke(bundle_cli, ["inspect", str(built.path)])
    assert result.exit_code == 0, result.output
    assert "components from cyclonedx 1.5 (sbom/sbom.cdx.json)" in result.output
    assert "pkg:pypi/msgspec@" in result.output
    as_json = CliRunner().invoke(bundle_cli, ["inspect", str(built.path), "--json"])
    sbom = json.loads(as_json.output)["manifest"]["sbom"]
    assert all({"name", "version", "purl", "licence", "supplier", "hashes"} <= set(c) for c in sbom)


def _cdx(**change: object) -> bytes:
    doc = json.loads(cyclonedx("1.6"))
    doc.update(change)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("sbom.cdx.json", b"{not json", "not valid JSON"),
        ("sbom.cdx.json", _cdx(specVersion="1.3"), "specVersion '1.3' is not supported"),
        ("sbom.cdx.json", _cdx(specVersion="2.0"), "not supported"),
        ("sbom.cdx.json", _cdx(components=[{"type": "library", "version": "1"}]), "schema"),
        (
            "sbom.cdx.json",
            _cdx(components=[{"type": "library", "name": "x", "version": 5}]),
            "schema",
        ),
        (
            "sbom.cdx.json",
            _cdx(
                components=[
                    {
                        "type": "library",
                        "name": "x",
                        "version": "1",
                        "licenses": [{"expression": "MIT OR"}],
                    }
                ]
            ),
            "licence",
        ),
        (
            "sbom.cdx.json",
            _cdx(
                components=[{"type": "library", "name": "x", "version": "1", "purl": "not-a-purl"}]
            ),
            "purl",
        ),
        ("sbom.spdx", spdx_tag_value("SPDX-2.1"), "SPDX-2.1"),
        ("sbom.spdx", spdx_tag_value(licence="Not-A-Licence-9"), "Not-A-Licence-9"),
        ("sbom.spdx", b"SPDXVersion: SPDX-2.3\nPackageName: x\n", "SPDX"),
        ("sbom.spdx.json", b'{"spdxVersion": "SPDX-2.3"}', "SPDX"),
        ("sbom.spdx.json", spdx_json().replace(b'"SPDXRef-DOCUMENT"', b'"bad id"', 1), "SPDX"),
    ],
)
def test_malformed_sboms_are_refused_and_nothing_is_written(
    tmp_path: Path, name: str, data: bytes, needle: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BundleError) as info:
        build_bundle(_source(tmp_path, name, data), out)
    assert info.value.reason is Reason.BAD_SBOM
    assert needle in info.value.message
    assert list(out.iterdir()) == []


def test_two_sbom_documents_or_a_listed_sbom_beside_one_are_refused(tmp_path: Path) -> None:
    src = _source(tmp_path, "sbom.cdx.json", cyclonedx())
    (src / "sbom.spdx").write_bytes(spdx_tag_value())
    with pytest.raises(BundleError, match="several SBOM documents"):
        build_bundle(src, tmp_path / "a.tar.gz")
    shutil.rmtree(src)
    listed = [{"name": "x", "version": "1", "licence": "MIT"}]
    src = _source(tmp_path, "sbom.cdx.json", cyclonedx(), sbom=listed)
    with pytest.raises(BundleError, match="keep only one"):
        build_bundle(src, tmp_path / "b.tar.gz")


def test_the_old_component_list_is_converted_and_licences_checked(tmp_path: Path) -> None:
    listed = [
        {"name": "busybox", "version": "1.36.1", "licence": "gpl-2.0-only"},
        {"name": "zlib", "version": "1.3.1", "licence": "Zlib"},
    ]
    built = build_bundle(_source(tmp_path, None, None, sbom=listed), tmp_path / "old.tar.gz")
    manifest = read_manifest(built.path)
    assert manifest.sbom_document is None
    assert [(c.licence, c.purl) for c in manifest.sbom] == [
        ("GPL-2.0-only", "pkg:generic/busybox@1.36.1"),
        ("Zlib", "pkg:generic/zlib@1.3.1"),
    ]
    for bad, needle in (("MIT OR", "MIT OR"), ("not a licence!", "Invalid license key")):
        shutil.rmtree(tmp_path / "src")
        listed = [{"name": "x", "version": "1", "licence": bad}]
        with pytest.raises(BundleError, match=needle) as info:
            build_bundle(_source(tmp_path, None, None, sbom=listed), tmp_path / "x.tar.gz")
        assert info.value.reason is Reason.BAD_SBOM


def test_a_tampered_sbom_member_fails_verification(tmp_path: Path) -> None:
    built = build_bundle(_source(tmp_path, "sbom.cdx.json", cyclonedx()), tmp_path / "b.tar.gz")
    members = []
    with tarfile.open(built.path) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.startswith("sbom/"):
                data = data.replace(b"busybox", b"busyfox")
            members.append((m, data))
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        import io

        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    with pytest.raises(BundleError) as info:
        verify_bundle(bad)
    assert info.value.reason is Reason.HASH_MISMATCH

"""Licence expressions against a policy, OSV range matching across ecosystems, VEX, and
the offline ``fleetctl sbom check`` a build pipeline gates on."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet_server.domain.exposure import index_advisories, match
from fleet_server.domain.licence_policy import (
    ALLOWED,
    DENIED,
    NEEDS_REVIEW,
    evaluate,
    evaluate_expression,
    obligations,
    parse_policy,
)
from fleet_server.domain.osv import earliest_fix, is_affected, parse_advisory, severity_of
from fleet_server.domain.vex import parse_vex
from fleet_server.errors import InvalidInputError
from fleet_server.fleetctl.client import CtlError
from fleet_server.fleetctl.sbom_cli import sbom_app
from tests.support.sbom_docs import cyclonedx, openvex, osv

POLICY = parse_policy(
    {
        "allowed": ["MIT", "Apache-2.0", "Zlib"],
        "denied": ["GPL-3.0-only", "AGPL-3.0-only"],
        "needs_review": ["GPL-2.0-only"],
    }
)


@pytest.mark.parametrize(
    ("expression", "verdict", "carried"),
    [
        ("GPL-2.0-only OR MIT", ALLOWED, ["MIT"]),
        ("MIT OR GPL-3.0-only", ALLOWED, ["MIT"]),
        ("GPL-3.0-only OR GPL-2.0-only", NEEDS_REVIEW, ["GPL-2.0-only"]),
        ("MIT AND GPL-2.0-only", NEEDS_REVIEW, ["MIT", "GPL-2.0-only"]),
        ("(MIT OR Apache-2.0) AND GPL-3.0-only", DENIED, ["MIT", "GPL-3.0-only"]),
        ("Apache-2.0 WITH LLVM-exception", ALLOWED, ["Apache-2.0"]),
        ("mit", ALLOWED, ["MIT"]),
        ("BSD-3-Clause", NEEDS_REVIEW, ["BSD-3-Clause"]),
        (None, NEEDS_REVIEW, []),
        ("MIT OR", DENIED, []),
    ],
)
def test_licence_expressions_are_evaluated_on_their_tree(
    expression: str | None, verdict: str, carried: list[str]
) -> None:
    assert evaluate_expression(expression, POLICY) == (verdict, carried)


def test_obligations_follow_the_licences_shipped() -> None:
    assert obligations(["MIT"]) == ["attribution"]
    assert obligations(["GPL-2.0-only"]) == ["attribution", "source_offer"]
    assert obligations(["GPL-3.0-or-later"], locked_device=True)[-1] == "no_tivoisation_violated"
    locked = parse_policy({"allowed": ["GPL-3.0-or-later"], "locked_device": True})
    assert evaluate_expression("GPL-3.0-or-later", locked)[0] == DENIED


def test_waivers_lift_a_denial_and_bad_policies_are_refused() -> None:
    class C:
        name, version, purl, licence = "x", "1", "pkg:generic/x@1", "GPL-3.0-only"

    assert evaluate([C()], POLICY).violations() == [
        {"purl": "pkg:generic/x@1", "licence": "GPL-3.0-only", "rule": "denied"}
    ]
    assert evaluate([C()], POLICY, {"x@1": "legal ok'd"}).violations() == []
    for bad in ({"allowed": ["Nope-1"]}, {"allowed": ["MIT"], "denied": ["MIT"]}, {"x": 1}):
        with pytest.raises(InvalidInputError):
            parse_policy(bad)


def _aff(events, package=None, range_type="ECOSYSTEM", versions=None):  # type: ignore[no-untyped-def]
    doc = osv(
        "X-1",
        package or {"ecosystem": "PyPI", "name": "Requests"},
        events,
        range_type=range_type,
        versions=versions,
    )
    return parse_advisory(doc).affected[0]


@pytest.mark.parametrize(
    ("events", "package", "version", "expected"),
    [
        ([{"introduced": "0"}, {"fixed": "2.31.0"}], None, "2.30.0", True),
        ([{"introduced": "0"}, {"fixed": "2.31.0"}], None, "2.31.0", False),
        # PEP 440: a release candidate comes before the release it fixes in
        ([{"introduced": "0"}, {"fixed": "2.31.0"}], None, "2.31.0rc1", True),
        ([{"introduced": "2.0"}, {"fixed": "2.31.0"}], None, "1.9", False),
        # last_affected is inclusive, fixed exclusive
        (
            [{"introduced": "1.2.0"}, {"last_affected": "1.4.0"}],
            {"ecosystem": "npm", "name": "@scope/pkg"},
            "1.4.0",
            True,
        ),
        (
            [{"introduced": "1.2.0"}, {"last_affected": "1.4.0"}],
            {"ecosystem": "npm", "name": "@scope/pkg"},
            "1.4.1",
            False,
        ),
        # SemVer pre-releases sort before their release
        (
            [{"introduced": "1.2.0"}, {"last_affected": "1.4.0"}],
            {"ecosystem": "npm", "name": "@scope/pkg"},
            "1.2.0-rc.1",
            False,
        ),
        (
            [{"introduced": "1.2.0"}, {"last_affected": "1.4.0"}],
            {"ecosystem": "npm", "name": "@scope/pkg"},
            "1.4.0-beta.1",
            True,
        ),
        # Debian: the epoch outranks the upstream version
        (
            [{"introduced": "0"}, {"fixed": "1:1.2-1"}],
            {"ecosystem": "Debian:12", "name": "openssl"},
            "1.9-1",
            True,
        ),
        (
            [{"introduced": "0"}, {"fixed": "1:1.2-1"}],
            {"ecosystem": "Debian:12", "name": "openssl"},
            "2:0.1-1",
            False,
        ),
        # Alpine: -r10 is after -r2
        (
            [{"introduced": "0"}, {"fixed": "1.36.1-r10"}],
            {"ecosystem": "Alpine:v3.19", "name": "busybox"},
            "1.36.1-r2",
            True,
        ),
        # two ranges in one list
        (
            [{"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "2.0"}, {"fixed": "2.2"}],
            None,
            "1.7",
            False,
        ),
        (
            [{"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "2.0"}, {"fixed": "2.2"}],
            None,
            "2.1",
            True,
        ),
        ([{"introduced": "0"}, {"limit": "3.0"}], None, "3.1", False),
    ],
)
def test_osv_ranges_use_each_ecosystems_ordering(events, package, version, expected) -> None:  # type: ignore[no-untyped-def]
    assert is_affected(_aff(events, package), version) is expected


def test_git_ranges_resolve_only_through_listed_versions_and_fixes_are_found() -> None:
    git = _aff(
        [{"introduced": "abc123"}, {"fixed": "def456"}],
        {"ecosystem": "GIT", "name": "busybox"},
        "GIT",
        ["1.36.0"],
    )
    assert is_affected(git, "1.36.0") is True
    assert is_affected(git, "1.37.0") is None
    multi = _aff([{"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "2.0"}, {"fixed": "2.2"}])
    assert earliest_fix(multi, "1.2") == "1.5"
    assert earliest_fix(multi, "2.1") == "2.2"


def test_severity_comes_from_the_cvss_vector_else_the_database_label() -> None:
    assert severity_of(osv("A", {"ecosystem": "npm", "name": "x"}, []))[:2] == ("critical", 9.8)
    medium = "CVSS:3.1/AV:N/AC:H/PR:L/UI:R/S:U/C:L/I:L/A:N"
    assert severity_of(osv("B", {"ecosystem": "npm", "name": "x"}, [], vector=medium))[0] in (
        "low",
        "medium",
    )
    v4 = {
        "severity": [
            {
                "type": "CVSS_V4",
                "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
            }
        ]
    }
    assert severity_of(v4)[0] == "critical"
    assert severity_of({"database_specific": {"severity": "MODERATE"}})[0] == "medium"
    with pytest.raises(InvalidInputError, match="id"):
        parse_advisory({"modified": "x"})


def test_vex_suppresses_or_annotates_matches() -> None:
    adv = parse_advisory(
        osv(
            "GHSA-1",
            {"purl": "pkg:generic/busybox"},
            [{"introduced": "0"}, {"fixed": "1.37.0"}],
            aliases=["CVE-1"],
        )
    )
    index = index_advisories([adv])
    purls = ["pkg:generic/busybox@1.36.1", "pkg:generic/zlib@1.3.1"]
    assert [m.status for m in match(purls, index)] == ["affected"]
    vex = parse_vex(
        openvex("CVE-1", "pkg:generic/busybox", "not_affected", "vulnerable_code_not_present")
    )
    (m,) = match(purls, index, vex)
    assert (m.suppressed, m.justification) == (True, "vulnerable_code_not_present")
    (m,) = match(purls, index, parse_vex(openvex("GHSA-1", None, "under_investigation", None)))
    assert (m.status, m.suppressed) == ("under_investigation", False)
    cdx = json.loads(cyclonedx())
    cdx["vulnerabilities"] = [
        {
            "id": "GHSA-1",
            "analysis": {"state": "resolved"},
            "affects": [{"ref": "pkg:generic/busybox@1.36.1"}],
        }
    ]
    (m,) = match(purls, index, parse_vex(json.dumps(cdx).encode()))
    assert m.status == "fixed"
    with pytest.raises(InvalidInputError, match="justification"):
        parse_vex(openvex("CVE-1", None, "not_affected", None))


def test_offline_check_prints_the_agreed_json_and_fails_the_build(tmp_path: Path) -> None:
    sbom = tmp_path / "sbom.cdx.json"
    sbom.write_bytes(cyclonedx())
    advisories = tmp_path / "osv.zip"
    with zipfile.ZipFile(advisories, "w") as z:
        z.writestr(
            "a/GHSA-1.json",
            json.dumps(
                osv(
                    "GHSA-1",
                    {"purl": "pkg:generic/busybox"},
                    [{"introduced": "0"}, {"fixed": "1.37.0"}],
                    aliases=["CVE-2026-1"],
                )
            ),
        )
        z.writestr(
            "b/DSA-1.json",
            json.dumps(
                osv(
                    "DSA-1",
                    {"ecosystem": "Debian:12", "name": "openssl"},
                    [{"introduced": "0"}, {"fixed": "3.0.13-1"}],
                    vector=None,
                )
            ),
        )
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"allowed": ["Apache-2.0", "MIT"], "denied": ["GPL-2.0-only"]}))
    runner = CliRunner()
    args = ["check", "--sbom", str(sbom), "--advisories", str(advisories), "--json"]
    result = runner.invoke(sbom_app, args)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["components"] == 3
    assert {"id", "aliases", "purl", "severity", "fixed_in"} <= set(report["vulnerabilities"][0])
    ghsa = next(v for v in report["vulnerabilities"] if v["id"] == "GHSA-1")
    assert (ghsa["aliases"], ghsa["severity"], ghsa["fixed_in"]) == (
        ["CVE-2026-1"],
        "critical",
        "1.37.0",
    )
    assert report["licences"] == {"Apache-2.0": 2, "GPL-2.0-only": 1, "MIT": 1}
    assert report["violations"] == []
    assert report["suppressed"] == []
    vex = tmp_path / "vex.json"
    vex.write_bytes(
        openvex(
            "CVE-2026-1",
            "pkg:generic/busybox@1.36.1",
            "not_affected",
            "vulnerable_code_not_in_execute_path",
        )
    )
    passed = runner.invoke(sbom_app, [*args, "--vex", str(vex), "--fail-on", "critical"])
    assert passed.exit_code == 0, passed.output
    report = json.loads(passed.output)
    assert report["suppressed"][0]["justification"] == "vulnerable_code_not_in_execute_path"
    denied = runner.invoke(
        sbom_app, [*args, "--vex", str(vex), "--policy", str(policy), "--fail-on", "critical"]
    )
    assert denied.exit_code == 1
    assert json.loads(denied.output)["violations"] == [
        {"purl": "pkg:generic/busybox@1.36.1", "licence": "GPL-2.0-only", "rule": "denied"}
    ]
    broken = tmp_path / "broken.cdx.json"
    broken.write_text('{"bomFormat": "CycloneDX", "specVersion": "1.6", "components": 3}')
    bad = runner.invoke(sbom_app, ["check", "--sbom", str(broken)])
    assert isinstance(bad.exception, CtlError)  # fleetctl's main prints it and exits 3
    assert bad.exception.exit_code == 3
    assert "schema" in bad.exception.message

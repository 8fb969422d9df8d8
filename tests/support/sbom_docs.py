"""Small SBOM, OSV and VEX documents the SBOM tests write (built here, not downloaded)."""

from __future__ import annotations

import json
from typing import Any

SHA = "ab" * 32


def cyclonedx(spec: str = "1.6", components: list[dict[str, Any]] | None = None) -> bytes:
    """A CycloneDX JSON BOM of ``spec`` with busybox, openssl and a demo app."""
    comps = components or [
        {
            "type": "application",
            "name": "demo-app",
            "version": "2.0.0",
            "purl": "pkg:generic/demo-app@2.0.0",
            "licenses": [{"license": {"id": "Apache-2.0"}}],
            "supplier": {"name": "Edgefleet"},
        },
        {
            "type": "library",
            "name": "busybox",
            "version": "1.36.1",
            "purl": "pkg:generic/busybox@1.36.1",
            "licenses": [{"license": {"id": "GPL-2.0-only"}}],
            "hashes": [{"alg": "SHA-256", "content": SHA}],
        },
        {
            "type": "library",
            "name": "openssl",
            "version": "3.0.11-1",
            "purl": "pkg:deb/debian/openssl@3.0.11-1",
            "licenses": [{"expression": "Apache-2.0 OR MIT"}],
        },
    ]
    return json.dumps(
        {"bomFormat": "CycloneDX", "specVersion": spec, "version": 1, "components": comps}
    ).encode()


def spdx_tag_value(version: str = "SPDX-2.3", licence: str = "GPL-2.0-only") -> bytes:
    """An SPDX tag-value document with one package (busybox)."""
    return f"""SPDXVersion: {version}
DataLicense: CC0-1.0
SPDXID: SPDXRef-DOCUMENT
DocumentName: demo
DocumentNamespace: https://example.com/spdx/demo-1
Creator: Tool: edgefleet-tests
Created: 2026-01-01T00:00:00Z

PackageName: busybox
SPDXID: SPDXRef-busybox
PackageVersion: 1.36.1
PackageSupplier: Organization: BusyBox project
PackageDownloadLocation: NOASSERTION
FilesAnalyzed: false
PackageChecksum: SHA256: {SHA}
PackageLicenseConcluded: {licence}
PackageLicenseDeclared: {licence}
PackageCopyrightText: NOASSERTION
ExternalRef: PACKAGE-MANAGER purl pkg:generic/busybox@1.36.1

Relationship: SPDXRef-DOCUMENT DESCRIBES SPDXRef-busybox
""".encode()


def spdx_json(version: str = "SPDX-2.3") -> bytes:
    """An SPDX JSON document with two packages (zlib and openssl)."""
    packages = [
        {
            "SPDXID": f"SPDXRef-{name}",
            "name": name,
            "versionInfo": ver,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": lic,
            "licenseDeclared": lic,
            "copyrightText": "NOASSERTION",
            "supplier": "Organization: Example",
            "checksums": [{"algorithm": "SHA256", "checksumValue": SHA}],
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl,
                }
            ],
        }
        for name, ver, lic, purl in (
            ("zlib", "1.3.1", "Zlib", "pkg:generic/zlib@1.3.1"),
            ("openssl", "3.0.11-1", "Apache-2.0", "pkg:deb/debian/openssl@3.0.11-1"),
        )
    ]
    doc = {
        "spdxVersion": version,
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": "demo",
        "documentNamespace": "https://example.com/spdx/demo-2",
        "creationInfo": {"created": "2026-01-01T00:00:00Z", "creators": ["Tool: tests"]},
        "packages": packages,
        "relationships": [
            {
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": "SPDXRef-zlib",
            }
        ],
    }
    return json.dumps(doc).encode()


def osv(
    ident: str,
    package: dict[str, str],
    events: list[dict[str, str]],
    *,
    vector: str | None = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
    range_type: str = "ECOSYSTEM",
    versions: list[str] | None = None,
    aliases: list[str] | None = None,
    modified: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    """One OSV advisory for ``package`` with one range of ``events``."""
    doc: dict[str, Any] = {
        "id": ident,
        "modified": modified,
        "aliases": aliases or [],
        "summary": f"{ident} in {package.get('name') or package.get('purl')}",
        "affected": [
            {
                "package": package,
                "ranges": [{"type": range_type, "events": events}],
                "versions": versions or [],
            }
        ],
    }
    if vector:
        doc["severity"] = [{"type": "CVSS_V3", "score": vector}]
    return doc


def openvex(vuln: str, purl: str | None, status: str, justification: str | None) -> bytes:
    """An OpenVEX document with one statement."""
    st: dict[str, Any] = {"vulnerability": {"name": vuln}, "status": status}
    if purl:
        st["products"] = [{"@id": purl}]
    if justification:
        st["justification"] = justification
    return json.dumps(
        {
            "@context": "https://openvex.dev/ns/v0.2.0",
            "@id": "https://example.com/vex/1",
            "author": "tests",
            "timestamp": "2026-01-01T00:00:00Z",
            "version": 1,
            "statements": [st],
        }
    ).encode()

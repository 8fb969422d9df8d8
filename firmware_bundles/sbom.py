"""Standard SBOM documents: CycloneDX 1.4-1.6 JSON and SPDX 2.2 / 2.3 (JSON or tag-value).

A bundle source may hold one SBOM document next to its manifest (``sbom.cdx.json``,
``sbom.spdx.json`` or ``sbom.spdx``). The build validates it with the ecosystem's
libraries (the CycloneDX schema shipped by ``cyclonedx-python-lib``, checked by
``jsonschema-rs``, then read into the library's model; ``spdx-tools`` for SPDX, parsed and
fully validated), stores it in the bundle and writes its components into the manifest's
``sbom`` list. The old hand-written component list still works and is converted (a
``pkg:generic`` purl is added). Licences are checked with ``license-expression``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from packageurl import PackageURL

from firmware_bundles.licences import NOASSERTION, LicenceError, check_expression
from firmware_bundles.manifest import ManifestError, SbomComponent

SBOM_FILES = {"sbom.cdx.json": "cyclonedx", "sbom.spdx.json": "spdx", "sbom.spdx": "spdx"}
"""Names of the SBOM document a bundle source may hold, and the format of each."""

CYCLONEDX_VERSIONS = ("1.4", "1.5", "1.6")
SPDX_VERSIONS = ("SPDX-2.2", "SPDX-2.3")
MAX_SBOM_BYTES = 16 * 1024 * 1024


_ALGORITHMS = {f"SHA{n}": f"SHA-{n}" for n in (1, 224, 256, 384, 512)}
"""SPDX checksum names in CycloneDX spelling, so hashes read alike from both formats."""


class SbomError(ManifestError):
    """An SBOM document is malformed, of an unsupported version, or invalid; the message
    says which rule it breaks and where."""


@dataclass(frozen=True)
class SbomDocument:
    """A validated SBOM: its format, spec version and components (manifest form)."""

    format: str
    spec_version: str
    components: list[SbomComponent]


def find_sbom(src: Path) -> Path | None:
    """The SBOM document of a bundle source directory, or None.

    Raises:
        SbomError: more than one SBOM document is present.
    """
    found = [src / name for name in SBOM_FILES if (src / name).is_file()]
    if len(found) > 1:
        raise SbomError(f"{src} holds several SBOM documents: {[p.name for p in found]}")
    return found[0] if found else None


def parse_sbom(data: bytes, filename: str) -> SbomDocument:
    """Validate an SBOM document and return its components.

    The format comes from the file name (``*.cdx.json`` CycloneDX, ``*.spdx.json`` or
    ``*.spdx`` SPDX) or, for a bare ``.json``, from the document itself.

    Raises:
        SbomError: unknown format, unsupported version, schema or validation failure,
            a component without a name, or an invalid licence.
    """
    if len(data) > MAX_SBOM_BYTES:
        raise SbomError(f"{filename}: SBOM is larger than {MAX_SBOM_BYTES} bytes")
    if filename.endswith(".spdx") or filename.endswith(".spdx.json"):
        return _parse_spdx(data, filename)
    if filename.endswith(".json"):
        doc = _json(data, filename)
        if isinstance(doc, dict) and doc.get("bomFormat") == "CycloneDX":
            return _parse_cyclonedx(doc, filename)
        if isinstance(doc, dict) and "spdxVersion" in doc:
            return _parse_spdx(data, filename)
    raise SbomError(
        f"{filename}: not a CycloneDX JSON or SPDX (JSON or tag-value) document; "
        "name it sbom.cdx.json, sbom.spdx.json or sbom.spdx"
    )


def _json(data: bytes, filename: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SbomError(f"{filename}: not valid JSON: {exc}") from None


@cache
def _cyclonedx_validator(spec: str) -> Any:
    import jsonschema_rs
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.schema._res import BOM_JSON

    path = Path(BOM_JSON[SchemaVersion.from_version(spec)] or "")
    folder = path.parent

    def retrieve(uri: str) -> Any:
        # the schema's references are siblings shipped with the library: never the network
        name = uri.rsplit("/", 1)[-1]
        return json.loads((folder / name).read_text())

    return jsonschema_rs.validator_for(json.loads(path.read_text()), retriever=retrieve)


def _parse_cyclonedx(doc: dict[str, Any], filename: str) -> SbomDocument:
    from cyclonedx.model.bom import Bom

    spec = doc.get("specVersion")
    if spec not in CYCLONEDX_VERSIONS:
        raise SbomError(
            f"{filename}: CycloneDX specVersion {spec!r} is not supported "
            f"(use {', '.join(CYCLONEDX_VERSIONS)})"
        )
    errors = list(_cyclonedx_validator(spec).iter_errors(doc))
    if errors:
        first = str(errors[0]).replace("\n\n", "; ").replace("\n", " ")
        raise SbomError(
            f"{filename}: CycloneDX {spec} schema: {first[:400]} ({len(errors)} errors)"
        )
    try:
        bom = Bom.from_json(doc)  # type: ignore[attr-defined]
    except Exception as exc:  # the library raises many kinds on documents it cannot model
        raise SbomError(f"{filename}: CycloneDX document cannot be read: {exc}") from None
    out: list[SbomComponent] = []
    stack = list(bom.components)
    while stack:
        comp = stack.pop(0)
        stack.extend(comp.components)
        out.append(
            _component(
                filename,
                comp.name if not comp.group else f"{comp.group}/{comp.name}",
                comp.version,
                _cdx_licence(comp.licenses),
                str(comp.purl) if comp.purl else None,
                comp.supplier.name if comp.supplier and comp.supplier.name else None,
                {h.alg.value: h.content for h in comp.hashes},
            )
        )
    return SbomDocument("cyclonedx", spec, out)


def _cdx_licence(licenses: Any) -> str | None:
    parts: list[str] = []
    for lic in licenses:
        value = getattr(lic, "value", None)  # a LicenseExpression
        ident = getattr(lic, "id", None)
        if value:
            parts.append(f"({value})" if len(licenses) > 1 else str(value))
        elif ident:
            parts.append(str(ident))
        elif getattr(lic, "name", None):
            parts.append("LicenseRef-" + "".join(c if c.isalnum() else "-" for c in lic.name))
    # several licences listed for one component all apply (CycloneDX 1.6: "AND")
    return " AND ".join(parts) if parts else None


def _parse_spdx(data: bytes, filename: str) -> SbomDocument:
    from spdx_tools.spdx.model import ExternalPackageRefCategory
    from spdx_tools.spdx.parser.error import SPDXParsingError
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    suffix = ".spdx.json" if filename.endswith(".json") else ".spdx"
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            document = parse_file(tmp)
        except SPDXParsingError as exc:
            raise SbomError(f"{filename}: SPDX: {'; '.join(exc.get_messages())[:400]}") from None
        except Exception as exc:  # the tag-value and JSON readers raise their own kinds
            raise SbomError(f"{filename}: not a readable SPDX document: {exc}") from None
    finally:
        os.unlink(tmp)
    spec = document.creation_info.spdx_version
    if spec not in SPDX_VERSIONS:
        raise SbomError(f"{filename}: {spec!r} is not supported (use SPDX-2.2 or SPDX-2.3)")
    problems = validate_full_spdx_document(document, spdx_version=spec)
    if problems:
        raise SbomError(
            f"{filename}: {spec}: {problems[0].validation_message} ({len(problems)} problems)"
        )
    out: list[SbomComponent] = []
    for pkg in document.packages:
        purl = next(
            (
                ref.locator
                for ref in pkg.external_references
                if ref.category == ExternalPackageRefCategory.PACKAGE_MANAGER
                and ref.reference_type == "purl"
            ),
            None,
        )
        licence = None
        for candidate in (pkg.license_concluded, pkg.license_declared):
            text = str(candidate) if candidate is not None else ""
            if text and text not in NOASSERTION and "SpdxNoAssertion" not in text:
                licence = text
                break
        supplier = getattr(pkg.supplier, "name", None) if pkg.supplier else None
        hashes = {
            _ALGORITHMS.get(c.algorithm.name, c.algorithm.name): c.value for c in pkg.checksums
        }
        out.append(_component(filename, pkg.name, pkg.version, licence, purl, supplier, hashes))
    return SbomDocument("spdx", spec.removeprefix("SPDX-"), out)


def _component(
    filename: str,
    name: str,
    version: str | None,
    licence: str | None,
    purl: str | None,
    supplier: str | None,
    hashes: dict[str, str],
) -> SbomComponent:
    where = f"{filename}: component {name!r}"
    if licence:
        try:
            licence = check_expression(licence)
        except LicenceError as exc:
            raise SbomError(f"{where}: {exc}") from None
    if purl:
        try:
            purl = PackageURL.from_string(purl).to_string()
        except ValueError as exc:
            raise SbomError(f"{where}: purl {purl!r} is invalid: {exc}") from None
    try:
        return SbomComponent(
            name=name,
            version=version or "",
            licence=licence,
            purl=purl,
            supplier=supplier,
            hashes=hashes,
        )
    except (ValueError, TypeError) as exc:
        raise SbomError(f"{where}: {exc}") from None


def convert_legacy(components: list[SbomComponent]) -> list[SbomComponent]:
    """The manifest's own component list in the full form: licences checked and
    normalised, and a ``pkg:generic`` purl for each component that has none.

    Raises:
        SbomError: a licence is invalid.
    """
    out = []
    for comp in components:
        purl = comp.purl or PackageURL("generic", name=comp.name, version=comp.version).to_string()
        out.append(
            _component(
                "manifest.json",
                comp.name,
                comp.version,
                comp.licence,
                purl,
                comp.supplier,
                dict(comp.hashes),
            )
        )
    return out

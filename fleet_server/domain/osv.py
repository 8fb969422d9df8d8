"""OSV advisories: parse, rate and match them against components by purl and version.

An OSV document (the format of the GitHub Advisory Database and OSV.dev exports) names
affected packages by ecosystem and name (or purl) with version ranges: ``SEMVER`` and
``ECOSYSTEM`` ranges are event lists (``introduced``, ``fixed``, ``last_affected``,
``limit``) compared with the ecosystem's own ordering from ``univers`` (Debian epochs,
PEP 440 pre-releases, SemVer pre-releases...); ``GIT`` ranges name commits, which only the
advisory's explicit ``versions`` list resolves. Severity comes from the CVSS vector
(``cvss``: v2, v3.x, v4), else the database's own label. Pure: no database, no I/O.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from packageurl import PackageURL

from fleet_server.errors import InvalidInputError

SEVERITIES = ("none", "low", "medium", "high", "critical")
"""Severity labels, least first."""

ECOSYSTEM_TO_PURL = {
    "PyPI": "pypi",
    "npm": "npm",
    "Go": "golang",
    "Maven": "maven",
    "crates.io": "cargo",
    "RubyGems": "gem",
    "NuGet": "nuget",
    "Packagist": "composer",
    "Hex": "hex",
    "Debian": "deb",
    "Ubuntu": "deb",
    "Alpine": "apk",
    "Rocky Linux": "rpm",
    "AlmaLinux": "rpm",
    "Red Hat": "rpm",
    "openSUSE": "rpm",
    "SUSE": "rpm",
    "Arch Linux": "alpm",
    "OSS-Fuzz": "generic",
    "GIT": "generic",
    "Linux": "generic",
}
"""OSV ecosystem (before any ``:release`` suffix) -> purl type."""

DISTRO_NAMESPACE = {
    "Debian": "debian",
    "Ubuntu": "ubuntu",
    "Alpine": "alpine",
    "Rocky Linux": "rocky",
    "AlmaLinux": "almalinux",
    "Red Hat": "redhat",
    "openSUSE": "opensuse",
    "SUSE": "suse",
    "Arch Linux": "arch",
}
"""Distribution ecosystems: their packages' purls carry the distribution as namespace
(``pkg:deb/debian/openssl``) where OSV names the bare package (``openssl``)."""

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Range:
    """One OSV range: its type and its events in order (kind, value)."""

    type: str
    events: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Affected:
    """One affected package of an advisory."""

    purl_type: str
    name: str
    """Package name as purls spell it (``namespace/name`` when there is a namespace)."""
    ranges: tuple[Range, ...] = ()
    versions: frozenset[str] = frozenset()

    @property
    def fixed(self) -> list[str]:
        """Every ``fixed`` version the ranges name."""
        return [v for r in self.ranges for kind, v in r.events if kind == "fixed"]


@dataclass(frozen=True)
class Advisory:
    """One parsed OSV advisory."""

    id: str
    aliases: tuple[str, ...]
    summary: str
    modified: str
    severity: str
    score: float | None
    vector: str | None
    affected: tuple[Affected, ...]
    withdrawn: bool = False
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def package_key(purl_type: str, namespace: str | None, name: str) -> tuple[str, str]:
    """The key components and advisories meet on: (purl type, lower-case full name)."""
    full = f"{namespace}/{name}" if namespace else name
    if purl_type in ("pypi",):
        full = full.replace("_", "-").replace(".", "-")
    return purl_type, full.lower()


@functools.lru_cache(maxsize=65536)
def purl_key(purl: str) -> tuple[str, str, str | None] | None:
    """(purl type, name key, version) of a purl, or None when it is not one."""
    try:
        p = PackageURL.from_string(purl)
    except ValueError:
        return None
    ptype, name = package_key(p.type, p.namespace, p.name)
    return ptype, name, p.version


def severity_of(doc: dict[str, Any]) -> tuple[str, float | None, str | None]:
    """(label, base score, vector) from the highest CVSS vector of the advisory (v4, v3,
    v2), else from ``database_specific.severity``, else ``"none"``."""
    from cvss import CVSS2, CVSS3, CVSS4
    from cvss.exceptions import CVSSError

    best: tuple[float, str] | None = None
    entries = list(doc.get("severity") or [])
    for aff in doc.get("affected") or []:
        entries += (aff or {}).get("severity") or []
    for entry in entries:
        vector, kind = str(entry.get("score", "")), str(entry.get("type", ""))
        try:
            if kind == "CVSS_V4":
                score = float(CVSS4(vector).base_score)
            elif kind == "CVSS_V3":
                score = float(CVSS3(vector).scores()[0])
            elif kind == "CVSS_V2":
                score = float(CVSS2(vector).scores()[0])
            else:
                continue
        except (CVSSError, ValueError, KeyError, IndexError):
            continue
        if best is None or score > best[0]:
            best = (score, vector)
    if best is not None:
        return _label(best[0]), best[0], best[1]
    label = str((doc.get("database_specific") or {}).get("severity", "")).lower()
    label = "medium" if label == "moderate" else label
    return (label if label in SEVERITIES else "none"), None, None


def _label(score: float) -> str:
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    return "low" if score > 0 else "none"


def parse_advisory(doc: Any, where: str = "advisory", *, rate: bool = True) -> Advisory:
    """Validate one OSV document (``rate=False`` skips the CVSS scoring, for documents
    already stored with their severity).

    Raises:
        InvalidInputError: ``invalid_advisory`` naming the document and the rule.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc["id"]:
        raise InvalidInputError("invalid_advisory", f"{where}: an OSV document needs an `id`")
    if not isinstance(doc.get("modified"), str):
        raise InvalidInputError("invalid_advisory", f"{where}: `modified` is missing")
    affected: list[Affected] = []
    for index, aff in enumerate(doc.get("affected") or []):
        try:
            affected.append(_affected(aff))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InvalidInputError(
                "invalid_advisory", f"{where}: affected[{index}]: {exc}"
            ) from None
    aliases = doc.get("aliases") or []
    if not isinstance(aliases, list):
        raise InvalidInputError("invalid_advisory", f"{where}: `aliases` must be a list")
    label, score, vector = severity_of(doc) if rate else ("none", None, None)
    return Advisory(
        id=doc["id"],
        aliases=tuple(str(a) for a in aliases),
        summary=str(doc.get("summary") or doc.get("details") or "")[:500],
        modified=doc["modified"],
        severity=label,
        score=score,
        vector=vector,
        affected=tuple(affected),
        withdrawn=bool(doc.get("withdrawn")),
        document=doc,
    )


def _affected(aff: dict[str, Any]) -> Affected:
    pkg = aff.get("package") or {}
    if pkg.get("purl"):
        key = purl_key(pkg["purl"])
        if key is None:
            raise ValueError(f"purl {pkg['purl']!r} is invalid")
        ptype, name, _ = key
    else:
        ecosystem = str(pkg["ecosystem"]).split(":", 1)[0]
        ptype = ECOSYSTEM_TO_PURL.get(ecosystem, "generic")
        raw = str(pkg["name"])
        namespace, _, last = raw.rpartition("/") if ptype not in ("golang",) else ("", "", raw)
        if ptype == "maven" and ":" in raw:
            namespace, _, last = raw.partition(":")
        if ecosystem in DISTRO_NAMESPACE:
            namespace, last = DISTRO_NAMESPACE[ecosystem], raw
        ptype, name = package_key(ptype, namespace or None, last)
    ranges = []
    for r in aff.get("ranges") or []:
        events = []
        for event in r.get("events") or []:
            ((kind, value),) = event.items()
            if kind not in ("introduced", "fixed", "last_affected", "limit"):
                raise ValueError(f"unknown range event {kind!r}")
            events.append((kind, str(value)))
        ranges.append(Range(str(r.get("type", "ECOSYSTEM")), tuple(events)))
    versions = frozenset(str(v) for v in aff.get("versions") or [])
    return Affected(ptype, name, tuple(ranges), versions)


def version_class(purl_type: str) -> Any:
    """The ``univers`` version class that orders versions of ``purl_type``."""
    from univers.version_range import RANGE_CLASS_BY_SCHEMES

    scheme = RANGE_CLASS_BY_SCHEMES.get(purl_type) or RANGE_CLASS_BY_SCHEMES["generic"]
    return scheme.version_class


@functools.lru_cache(maxsize=65536)
def _version(vclass: Any, raw: str) -> Any:
    """``raw`` as a ``vclass`` version (a Go-style leading ``v`` is dropped for SemVer);
    cached: a fleet's releases repeat the same versions over and over."""
    return vclass(raw.removeprefix("v") if vclass.__name__ == "SemverVersion" else raw)


def is_affected(affected: Affected, version: str) -> bool | None:
    """Whether ``version`` of this package is affected; None when no range resolves it
    (a GIT-only range without an explicit version list, or an unparsable version)."""
    if version in affected.versions:
        return True
    vclass = version_class(affected.purl_type)
    try:
        parsed = _version(vclass, version)
    except Exception:
        return None
    answers = []
    for r in affected.ranges:
        if r.type == "GIT":
            continue  # commits: only the explicit versions list resolves them
        answers.append(_walk(parsed, r.events, vclass))
    if any(a is True for a in answers):
        return True
    if answers and all(a is False for a in answers):
        return False
    if not affected.ranges and affected.versions:
        return False
    return None if not answers or any(a is None for a in answers) else False


def _walk(version: Any, events: tuple[tuple[str, str], ...], vclass: Any) -> bool | None:
    """Evaluate events as OSV prescribes: sorted by version, affected from an
    ``introduced`` up to a ``fixed`` / ``limit`` (exclusive) or ``last_affected``
    (inclusive)."""
    parsed: list[tuple[Any, int, str]] = []
    for kind, raw in events:
        if raw == "0" and kind == "introduced":
            parsed.append((None, 0, kind))
            continue
        try:
            value = _version(vclass, raw)
        except Exception:
            return None
        parsed.append((value, 1, kind))
    affected = False
    for value, _, kind in sorted(parsed, key=_sort_key):
        if value is not None and version < value:
            break
        if kind == "introduced":
            affected = True
        elif kind in ("fixed", "limit"):
            affected = False
        elif kind == "last_affected":
            affected = version == value
    return affected


def _sort_key(item: tuple[Any, int, str]) -> Any:
    value, rank, _kind = item
    return functools.cmp_to_key(_cmp)((rank, value))


def _cmp(a: tuple[int, Any], b: tuple[int, Any]) -> int:
    if a[0] != b[0]:
        return a[0] - b[0]
    if a[1] is None or b[1] is None:
        return 0
    return -1 if a[1] < b[1] else (1 if a[1] > b[1] else 0)


def earliest_fix(affected: Affected, version: str) -> str | None:
    """The lowest ``fixed`` version above ``version`` the advisory names, if any."""
    vclass = version_class(affected.purl_type)
    try:
        current = _version(vclass, version)
    except Exception:
        return None
    above = []
    for raw in affected.fixed:
        try:
            value = _version(vclass, raw)
        except Exception:
            continue
        if value > current:
            above.append((value, raw))
    return min(above, key=lambda p: p[0])[1] if above else None


def iter_documents(name: str, data: bytes) -> Iterator[tuple[str, Any]]:
    """(file name, decoded JSON) of each OSV document in a ``.zip`` or one ``.json``;
    a file that is not JSON yields (name, InvalidInputError)."""
    if name.endswith(".zip") or data[:4] == b"PK\x03\x04":
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise InvalidInputError("invalid_advisory", f"{name}: not a zip: {exc}") from None
        for info in archive.infolist():
            if info.is_dir() or not info.filename.endswith(".json"):
                continue
            if info.file_size > MAX_DOCUMENT_BYTES:
                yield info.filename, InvalidInputError("too_large", f"{info.filename}: too large")
                continue
            yield from _decode(info.filename, archive.read(info))
        return
    yield from _decode(name, data)


def _decode(name: str, data: bytes) -> Iterator[tuple[str, Any]]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        yield name, InvalidInputError("invalid_advisory", f"{name}: not JSON: {exc}")
        return
    for index, item in enumerate(doc if isinstance(doc, list) else [doc]):
        yield (f"{name}[{index}]" if isinstance(doc, list) else name), item

"""Match advisories to components, and the offline SBOM check built on it.

``match`` indexes the advisories by package key (purl type + name) and tests each
component's version against the affected ranges (:mod:`fleet_server.domain.osv`); VEX
statements then suppress or annotate each match (:mod:`fleet_server.domain.vex`).
``check_report`` is what ``fleetctl sbom check`` prints. Pure: no database, no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fleet_server.domain.licence_policy import Evaluation
from fleet_server.domain.osv import SEVERITIES, Advisory, earliest_fix, is_affected, purl_key
from fleet_server.domain.vex import SUPPRESSING, VexStatement, statement_for


@dataclass(frozen=True)
class Match:
    """An advisory that affects a component (``status`` from VEX, else ``affected``)."""

    advisory: Advisory
    component_index: int
    purl: str
    version: str
    fixed_in: str | None
    status: str = "affected"
    justification: str | None = None

    @property
    def suppressed(self) -> bool:
        """VEX says ``not_affected`` or ``fixed``."""
        return self.status in SUPPRESSING


def index_advisories(advisories: Iterable[Advisory]) -> dict[tuple[str, str], list[Any]]:
    """(purl type, name) -> [(advisory, affected entry)] for fast candidate lookup."""
    index: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for adv in advisories:
        if adv.withdrawn:
            continue
        for aff in adv.affected:
            index[(aff.purl_type, aff.name)].append((adv, aff))
    return index


def match_component(
    candidates: Sequence[Any], purl: str | None, vex: Sequence[VexStatement] = ()
) -> list[Match]:
    """The matches of one component against its candidate (advisory, affected entry)
    pairs; a component without a purl version cannot be matched (advisories name
    packages, not file names)."""
    key = purl_key(purl) if purl else None
    if key is None or not key[2]:
        return []
    version = key[2]
    out = []
    for adv, aff in candidates:
        if (aff.purl_type, aff.name) != key[:2] or is_affected(aff, version) is not True:
            continue
        st = statement_for(list(vex), {adv.id, *adv.aliases}, purl)
        out.append(
            Match(
                adv,
                0,
                str(purl),
                version,
                earliest_fix(aff, version),
                st.status if st else "affected",
                st.justification if st else None,
            )
        )
    return out


def match(
    purls: Sequence[str | None],
    index: dict[tuple[str, str], list[Any]],
    vex: Sequence[VexStatement] = (),
) -> list[Match]:
    """Every (advisory, component) pair where the component's purl version is affected;
    ``purls[i]`` is component i's purl."""
    out: list[Match] = []
    for i, purl in enumerate(purls):
        key = purl_key(purl) if purl else None
        if key is None:
            continue
        for m in match_component(index.get(key[:2], ()), purl, vex):
            out.append(replace(m, component_index=i))
    return out


def at_or_above(severity: str, threshold: str) -> bool:
    """True when ``severity`` is at least ``threshold`` in :data:`SEVERITIES` order."""
    return SEVERITIES.index(severity) >= SEVERITIES.index(threshold)


def check_report(
    components: int,
    matches: list[Match],
    evaluation: Evaluation,
    fail_on: str | None,
) -> tuple[dict[str, Any], bool]:
    """The ``fleetctl sbom check`` report and whether it fails the build: a denied
    licence, or an unsuppressed advisory at or above ``fail_on``."""
    vulns = [
        {
            "id": m.advisory.id,
            "aliases": list(m.advisory.aliases),
            "purl": m.purl,
            "severity": m.advisory.severity,
            "fixed_in": m.fixed_in,
            "status": m.status,
        }
        for m in matches
        if not m.suppressed
    ]
    suppressed = [
        {
            "id": m.advisory.id,
            "purl": m.purl,
            "status": m.status,
            "justification": m.justification,
        }
        for m in matches
        if m.suppressed
    ]
    violations = evaluation.violations()
    failing = [v for v in vulns if fail_on and at_or_above(v["severity"], fail_on)]
    report = {
        "components": components,
        "vulnerabilities": vulns,
        "suppressed": suppressed,
        "licences": evaluation.licence_counts(),
        "violations": violations,
        "needs_review": [{"purl": c.purl, "licence": c.licence} for c in evaluation.needs_review],
        "failed": bool(violations or failing),
    }
    return report, bool(violations or failing)

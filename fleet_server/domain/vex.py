"""VEX statements (CycloneDX VEX or OpenVEX): a vendor's word on whether a vulnerability
affects its product, and how they suppress or annotate advisory matches.

``not_affected`` (with a justification) and ``fixed`` suppress a match;
``under_investigation`` and ``affected`` annotate it. A statement with no product applies
to every component of the bundle it is attached to. Pure: no database, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fleet_server.domain.osv import purl_key
from fleet_server.errors import InvalidInputError

STATUSES = ("not_affected", "affected", "fixed", "under_investigation")
SUPPRESSING = ("not_affected", "fixed")
_CDX_STATE = {
    "not_affected": "not_affected",
    "false_positive": "not_affected",
    "resolved": "fixed",
    "resolved_with_pedigree": "fixed",
    "exploitable": "affected",
    "in_triage": "under_investigation",
}


@dataclass(frozen=True)
class VexStatement:
    """One statement: vulnerability id, product purl (None: the whole bundle), status."""

    vulnerability: str
    purl: str | None
    status: str
    justification: str | None = None
    detail: str | None = None

    def covers(self, ids: set[str], purl: str | None) -> bool:
        """True when it speaks of one of ``ids`` for this component (purls compared
        without version when the statement names none)."""
        if self.vulnerability not in ids:
            return False
        if self.purl is None:
            return True
        if purl is None:
            return False
        mine, theirs = purl_key(self.purl), purl_key(purl)
        if mine is None or theirs is None:
            return False
        return mine[:2] == theirs[:2] and (mine[2] is None or mine[2] == theirs[2])


def parse_vex(data: bytes, where: str = "vex") -> list[VexStatement]:
    """Parse a CycloneDX VEX (``vulnerabilities[].analysis``) or an OpenVEX document.

    Raises:
        InvalidInputError: ``invalid_vex`` naming the rule broken.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError("invalid_vex", f"{where}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInputError("invalid_vex", f"{where}: must be a JSON object")
    if "statements" in doc and str(doc.get("@context", "")).startswith("https://openvex"):
        return _openvex(doc, where)
    if doc.get("bomFormat") == "CycloneDX":
        return _cyclonedx(doc, where)
    raise InvalidInputError("invalid_vex", f"{where}: neither OpenVEX nor CycloneDX VEX")


def _openvex(doc: dict[str, Any], where: str) -> list[VexStatement]:
    out = []
    for index, st in enumerate(doc.get("statements") or []):
        vuln = st.get("vulnerability")
        name = vuln.get("name") if isinstance(vuln, dict) else vuln
        status = st.get("status")
        if not name or status not in STATUSES:
            raise InvalidInputError(
                "invalid_vex", f"{where}: statements[{index}] needs a vulnerability and a status"
            )
        if status == "not_affected" and not (st.get("justification") or st.get("impact_statement")):
            raise InvalidInputError(
                "invalid_vex", f"{where}: statements[{index}]: not_affected needs a justification"
            )
        products = [(p.get("@id") if isinstance(p, dict) else p) for p in st.get("products") or []]
        justification = st.get("justification") or st.get("impact_statement")
        for product in [p for p in products if str(p).startswith("pkg:")] or [None]:
            out.append(
                VexStatement(str(name), product, status, justification, st.get("status_notes"))
            )
    return out


def _cyclonedx(doc: dict[str, Any], where: str) -> list[VexStatement]:
    refs = {
        c.get("bom-ref"): c.get("purl")
        for c in doc.get("components") or []
        if isinstance(c, dict) and c.get("bom-ref")
    }
    out = []
    for index, vuln in enumerate(doc.get("vulnerabilities") or []):
        analysis = vuln.get("analysis") or {}
        state = _CDX_STATE.get(str(analysis.get("state")))
        if not vuln.get("id") or state is None:
            raise InvalidInputError(
                "invalid_vex",
                f"{where}: vulnerabilities[{index}] needs an id and an analysis.state",
            )
        justification = analysis.get("justification")
        if state == "not_affected" and not justification:
            raise InvalidInputError(
                "invalid_vex",
                f"{where}: vulnerabilities[{index}]: not_affected needs a justification",
            )
        affects = [a.get("ref") for a in vuln.get("affects") or [] if isinstance(a, dict)]
        purls = [refs.get(r, r) for r in affects]
        for purl in [p for p in purls if p and str(p).startswith("pkg:")] or [None]:
            out.append(
                VexStatement(str(vuln["id"]), purl, state, justification, analysis.get("detail"))
            )
    return out


def statement_for(
    statements: list[VexStatement], ids: set[str], purl: str | None
) -> VexStatement | None:
    """The statement that speaks of this match; a suppressing one wins, then the last."""
    found = [s for s in statements if s.covers(ids, purl)]
    suppressing = [s for s in found if s.status in SUPPRESSING]
    return (suppressing or found or [None])[-1]

"""Licence policy: which SPDX licences a product may ship, and what each obliges.

A policy (one per model) sorts licence ids into ``allowed``, ``denied`` and
``needs_review``; an id in none of them gets the policy's ``default``. A component's
licence expression is evaluated on the tree ``license-expression`` parses: ``A OR B`` is
as good as its best alternative (``GPL-2.0-only OR MIT`` is satisfied by MIT), ``A AND B``
as bad as its worst part, ``A WITH exception`` as its licence. A component without a
licence is ``needs_review``. Pure: no database, no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from firmware_bundles.licences import LicenceError, licensing, parse_expression
from fleet_server.domain.lifecycles import StateMachine
from fleet_server.errors import InvalidInputError

ALLOWED, NEEDS_REVIEW, DENIED = "allowed", "needs_review", "denied"
_RANK = {ALLOWED: 0, NEEDS_REVIEW: 1, DENIED: 2}

COPYLEFT_PREFIXES = ("GPL-", "LGPL-", "AGPL-", "MPL-", "EPL-", "EUPL-", "CDDL-", "OSL-")
"""Licence families whose distribution obliges a source offer."""
ANTI_TIVOISATION = ("GPL-3.0", "AGPL-3.0", "LGPL-3.0")
"""Licences that forbid locking users out of installing modified versions."""


@dataclass(frozen=True)
class Policy:
    """One model's licence policy (ids in SPDX spelling)."""

    allowed: frozenset[str] = frozenset()
    denied: frozenset[str] = frozenset()
    needs_review: frozenset[str] = frozenset()
    default: str = NEEDS_REVIEW
    locked_device: bool = False
    """The device refuses software not signed by us: GPL-3.0 then forbids shipping."""

    def verdict_of(self, licence_id: str) -> str:
        """The verdict on one licence id (case-insensitive)."""
        key = licence_id.lower()
        for verdict, ids in ((DENIED, self.denied), (NEEDS_REVIEW, self.needs_review)):
            if key in {i.lower() for i in ids}:
                return verdict
        if key in {i.lower() for i in self.allowed}:
            return ALLOWED
        return self.default


DEFAULT_POLICY = Policy()
"""The policy of a model that has none: every licence needs review."""


def parse_policy(doc: Mapping[str, Any]) -> Policy:
    """Validate a policy document ``{"allowed": [...], "denied": [...],
    "needs_review": [...], "default": "needs_review", "locked_device": false}``.

    Raises:
        InvalidInputError: ``invalid_policy`` naming the field (unknown licence ids too).
    """
    known = {"allowed", "denied", "needs_review", "default", "locked_device"}
    extra = sorted(set(doc) - known)
    if extra:
        raise InvalidInputError("invalid_policy", f"unknown policy field {extra[0]!r}")
    lists: dict[str, frozenset[str]] = {}
    for name in ("allowed", "denied", "needs_review"):
        raw = doc.get(name, [])
        if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
            raise InvalidInputError("invalid_policy", f"{name} must be a list of SPDX ids")
        ids = []
        for item in raw:
            try:
                ids.append(str(parse_expression(item)))
            except LicenceError as exc:
                raise InvalidInputError("invalid_policy", f"{name}: {exc}") from None
        lists[name] = frozenset(ids)
    clash = (lists["allowed"] & lists["denied"]) | (lists["allowed"] & lists["needs_review"])
    if clash:
        raise InvalidInputError("invalid_policy", f"{sorted(clash)[0]} is in two lists")
    default = doc.get("default", NEEDS_REVIEW)
    if default not in _RANK:
        raise InvalidInputError("invalid_policy", f"default must be one of {sorted(_RANK)}")
    locked = doc.get("locked_device", False)
    if not isinstance(locked, bool):
        raise InvalidInputError("invalid_policy", "locked_device must be true or false")
    return Policy(lists["allowed"], lists["denied"], lists["needs_review"], str(default), locked)


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """A policy as its JSON document (lists sorted)."""
    return {
        "allowed": sorted(policy.allowed),
        "denied": sorted(policy.denied),
        "needs_review": sorted(policy.needs_review),
        "default": policy.default,
        "locked_device": policy.locked_device,
    }


def _evaluate_node(node: Any, policy: Policy) -> tuple[str, list[str]]:
    """(verdict, the licence ids that decided it) for one node of the parsed tree."""
    lic = licensing()
    if isinstance(node, lic.OR | lic.AND):
        results = [_evaluate_node(arg, policy) for arg in node.args]
        pick = min if isinstance(node, lic.OR) else max
        verdict = pick((r[0] for r in results), key=_RANK.__getitem__)
        if isinstance(node, lic.OR):
            chosen = next(r for r in results if r[0] == verdict)
            return verdict, chosen[1]
        return verdict, [i for r in results for i in r[1]]
    symbol = getattr(node, "license_symbol", node)  # LicenseWithExceptionSymbol -> licence
    verdict = policy.verdict_of(symbol.key)
    if policy.locked_device and symbol.key.startswith(ANTI_TIVOISATION):
        verdict = DENIED
    return verdict, [symbol.key]


def evaluate_expression(expression: str | None, policy: Policy) -> tuple[str, list[str]]:
    """Evaluate one licence expression against ``policy``: (verdict, the licence ids that
    carry it: the satisfying alternative of an OR, every part of an AND).

    An absent licence needs review; an invalid one is denied.
    """
    if not expression:
        return NEEDS_REVIEW, []
    try:
        tree = parse_expression(expression)
    except LicenceError:
        return DENIED, []
    return _evaluate_node(tree, policy)


def obligations(licence_ids: Iterable[str], locked_device: bool = False) -> list[str]:
    """What shipping these licences obliges: ``attribution`` (always), ``source_offer``
    (copyleft) and ``no_tivoisation`` (GPL-3.0 family, on a locked device)."""
    ids = list(licence_ids)
    out = ["attribution"] if ids else []
    if any(i.startswith(COPYLEFT_PREFIXES) for i in ids):
        out.append("source_offer")
    if any(i.startswith(ANTI_TIVOISATION) for i in ids):
        out.append("no_tivoisation" + ("_violated" if locked_device else ""))
    return out


@dataclass
class ComponentVerdict:
    """The policy's word on one component."""

    name: str
    version: str
    purl: str | None
    licence: str | None
    verdict: str
    licences: list[str]
    obligations: list[str]
    waived: str | None = None
    """The waiver's reason when an admin waived a denied component."""


@dataclass
class Evaluation:
    """A bundle's (or an SBOM's) licence evaluation."""

    components: list[ComponentVerdict] = field(default_factory=list)

    @property
    def denied(self) -> list[ComponentVerdict]:
        """Denied components no waiver covers: they refuse the bundle."""
        return [c for c in self.components if c.verdict == DENIED and c.waived is None]

    @property
    def needs_review(self) -> list[ComponentVerdict]:
        """Components a person must review before production."""
        return [c for c in self.components if c.verdict == NEEDS_REVIEW]

    def licence_counts(self) -> dict[str, int]:
        """``{"<SPDX id>": components}`` over every id any component names."""
        counts: Counter[str] = Counter()
        for comp in self.components:
            ids = _all_ids(comp.licence)
            counts.update(ids or ["NOASSERTION"])
        return dict(sorted(counts.items()))

    def violations(self) -> list[dict[str, Any]]:
        """``{"purl", "licence", "rule"}`` for each unwaived denied component."""
        return [
            {"purl": c.purl or f"{c.name}@{c.version}", "licence": c.licence, "rule": "denied"}
            for c in self.denied
        ]


def _all_ids(expression: str | None) -> list[str]:
    if not expression:
        return []
    try:
        tree = parse_expression(expression)
    except LicenceError:
        return [expression]
    symbols = licensing().license_symbols(tree, unique=True, decompose=False)
    return [getattr(s, "license_symbol", s).key for s in symbols]


def component_key(name: str, version: str) -> str:
    """How a waiver names a component: ``name@version``."""
    return f"{name}@{version}"


def evaluate(
    components: Iterable[Any], policy: Policy, waivers: Mapping[str, str] | None = None
) -> Evaluation:
    """Evaluate every component (anything with ``name``, ``version``, ``purl``,
    ``licence``); ``waivers`` maps ``name@version`` (or a purl) to the waiver's reason."""
    waivers = waivers or {}
    out = Evaluation()
    for comp in components:
        verdict, ids = evaluate_expression(comp.licence, policy)
        reason = waivers.get(component_key(comp.name, comp.version)) or (
            waivers.get(comp.purl) if comp.purl else None
        )
        out.components.append(
            ComponentVerdict(
                comp.name,
                comp.version,
                comp.purl,
                comp.licence,
                verdict,
                ids,
                obligations(ids, policy.locked_device),
                reason if verdict == DENIED else None,
            )
        )
    return out


# --- a bundle's licence review ----------------------------------------------------------


class ReviewState(StrEnum):
    """States of a bundle's licence review."""

    NO_POLICY = "no_policy"
    NOT_REQUIRED = "not_required"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class ReviewEvent(StrEnum):
    """What moves a review."""

    APPROVE = "approve"
    REJECT = "reject"


REVIEW = StateMachine(
    "licence review",
    ReviewState,
    ReviewEvent,
    ReviewState.PENDING,
    {
        (ReviewState.PENDING, ReviewEvent.APPROVE): ReviewState.APPROVED,
        (ReviewState.PENDING, ReviewEvent.REJECT): ReviewState.REJECTED,
        (ReviewState.REJECTED, ReviewEvent.APPROVE): ReviewState.APPROVED,
        (ReviewState.APPROVED, ReviewEvent.REJECT): ReviewState.REJECTED,
    },
)

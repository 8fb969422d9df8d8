"""SPDX licence expressions, parsed and checked by ``license-expression``.

The bundle build and the server's publish path check every component's licence here:
syntax (``MIT OR`` is incomplete) and ids (each must be on the SPDX licence list, or a
``LicenseRef-`` of the document's own). Policies evaluate the parsed tree
(:mod:`fleet_server.domain.licence_policy`), never the text.

The agent does not import this module: a device does not judge licences.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from license_expression import ExpressionError, Licensing, get_spdx_licensing

NOASSERTION = ("NOASSERTION", "NONE")
"""SPDX words for "no licence information"; a component with them has no licence."""

_LICENSE_REF = re.compile(r"^(?:DocumentRef-[A-Za-z0-9.-]+:)?LicenseRef-[A-Za-z0-9.-]+$")


class LicenceError(ValueError):
    """A licence expression is malformed or names an unknown licence id."""


@cache
def licensing() -> Licensing:
    """The SPDX licensing (licence list and exceptions) of ``license-expression``."""
    return get_spdx_licensing()


def parse_expression(text: str) -> Any:
    """Parse and validate ``text`` as an SPDX licence expression; returns the tree.

    ``LicenseRef-...`` ids (a document's own licences) are accepted; every other id must be
    on the SPDX list, case-insensitively, and is returned in its SPDX spelling.

    Raises:
        LicenceError: empty, malformed, or an unknown licence id.
    """
    if not text or not text.strip():
        raise LicenceError("licence is empty; use an SPDX id such as MIT or Apache-2.0")
    if len(text) > 1000:
        raise LicenceError("licence expression is longer than 1000 characters")
    lic = licensing()
    try:
        expr = lic.parse(text, validate=False, strict=True)
    except ExpressionError as exc:
        raise LicenceError(f"licence {text!r}: {exc}") from None
    if expr is None:
        raise LicenceError("licence is empty; use an SPDX id such as MIT or Apache-2.0")
    unknown = [k for k in lic.unknown_license_keys(expr) if not _LICENSE_REF.match(k)]
    if unknown:
        raise LicenceError(f"licence {text!r}: {', '.join(unknown)} is not an SPDX licence id")
    return expr


def check_expression(text: str) -> str:
    """Validate ``text`` and return its normalised SPDX form (``mit or apache-2.0`` ->
    ``MIT OR Apache-2.0``).

    Raises:
        LicenceError: see :func:`parse_expression`.
    """
    return str(parse_expression(text))


def licence_ids(text: str) -> list[str]:
    """The licence ids an expression names, in order, without duplicates."""
    return list(dict.fromkeys(licensing().license_keys(parse_expression(text))))

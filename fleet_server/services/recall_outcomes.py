"""Bulk recall outcomes from a field-service CSV (``POST /recalls/{id}/outcomes``,
``fleetctl recall outcomes import ID FILE``).

Columns: ``device_id`` (or ``serial``), ``state`` (``remedied``, ``not_needed``,
``unreachable``, ...), optional ``note`` and ``via`` (how it was remedied). Every row is
checked and applied in one transaction: when any row is wrong nothing is applied and the
error lists each bad row with its line number and column, so the field-service team fixes
the file and sends it again.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import Device
from fleet_server.errors import FleetError, InvalidInputError
from fleet_server.services import recalls
from fleet_server.services.audit import Actor

MAX_ROWS = 50_000


def _row_errors(line: int, row: dict[str, str]) -> list[dict[str, Any]]:
    errors = []
    if not (row.get("device_id") or row.get("serial")):
        errors.append({"line": line, "column": "device_id", "message": "device_id or serial"})
    if not row.get("state"):
        errors.append({"line": line, "column": "state", "message": "state is empty"})
    return errors


def import_outcomes(
    session: Session,
    actor: Actor,
    campaign_id: str,
    text: str,
    *,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Apply a field-service CSV of member outcomes, all rows or none (committed).

    Raises:
        InvalidInputError: ``invalid_outcomes`` with ``details.errors`` (line, column,
            message) for every bad row; nothing was applied.
    """
    campaign = recalls.get_campaign(session, campaign_id)
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = {c.strip() for c in reader.fieldnames or ()}
    if "state" not in columns or not columns & {"device_id", "serial"}:
        raise InvalidInputError(
            "invalid_outcomes",
            "the CSV needs a header with device_id (or serial) and state columns",
            details={"errors": [{"line": 1, "column": "header", "message": "missing columns"}]},
        )
    errors: list[dict[str, Any]] = []
    applied: dict[str, int] = {}
    for n, raw in enumerate(reader):
        line = reader.line_num
        if n >= MAX_ROWS:
            errors.append({"line": line, "column": "", "message": f"more than {MAX_ROWS} rows"})
            break
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        problems = _row_errors(line, row)
        if problems:
            errors.extend(problems)
            continue
        device_id = row.get("device_id") or ""
        if not device_id:
            found = session.execute(
                select(Device.device_id).where(Device.serial == row["serial"])
            ).scalar_one_or_none()
            if found is None:
                errors.append(
                    {"line": line, "column": "serial", "message": f"no device {row['serial']!r}"}
                )
                continue
            device_id = found
        try:
            # a refused move raises before it changes anything: no savepoint needed
            recalls.set_device_state(
                session,
                actor,
                campaign,
                device_id,
                row["state"],
                now=now,
                note=row.get("note", ""),
                via=row.get("via") or None,
                request_id=request_id,
            )
        except FleetError as exc:
            column = (
                "state"
                if exc.code != "not_found"
                else ("device_id" if row.get("device_id") else "serial")
            )
            errors.append({"line": line, "column": column, "message": exc.message})
            continue
        applied[row["state"]] = applied.get(row["state"], 0) + 1
    if errors:
        session.rollback()
        first = errors[0]
        raise InvalidInputError(
            "invalid_outcomes",
            f"{len(errors)} bad row(s), nothing applied; first: line {first['line']}, "
            f"column {first['column']}: {first['message']}",
            details={"errors": errors},
        )
    session.commit()
    return {"campaign_id": campaign.id, "applied": sum(applied.values()), "by_state": applied}


__all__ = ["import_outcomes"]

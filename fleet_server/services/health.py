"""Liveness: does the database answer?"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session


def database_answers(session: Session) -> bool:
    """True when a trivial query succeeds (the ``/healthz`` check; never raises)."""
    try:
        session.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError):
        return False
    return True

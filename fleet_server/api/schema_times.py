"""The one time format of API answers: ISO 8601 UTC strings (``format: date-time``).

Services keep times as epoch seconds (floats: what the clock, the engine and the
database columns use). Response models declare those fields :data:`Timestamp`, and
pydantic turns the number into an aware UTC datetime, serialised as
``2026-12-02T11:05:30Z``; so every answer, typed registry view or not, speaks one format.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Timestamp = Annotated[datetime, Field(description="ISO 8601 UTC")]
"""A moment in an answer (the service may give epoch seconds; the answer is ISO 8601)."""


class OpenModel(BaseModel):
    """A response model that documents its known fields and passes further ones through
    (analytics reports and views grow fields; a client must ignore those it does not
    know)."""

    model_config = ConfigDict(extra="allow")

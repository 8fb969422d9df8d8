"""Tables of support: tickets, their event history, comments and links, the SLA state the
tick keeps per ticket and target, and the per-minute service measurements behind SLOs.

The event history (:class:`TicketEvent`) is the truth the SLA clock is computed from;
:class:`TicketSla` is a cache of the clock's last evaluation (what lists and the
"breaching within" query read, indexed by ``due_at``) and of what the tick has already
reported.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet_server.db.models import Base, BigId


class Ticket(Base):
    """One support ticket."""

    __tablename__ = "tickets"
    __table_args__ = (
        Index("ix_tickets_state_category", "state", "category"),
        Index("ix_tickets_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    requester: Mapped[str] = mapped_column(String(200))
    requester_kind: Mapped[str] = mapped_column(String(16))
    """``customer`` or ``internal``."""
    customer: Mapped[str | None] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(32))
    impact: Mapped[int] = mapped_column(Integer)
    urgency: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer)
    assignment_group: Mapped[str | None] = mapped_column(String(128))
    assignee: Mapped[str | None] = mapped_column(String(128))
    vendor: Mapped[str | None] = mapped_column(String(128))
    """The third party whose underpinning contract applies while pending on it."""
    state: Mapped[str] = mapped_column(String(24))
    source: Mapped[str] = mapped_column(String(16))
    """``api``, ``rule`` (opened by an alarm / claim rule), ``slo`` or ``import``."""
    policy: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[float] = mapped_column(Float)
    first_response_at: Mapped[float | None] = mapped_column(Float)
    resolved_at: Mapped[float | None] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float)
    made_sla: Mapped[bool | None] = mapped_column(Boolean)
    """Imported tickets: the source helpdesk's own SLA flag at the end of the log."""


class TicketEvent(Base):
    """One change of a ticket: who, when, what (``kind``) and its details."""

    __tablename__ = "ticket_events"
    __table_args__ = (Index("ix_ticket_events_ticket_at", "ticket_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    """``created``, ``state``, ``field``, ``comment``, ``response``, ``link``, ``unlink``,
    ``sla.warning``, ``sla.breach``."""
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class TicketComment(Base):
    """A comment: public (the requester sees it; an agent's is a response) or internal."""

    __tablename__ = "ticket_comments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    at: Mapped[float] = mapped_column(Float)
    author: Mapped[str] = mapped_column(String(128))
    author_kind: Mapped[str] = mapped_column(String(16))
    """``agent`` or ``requester``."""
    public: Mapped[bool] = mapped_column(Boolean)
    body: Mapped[str] = mapped_column(Text)


class TicketLink(Base):
    """A ticket points at a device, alarm, claim, RMA, recall or rollout (by its id)."""

    __tablename__ = "ticket_links"
    __table_args__ = (
        Index("ix_ticket_links_unique", "ticket_id", "kind", "ref", unique=True),
        Index("ix_ticket_links_target", "kind", "ref"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))


class TicketSla(Base):
    """The last evaluation of one target of one ticket, and what has been reported."""

    __tablename__ = "ticket_sla"
    __table_args__ = (
        Index("ix_ticket_sla_unique", "ticket_id", "target", unique=True),
        Index("ix_ticket_sla_due", "state", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(24))
    policy: Mapped[str] = mapped_column(String(64))
    cycle: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    target_s: Mapped[float] = mapped_column(Float)
    elapsed_s: Mapped[float] = mapped_column(Float)
    due_at: Mapped[float | None] = mapped_column(Float)
    breached: Mapped[bool] = mapped_column(Boolean)
    breached_at: Mapped[float | None] = mapped_column(Float)
    reported: Mapped[float] = mapped_column(Float)
    """Highest threshold (0.5, 0.75, 1.0) of ``cycle`` already turned into an event."""
    evaluated_at: Mapped[float] = mapped_column(Float)


class SloMinute(Base):
    """One minute of one component's service: good and total events, slow requests."""

    __tablename__ = "slo_minutes"
    __table_args__ = (Index("ix_slo_minutes_unique", "component", "minute", unique=True),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    component: Mapped[str] = mapped_column(String(32))
    minute: Mapped[int] = mapped_column(Integer)
    """Epoch seconds // 60."""
    good: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)

"""The rollout engine: ``tick(now)`` reconciles every active rollout with what devices did.

One tick: executions silent past their phase timeout fail first (silence is a failure);
then, for each running or rolled-back rollout, on its own (one broken rollout does not
stop the others):

1. **load** — :func:`fleet_server.rollouts.store.load_view` reads an immutable view;
2. **decide** — :func:`fleet_server.rollouts.decide.decide` answers typed actions, pure;
3. **apply** — :func:`fleet_server.rollouts.store.apply` writes them, committed in one
   transaction, so decisions stand even when sending fails;
4. **publish** — the install commands of the tick's ``Dispatch`` actions are sent; a
   device whose install cannot be sent is released (unless the broker is down: the next
   tick retries).

The scheduler calls :func:`tick` every few seconds under a lock so only one server instance
acts; tests call it directly with the time they choose.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from fleet_server.rollouts import store
from fleet_server.rollouts.actions import Dispatch
from fleet_server.rollouts.decide import decide
from fleet_server.services.commands import Publisher

log = logging.getLogger(__name__)


def tick(session: Session, publisher: Publisher, *, now: float) -> list[str]:
    """Advance every active rollout once; returns a line per decision taken (for logs).

    Commits as it goes (each rollout's decisions are committed before publishing)."""
    decisions: list[str] = store.expire_silent(session, now)
    session.commit()
    for rollout_id in store.active_rollout_ids(session):
        try:
            view = store.load_view(session, rollout_id, now)
            if view is None:
                continue
            actions = decide(view, view.policy, now)
            store.apply(session, view, actions, now)
            # Decisions first: a failing publish below must not undo them.
            session.commit()
            sent = store.publish(session, publisher, view, actions, now)
            session.commit()
        except Exception:
            # One broken rollout must not stop the others; it is retried next tick.
            session.rollback()
            log.exception("rollout %s: tick failed; retrying at the next tick", rollout_id)
            continue
        decisions += [
            f"{rollout_id}: {a.describe()}" for a in actions if not isinstance(a, Dispatch)
        ]
        if sent:
            decisions.append(f"{rollout_id}: sent {sent} install(s)")
    return decisions


# --- the scheduled job ----------------------------------------------------------------------

ADVISORY_LOCK_KEY = 0x45_44_47_45_52_4F  # "EDGERO"
"""PostgreSQL advisory lock held by the server instance that ticks."""


class RolloutTickJob:
    """The scheduler job (``fn(sessions, settings, now)``) that runs :func:`tick`.

    On PostgreSQL the tick runs only while this process holds a session-level advisory
    lock on a connection of its own, so of several server instances one acts per tick;
    SQLite has a single writer anyway.
    """

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def __call__(self, sessions: Any, settings: Any, now: float) -> list[str]:
        """One tick under the engine lock; returns the decisions taken (logged)."""
        del settings
        from sqlalchemy import text

        with sessions() as session:
            engine = session.get_bind()
            if engine.dialect.name != "postgresql":
                return tick(session, self.publisher, now=now)
            with engine.connect() as lock:
                key = {"key": ADVISORY_LOCK_KEY}
                if not lock.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
                    return []
                try:
                    return tick(session, self.publisher, now=now)
                finally:
                    lock.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                    lock.commit()

"""Replay several recorded columns through the agent's fault engine (``fleet-sim replay``).

:func:`table_engine` builds the engine a device would run for the replayed signals: every
built-in rule (from :func:`agent.core.rules.build_rules`), plus, by ``rule``, an adaptive
rule per signal (``adaptive``), one multivariate rule over all of them
(``multivariate``), or both (``all``). :func:`replay_table` feeds the rows in time order
and returns every raise and clear with the row that caused it, its score and, for a
multivariate raise, the signals that drove it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.core.adaptive import AdaptiveRule
from agent.core.faults import FaultEngine
from agent.core.multivariate import MultivariateRule
from agent.core.rules import build_rules
from simulator.replay import Alarm, Table, alarms_of, sample_with

RULE_CHOICES = ("adaptive", "multivariate", "all")


def default_rule(signals: Sequence[str]) -> str:
    """One column feeds the adaptive rule; several feed the multivariate rule."""
    return "adaptive" if len(signals) == 1 else "multivariate"


def table_engine(
    signals: Sequence[str], rule: str, faults: Mapping[str, Any] | None = None
) -> FaultEngine:
    """The agent's built-in rules plus the chosen rule(s) on ``signals``.

    Raises ``ValueError`` with a message for the user when the choice cannot work (the
    multivariate rule needs at least two signals).
    """
    if rule not in RULE_CHOICES:
        raise ValueError(f"--rule {rule!r} is not one of {', '.join(RULE_CHOICES)}")
    if rule == "multivariate" and len(signals) < 2:
        raise ValueError("--rule multivariate needs at least two --value-col columns")
    engine = FaultEngine(build_rules(dict(faults or {})))
    if rule in ("adaptive", "all"):
        for signal in signals:
            engine.add(AdaptiveRule(signal))
    if rule in ("multivariate", "all") and len(signals) >= 2:
        engine.add(MultivariateRule(signals))
    return engine


def replay_table(table: Table, engine: FaultEngine) -> list[Alarm]:
    """Feed every row of ``table`` to ``engine`` in order; return the raises and clears."""
    alarms: list[Alarm] = []
    for row in table.rows:
        sample = sample_with(row.ts, dict(zip(table.signals, row.values, strict=True)))
        alarms.extend(alarms_of(engine.update(sample), row.time_text, row.line))
    return alarms

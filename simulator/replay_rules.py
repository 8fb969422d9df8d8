"""Replay several recorded columns through the agent's fault engine (``fleet-sim replay``).

:func:`table_engine` builds the engine a device would run for the replayed signals: every
built-in rule (from :func:`agent.core.rules.build_rules`), plus, by ``rule``, an adaptive
rule per signal (``adaptive``), one multivariate rule over all of them
(``multivariate``), or both (``all``). :func:`replay_table` feeds the rows in time order
and returns every raise and clear with the row that caused it, its score and, for a
multivariate raise, the signals that drove it.

A technician replays with the rules a device runs: ``faults`` is the ``[faults]`` table of
an agent configuration (built-in overrides, ``[[faults.adaptive]]`` and
``[[faults.multivariate]]`` entries); the replay then adds its own adaptive rule only on a
signal that table does not already watch, and its own multivariate rule only when no
configured one covers every replayed signal. ``settings`` (``--set name=value``) tune the
rules the replay adds, routed by name to the rule that has such a parameter.
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.core.adaptive import AdaptiveRule
from agent.core.faults import FaultEngine
from agent.core.multivariate import MultivariateRule
from agent.core.rules import RuleConfigError, build_adaptive, build_multivariate, build_rules
from simulator.replay import Alarm, Table, alarms_of, sample_with

RULE_CHOICES = ("adaptive", "multivariate", "all")


def default_rule(signals: Sequence[str]) -> str:
    """One column feeds the adaptive rule; several feed the multivariate rule."""
    return "adaptive" if len(signals) == 1 else "multivariate"


def _parameters(rule: type) -> set[str]:
    return set(inspect.signature(rule).parameters) - {"signal", "signals"}


ADAPTIVE_SETTINGS = _parameters(AdaptiveRule)
MULTIVARIATE_SETTINGS = _parameters(MultivariateRule)


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``--set name=value`` items as a mapping; a value is read as a TOML value (``12``,
    ``0.5``, ``true``, ``"text"``), or taken as text when it is not one (``minor``).

    Raises ``ValueError`` naming the item when it has no ``=`` or names no parameter of
    either rule."""
    settings: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--set {item!r}: expected name=value")
        if name not in ADAPTIVE_SETTINGS | MULTIVARIATE_SETTINGS:
            adaptive = ", ".join(sorted(ADAPTIVE_SETTINGS))
            multivariate = ", ".join(sorted(MULTIVARIATE_SETTINGS))
            raise ValueError(
                f"--set {name}: not a setting of the adaptive rule ({adaptive}) "
                f"or of the multivariate rule ({multivariate})"
            )
        try:
            settings[name] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            settings[name] = text.strip()
    return settings


def read_faults(path: Path) -> dict[str, Any]:
    """The ``[faults]`` table of the agent configuration at ``path`` (empty if it has
    none). Raises ``ValueError`` with one line naming the file when it cannot be read."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    faults = data.get("faults", {})
    if not isinstance(faults, Mapping):
        raise ValueError(f"{path}: faults: expected a table ([faults.<rule>])")
    return dict(faults)


def table_engine(
    signals: Sequence[str],
    rule: str,
    faults: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> FaultEngine:
    """The agent's rules (built-ins, tuned and extended by ``faults``) plus the chosen
    rule(s) on ``signals`` where ``faults`` does not already have them, with ``settings``.

    Raises ``ValueError`` with a message for the user when the choice cannot work (the
    multivariate rule needs at least two signals, a setting is refused by the rule).
    """
    if rule not in RULE_CHOICES:
        raise ValueError(f"--rule {rule!r} is not one of {', '.join(RULE_CHOICES)}")
    if rule == "multivariate" and len(signals) < 2:
        raise ValueError("--rule multivariate needs at least two --value-col columns")
    settings = dict(settings or {})
    try:
        rules = build_rules(dict(faults or {}))
    except RuleConfigError as exc:
        raise ValueError(f"--config: {exc}") from None
    engine = FaultEngine(rules)
    watched = {r.signal for r in rules if isinstance(r, AdaptiveRule)}
    grouped = [set(r.signals) for r in rules if isinstance(r, MultivariateRule)]
    if rule in ("adaptive", "all"):
        own = {k: v for k, v in settings.items() if k in ADAPTIVE_SETTINGS}
        for signal in signals:
            if signal not in watched:
                engine.add(_built(build_adaptive, {"signal": signal, **own}, "adaptive"))
    covered = any(set(signals) <= group for group in grouped)
    if rule in ("multivariate", "all") and len(signals) >= 2 and not covered:
        own = {k: v for k, v in settings.items() if k in MULTIVARIATE_SETTINGS}
        entry = {"signals": list(signals), **own}
        engine.add(_built(build_multivariate, entry, "multivariate"))
    return engine


def _built(build: Any, entry: dict[str, Any], kind: str) -> Any:
    try:
        return build(entry, 0)
    except RuleConfigError as exc:
        # Not "faults.adaptive[0]: ...": the user wrote --set, not a configuration entry.
        text = str(exc).removeprefix(f"faults.{kind}[0]").lstrip(".:").strip()
        raise ValueError(f"--set ({kind} rule): {text}") from None


def replay_table(table: Table, engine: FaultEngine) -> list[Alarm]:
    """Feed every row of ``table`` to ``engine`` in order; return the raises and clears."""
    alarms: list[Alarm] = []
    for row in table.rows:
        sample = sample_with(row.ts, dict(zip(table.signals, row.values, strict=True)))
        alarms.extend(alarms_of(engine.update(sample), row.time_text, row.line))
    return alarms

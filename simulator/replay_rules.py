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
configured one watches exactly the replayed signals (an added rule whose default code a
configured rule has gets a ``_replay`` suffix). ``settings`` (``--set name=value``) tune the
rules the replay adds, routed by name to the rule that has such a parameter.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.adaptive import AdaptiveRule
from agent.core.faults import FaultEngine
from agent.core.multivariate import MultivariateRule
from agent.core.rules import (
    RuleConfigError,
    build_adaptive,
    build_multivariate,
    build_rules,
    settings_of,
)
from simulator.replay import Alarm, Table, alarms_of, sample_with

RULE_CHOICES = ("adaptive", "multivariate", "all")


def default_rule(signals: Sequence[str]) -> str:
    """One column feeds the adaptive rule; several feed the multivariate rule."""
    return "adaptive" if len(signals) == 1 else "multivariate"


ADAPTIVE_SETTINGS = settings_of(AdaptiveRule)
MULTIVARIATE_SETTINGS = settings_of(MultivariateRule)
KIND_SETTINGS = {"adaptive": ADAPTIVE_SETTINGS, "multivariate": MULTIVARIATE_SETTINGS}
SCALED_SETTINGS = {"raise_threshold", "clear_threshold"}
"""Shared names whose scales differ (robust SDs against T²): with both rules added, a bare
name is refused and ``adaptive.NAME`` / ``multivariate.NAME`` says which one is meant."""
TEXT_SETTINGS = {"code", "severity", "direction"}
"""Settings whose value is text: taken as written (``--set code=123`` is the code "123")."""


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``--set name=value`` items as a mapping; ``adaptive.NAME`` or ``multivariate.NAME``
    sets one rule's parameter only. ``code``, ``severity`` and ``direction`` take their
    value as written; every other value must be a TOML number or boolean (``12``, ``0.5``,
    ``true``).

    Raises ``ValueError`` naming the item when it has no ``=``, names no parameter of
    either rule (with the closest names), or its value is not a number or boolean."""
    settings: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise ValueError(f"--set {item!r}: expected name=value")
        kind, dot, bare = name.rpartition(".")
        if dot and kind not in KIND_SETTINGS:
            raise ValueError(f"--set {name}: {kind!r} is not a rule (adaptive or multivariate)")
        known = KIND_SETTINGS[kind] if dot else ADAPTIVE_SETTINGS | MULTIVARIATE_SETTINGS
        if bare not in known:
            close = difflib.get_close_matches(bare, sorted(known), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see --help"
            which = f"the {kind}" if dot else "the adaptive or the multivariate"
            raise ValueError(f"--set {name}: not a setting of {which} rule ({hint})")
        if bare in TEXT_SETTINGS:
            settings[name] = text
            continue
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = None
        # A quoted string, a list or a date reached the rule and failed there with
        # "'<=' not supported between instances of 'float' and 'str'".
        if not isinstance(value, int | float):  # bool is an int
            raise ValueError(f"--set {name}: {text!r} is not a value (a number, true or false)")
        settings[name] = value
    return settings


def read_faults(path: Path) -> dict[str, Any]:
    """The ``[faults]`` table of the agent configuration at ``path`` (empty if it has
    none). Raises ``ValueError`` with one line naming the file when it cannot be read.

    Not :func:`agent.config.load_config`: that checks the whole file, the device's
    certificate files included, which a technician's copy on a laptop lacks; the rules
    themselves are checked as the agent checks them, by ``build_rules``."""
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


@dataclass
class ReplayRules:
    """The engine a replay runs, and what to tell the user about its rules."""

    engine: FaultEngine
    notes: list[str] = field(default_factory=list)
    """One line each: which configured or added rules watch the replayed signals, and
    configured rules that watch a signal the recording lacks (they never score)."""


def table_engine(
    signals: Sequence[str],
    rule: str,
    faults: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> ReplayRules:
    """The agent's rules (built-ins, tuned and extended by ``faults``) plus the chosen
    rule(s) on ``signals`` where ``faults`` does not already have them, with ``settings``.

    A configured adaptive rule on a replayed signal replaces the replay's own on it; a
    configured multivariate rule over exactly the replayed signals replaces the replay's
    own. Raises ``ValueError`` with a message for the user when the choice cannot work:
    the multivariate rule needs at least two signals, a setting is refused by the rule,
    would reach no rule the replay adds, or ``code`` would name several rules.
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
    result = ReplayRules(FaultEngine(rules))
    configured = [r for r in rules if isinstance(r, AdaptiveRule | MultivariateRule)]
    for r in configured:
        watches = [r.signal] if isinstance(r, AdaptiveRule) else list(r.signals)
        missing = [s for s in watches if s not in signals]
        if missing:
            result.notes.append(
                f"configured rule {r.code} watches {', '.join(missing)}, which the recording "
                "lacks: it never scores here"
            )
        else:
            result.notes.append(f"configured rule {r.code} watches {', '.join(watches)}")
    watched = {r.signal for r in configured if isinstance(r, AdaptiveRule)}
    grouped = [set(r.signals) for r in configured if isinstance(r, MultivariateRule)]
    entries: list[tuple[str, dict[str, Any]]] = []
    if rule in ("adaptive", "all"):
        entries += [("adaptive", {"signal": s}) for s in signals if s not in watched]
    if rule in ("multivariate", "all") and len(signals) >= 2 and set(signals) not in grouped:
        entries.append(("multivariate", {"signals": list(signals)}))
    _check_settings(settings, [kind for kind, _ in entries], rule)
    taken = {r.code for r in rules}
    for kind, entry in entries:
        entry.update(_settings_for(kind, settings))
        if entry.get("code") in taken:
            raise ValueError(f"--set code: the configuration already has a rule {entry['code']}")
        build = build_adaptive if kind == "adaptive" else build_multivariate
        built = _built(build, entry, kind)
        if built.code in taken:
            # The default code is a configured rule's (a multivariate rule without a code
            # over other signals): the replay's own gets another instead of stopping.
            entry["code"] = _free_code(built.code, taken)
            built = _built(build, entry, kind)
        taken.add(built.code)
        result.engine.add(built)
        result.notes.append(f"added {kind} rule {built.code}")
    return result


def _free_code(code: str, taken: set[str]) -> str:
    """``code`` with a ``_replay`` suffix (and a number if need be) that no rule has."""
    candidate, n = f"{code}_replay", 1
    while candidate in taken:
        n += 1
        candidate = f"{code}_replay{n}"
    return candidate


def _takes(kind: str, name: str) -> bool:
    """Whether a rule of ``kind`` takes the ``--set`` key ``name`` (bare or prefixed)."""
    owner, dot, bare = name.rpartition(".")
    return (owner == kind) if dot else bare in KIND_SETTINGS[kind]


def _settings_for(kind: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a rule of ``kind`` takes; ``kind.NAME`` wins over a bare ``NAME``."""
    bare = {k: v for k, v in settings.items() if "." not in k and _takes(kind, k)}
    return bare | {k.partition(".")[2]: v for k, v in settings.items() if k.startswith(kind + ".")}


def _check_settings(settings: Mapping[str, Any], kinds: list[str], rule: str) -> None:
    """Refuse a ``--set`` that no added rule takes, a ``code`` for several rules, and a
    bare threshold when both kinds of rule are added (their scales differ)."""
    for name in settings:
        owner, _, bare = name.rpartition(".")
        takers = [k for k in kinds if _takes(k, name)]
        if bare == "code" and len(takers) > 1:
            raise ValueError(
                f"--set {name}: the replay adds {len(takers)} rules here and a code names one "
                "(replay one column, or leave the codes to the rules)"
            )
        if name in SCALED_SETTINGS and len(set(takers)) > 1:
            raise ValueError(
                f"--set {name}: the adaptive rule's is in robust SDs and the multivariate "
                f"rule's a T² limit; say adaptive.{name} or multivariate.{name}"
            )
        if takers:
            continue
        if not kinds:
            why = "the configuration already watches every column (edit it instead)"
        else:
            owner = owner or ("adaptive" if bare in ADAPTIVE_SETTINGS else "multivariate")
            why = f"only the {owner} rule takes it and --rule {rule} adds none here"
        raise ValueError(f"--set {name}: it would change nothing: {why}")


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

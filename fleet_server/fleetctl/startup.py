"""Fast start-up of ``fleetctl``: build only the command group the command line names.

Typer turns every command function into a click command before it parses anything, and
that (signatures, type hints) costs more than the rest of a ``fleetctl devices list``.
:func:`prune_groups` leaves the named group whole and swaps every other group for an
empty one carrying the same help text, so ``fleetctl --help`` still lists them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer

# Root options that take a value (``--url X``): their value is not a command name.
_VALUED_OPTIONS = ("--url", "--token", "--output", "-o", "--columns")


def requested_group(argv: Sequence[str]) -> str | None:
    """The first command word of ``argv`` (options and their values skipped), or None."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def prune_groups(app: typer.Typer, argv: Sequence[str]) -> None:
    """Replace every sub-group of ``app`` but the one ``argv`` asks for by an empty
    placeholder with the same name, help and visibility (only names and help are shown
    when the group is not the one being run)."""
    wanted = requested_group(argv)
    for info in app.registered_groups:
        sub = info.typer_instance
        if sub is None or info.name == wanted:
            continue
        placeholder = typer.Typer(
            help=info.help if isinstance(info.help, str) else sub.info.help,
            rich_markup_mode=None,
        )
        info.typer_instance = placeholder


_PLAIN = (str, int, float, bool)


def install_plain_coercion() -> bool:
    """Convert plain option values (``str``, ``int``, ``float``, ``bool`` and ``list[str]``,
    optional or not) without pydantic; every other annotation (paths, choices, ranges,
    custom parsers) keeps typer's own conversion. Returns whether it was installed.

    Why: typer 0.29 converts every option of the command being run through a pydantic
    ``TypeAdapter``, and importing pydantic costs more than the rest of a simple
    ``fleetctl devices list``. This replaces typer's ``build_runtime_param`` for the plain
    cases only; with a typer that has no such hook nothing changes."""
    try:
        from typer import core
        from typer._click.exceptions import BadParameter
        from typer._coercion import RuntimeParam
    except ImportError:  # another typer: its own conversion stays
        return False
    original = getattr(core, "build_runtime_param", None)
    if original is None or getattr(original, "plain", False):
        return original is not None

    class PlainRuntimeParam(RuntimeParam):
        """A plain value as typer's pydantic adapter would give it, converted in place."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            kind = self.annotation
            try:
                if kind == list[str]:
                    return [_plain(str, item) for item in value]
                return _plain(kind, value)
            except (TypeError, ValueError):
                label = {int: "integer", float: "number", bool: "boolean"}.get(kind, "text")
                raise BadParameter(
                    f"{value!r} is not a valid {label}", ctx=ctx, param=param
                ) from None

    def build(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        plain = descriptor.annotation in _PLAIN or descriptor.annotation == list[str]
        if (
            plain
            and descriptor.file_annotation is None
            and not descriptor.is_ranged
            and descriptor.choices is None
            and getattr(info, "parser", None) is None
            and getattr(info, "click_type", None) is None
        ):
            return PlainRuntimeParam(parameter_info=info, annotation=descriptor.annotation)
        return original(descriptor)

    build.plain = True  # type: ignore[attr-defined]
    core.build_runtime_param = build
    return True


def _plain(kind: type, value: Any) -> Any:
    """``value`` (a string from the command line, or already converted) as ``kind``."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if not isinstance(value, str):
        raise TypeError(value)
    if kind is bool:
        word = value.strip().lower()
        if word in ("1", "true", "yes", "y", "on", "t"):
            return True
        if word in ("0", "false", "no", "n", "off", "f"):
            return False
        raise ValueError(value)
    return kind(value)

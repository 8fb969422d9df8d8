"""Fast start-up of ``fleetctl``: build only the command group the command line names.

Typer turns every command function into a click command before it parses anything, and
that (signatures, type hints) costs more than the rest of a ``fleetctl devices list``.
:func:`prune_groups` leaves the named group whole and swaps every other group for an
empty one carrying the same help text, so ``fleetctl --help`` still lists them all.
"""

from __future__ import annotations

from collections.abc import Sequence

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

"""Type checks of the adaptive fault rule's numeric parameters (see
:class:`agent.core.adaptive.AdaptiveRule`)."""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable
from typing import Any


@functools.cache
def _number_parameters(init: Callable[..., None]) -> tuple[str, ...]:
    """The parameters of ``init`` annotated as floats (counts are checked as whole numbers)."""
    return tuple(
        name
        for name, parameter in inspect.signature(init).parameters.items()
        if parameter.annotation in ("float", "float | None")
    )


def require_numbers(arguments: dict[str, Any], init: Callable[..., None]) -> None:
    """Refuse, by name, a numeric parameter of ``init`` given as anything but a number (a
    string or a boolean from a configuration file); ``None`` where the parameter allows it."""
    for name in _number_parameters(init):
        value = arguments[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ValueError(f"{name} must be a number, not {value!r}")

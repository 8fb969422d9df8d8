"""The injected clock: services take ``now`` from a callable so tests drive time."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Returns UTC unix seconds."""

system_clock: Clock = time.time

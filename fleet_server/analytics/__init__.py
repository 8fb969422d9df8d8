"""Reliability analytics: pure functions over numpy arrays, no database and no HTTP.

* ``weibull``: life-data fits (MLE with right censoring, rank regression), B-lives, intervals.
* ``claims``: warranty early warning per batch or software version (exact Poisson exceedance
  test with Benjamini-Hochberg control, Poisson CUSUM over time, overdispersion check).
* ``rates``: fault and claim rates per group with exact (Garwood) intervals.
* ``growth``: reliability growth (Crow-AMSAA power-law NHPP; per-release trend test).
* ``csvio``: CSV readers with per-row errors, used by ``fleetctl analytics``.

Every result is a frozen dataclass with ``to_dict()`` for JSON; bad input raises
``AnalyticsInputError`` with a message meant for the user.
"""

from fleet_server.analytics.errors import AnalyticsInputError

__all__ = ["AnalyticsInputError"]

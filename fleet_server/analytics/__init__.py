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

from fleet_server.analytics.claims import EarlyWarningReport, early_warning
from fleet_server.analytics.errors import AnalyticsInputError
from fleet_server.analytics.growth import CrowAmsaaFit, ReleaseTrend, crow_amsaa, release_trend
from fleet_server.analytics.rates import RateTable, rates_by_group
from fleet_server.analytics.weibull import WeibullFit, b_life, weibull_mle, weibull_rank_regression

__all__ = [
    "AnalyticsInputError",
    "CrowAmsaaFit",
    "EarlyWarningReport",
    "RateTable",
    "ReleaseTrend",
    "WeibullFit",
    "b_life",
    "crow_amsaa",
    "early_warning",
    "rates_by_group",
    "release_trend",
    "weibull_mle",
    "weibull_rank_regression",
]

"""Response models of ``/api/v1/analytics``: Weibull fits, claim rates, early warning
and reliability growth.

Every estimate comes with its interval; a value that does not exist (an infinite bound,
a ratio over zero) is null. Reports are :class:`OpenModel`: the fields listed are
stable, and a client ignores fields it does not know.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from fleet_server.api.schema_times import OpenModel

Interval = list[float | None]
"""A ``[lower, upper]`` interval (a bound is null where it is infinite)."""


class WeibullFitOut(OpenModel):
    """Maximum-likelihood Weibull fit (shape ``beta``, scale ``eta``) with intervals."""

    method: str
    beta: float | None
    eta: float | None
    n_units: int
    n_failures: int
    n_censored: int
    b_percent: float
    b_life: float | None
    confidence: float
    beta_ci: Interval | None
    eta_ci: Interval | None
    b_life_ci: Interval | None
    notes: list[str]


class WeibullReport(BaseModel):
    """Days from activation to a failure mode's first claim; units without one are
    right-censored."""

    failure_mode: str
    model: str | None
    unit: str
    units: int
    failures: int
    censored: int
    fit: WeibullFitOut


class GroupRateOut(BaseModel):
    """One group's claims per exposure with its exact Poisson interval."""

    group: str
    exposure: float
    failures: int
    rate: float | None
    lower: float | None
    upper: float | None


class Homogeneity(BaseModel):
    """Test that all groups share one rate."""

    test: str
    chi2: float | None
    df: int
    p_value: float | None


class ClaimRates(BaseModel):
    """Claim rates per group (batch, software version, ...)."""

    by: str
    failure_mode: str | None
    exposure_unit: str
    confidence: float
    per: float = Field(description="rates per this many exposure units")
    groups: list[GroupRateOut]
    pooled: GroupRateOut
    homogeneity: Homogeneity


class GroupSignalOut(OpenModel):
    """A group's observed against expected claims (age-matched), its tests and verdict."""

    rank: int
    group: str
    exposure: float
    observed: int
    expected: float
    ratio: float | None
    ratio_ci: Interval
    p_value: float | None
    q_value: float | None
    test: str
    flagged: bool
    reasons: list[str]
    cusum: dict[str, object] | None


class EarlyWarning(OpenModel):
    """Groups whose claim rate exceeds the fleet's age-matched expectation."""

    by: str
    failure_mode: str | None
    exposure_unit: str
    settings: dict[str, float]
    total_exposure: float
    total_observed: int
    dispersion: dict[str, object]
    flagged: list[str]
    groups: list[GroupSignalOut]
    notes: list[str]


class GrowthReport(OpenModel):
    """Crow-AMSAA reliability growth: beta < 1 means the claim rate is falling."""

    failure_mode: str | None
    model: str | None
    time_unit: str
    n_failures: int
    end_time: float | None
    beta: float | None
    beta_ci: Interval
    confidence: float
    trend_test: dict[str, float | int | None]

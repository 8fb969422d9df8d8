"""``fleetctl analytics``: reliability analytics on CSV files, offline.

Each command reads a CSV file an analyst exported, prints a table for people or one JSON
object with ``--json``, and reports bad input as one clear error line (exit status 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from fleet_server.fleetctl import common

analytics_app = common.new_app(
    name="analytics",
    help=(
        "Reliability analytics on CSV exports, offline: Weibull life fits, warranty early "
        "warning, failure rates per group, reliability growth. Add --json for scripts."
    ),
    no_args_is_help=True,
    add_completion=False,
)

CsvOpt = Annotated[
    Path, typer.Option("--csv", help="CSV file with a header row.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
ConfOpt = Annotated[float, typer.Option("--confidence", help="Two-sided confidence level.")]


def _fail(message: str) -> NoReturn:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True, markup=False).print(
        Text.assemble(("error:", "bold red"), f" {message}"), highlight=False
    )
    raise typer.Exit(code=2)


def _emit_json(payload: dict[str, object]) -> None:
    typer.echo(json.dumps(payload, indent=2, allow_nan=False, default=_json_default))


def _json_default(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()  # numpy scalars
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None or math.isnan(value) else "inf"
    return f"{value:.{digits}g}"


def _pair(p: tuple[float, float] | None, digits: int = 4) -> str:
    return "-" if p is None else f"[{_fmt(p[0], digits)}, {_fmt(p[1], digits)}]"


@analytics_app.command()
def weibull(
    csv: CsvOpt,
    method: Annotated[
        str, typer.Option("--method", help="mle (handles censoring) or rr (rank regression).")
    ] = "mle",
    time_col: Annotated[str | None, typer.Option(help="Column with the times.")] = None,
    status_col: Annotated[
        str | None, typer.Option(help="Column saying failed (1/F) or censored (0/S).")
    ] = None,
    count_col: Annotated[str | None, typer.Option(help="Column with units per row.")] = None,
    b: Annotated[float, typer.Option("--b", help="B-life percentage (10 = B10).")] = 10.0,
    confidence: ConfOpt = 0.95,
    plotting_position: Annotated[
        str, typer.Option(help="rr only: bernard ((i-0.3)/(n+0.4)) or median (exact).")
    ] = "bernard",
    regression: Annotated[str, typer.Option(help="rr only: x_on_y or y_on_x.")] = "x_on_y",
    as_json: JsonOpt = False,
) -> None:
    """Fit a two-parameter Weibull to times to failure, with right censoring.

    The CSV has a time column (time, hours, age...) and optionally a failed/censored column
    (failed, status, censored...) and a count column (qty, count). Prints beta, eta, the
    B-life and their confidence intervals (likelihood ratio and Fisher/Wald).
    """
    from rich.table import Table

    # Imported here: scipy/numpy cost seconds, and `fleetctl --help` must start fast.
    from fleet_server.analytics import csvio
    from fleet_server.analytics.errors import AnalyticsInputError
    from fleet_server.analytics.weibull import weibull_mle, weibull_rank_regression

    try:
        data = csvio.read_life_data(
            csv, time_col=time_col, status_col=status_col, count_col=count_col
        )
        if method == "mle":
            fit = weibull_mle(
                data.times, data.failed, data.counts, confidence=confidence, b_percent=b
            )
        elif method == "rr":
            fit = weibull_rank_regression(
                data.times,
                data.failed,
                data.counts,
                plotting_position=plotting_position,  # type: ignore[arg-type]
                regression=regression,  # type: ignore[arg-type]
                b_percent=b,
            )
        else:
            _fail(f"unknown method {method!r}: use mle or rr")
    except AnalyticsInputError as exc:
        _fail(str(exc))
    if as_json:
        _emit_json(fit.to_dict())
        return
    console = common.console
    label = f"B{b:g}"
    title = (
        "Weibull, maximum likelihood"
        if fit.method == "mle"
        else f"Weibull, rank regression ({fit.regression}, {fit.plotting_position} ranks)"
    )
    table = Table(title=f"{title}: {fit.n_failures} failures, {fit.n_censored} censored")
    table.add_column("parameter")
    table.add_column("estimate", justify="right")
    if fit.method == "mle":
        pct = f"{fit.confidence:.0%}"
        table.add_column("std. error", justify="right")
        table.add_column(f"{pct} LR interval", justify="right")
        table.add_column(f"{pct} Wald interval", justify="right")
        table.add_row(
            "beta (shape)", _fmt(fit.beta), _fmt(fit.se_beta), _pair(fit.beta_ci),
            _pair(fit.beta_ci_wald),
        )  # fmt: skip
        table.add_row(
            "eta (scale)", _fmt(fit.eta), _fmt(fit.se_eta), _pair(fit.eta_ci),
            _pair(fit.eta_ci_wald),
        )  # fmt: skip
        table.add_row(
            f"{label} life", _fmt(fit.b_life), "", _pair(fit.b_life_ci), _pair(fit.b_life_ci_wald)
        )
    else:
        table.add_row("beta (shape)", _fmt(fit.beta))
        table.add_row("eta (scale)", _fmt(fit.eta))
        table.add_row(f"{label} life", _fmt(fit.b_life))
        table.add_row("R^2", _fmt(fit.r_squared))
    console.print(table)
    for note in fit.notes:
        console.print(f"note: {note}", highlight=False)


@analytics_app.command()
def claims(
    csv: CsvOpt,
    group_col: Annotated[
        str | None, typer.Option(help="Column with the batch or software version.")
    ] = None,
    exposure_col: Annotated[
        str | None, typer.Option(help="Column with units or unit-days at risk.")
    ] = None,
    failures_col: Annotated[str | None, typer.Option(help="Column with claim counts.")] = None,
    age_col: Annotated[
        str | None, typer.Option(help="Column with months in service (age-matched expectation).")
    ] = None,
    period_col: Annotated[
        str | None,
        typer.Option(
            help="Column with the calendar period (enables the CUSUM); numbers, or text that "
            "sorts in time order such as 2025-03."
        ),
    ] = None,
    fdr: Annotated[float, typer.Option(help="False discovery rate for the excess test.")] = 0.05,
    cusum_ratio: Annotated[
        float, typer.Option(help="Rate ratio the CUSUM is tuned to detect.")
    ] = 2.0,
    family_alpha: Annotated[
        float, typer.Option(help="Chance of any false CUSUM alarm over the window.")
    ] = 0.05,
    confidence: ConfOpt = 0.95,
    as_json: JsonOpt = False,
) -> None:
    """Warranty early warning: rank the groups whose claim rate is above expectation.

    The CSV has one row per group (and per months-in-service and period if known) with the
    exposure at risk and the claims. Expected claims come from the fleet's own pooled rate at
    the same age; flags come from an exact Poisson exceedance test with Benjamini-Hochberg
    control and a Poisson CUSUM over the periods.
    """
    from rich.table import Table

    # Imported here: scipy/numpy cost seconds, and `fleetctl --help` must start fast.
    from fleet_server.analytics import csvio
    from fleet_server.analytics.claims import early_warning
    from fleet_server.analytics.errors import AnalyticsInputError

    try:
        data = csvio.read_counts(
            csv,
            group_cols=[group_col] if group_col else None,
            exposure_col=exposure_col,
            failures_col=failures_col,
            age_col=age_col,
            period_col=period_col,
        )
        report = early_warning(
            data.groups, data.exposure, data.failures, age=data.age, period=data.period,
            fdr=fdr, cusum_ratio=cusum_ratio, family_alpha=family_alpha, confidence=confidence,
        )  # fmt: skip
    except AnalyticsInputError as exc:
        _fail(str(exc))
    if as_json:
        _emit_json(report.to_dict())
        return
    console = common.console
    table = Table(
        title=f"Claims by {data.group_col}: {report.total_observed} claims, "
        f"{len(report.flagged)} of {len(report.groups)} groups flagged"
    )
    for col, right in (
        ("rank", True), ("group", False), ("observed", True), ("expected", True),
        ("obs/exp", True), (f"{confidence:.0%} interval", True), ("p", True), ("q (BH)", True),
        ("CUSUM max/h", True), ("flag", False),
    ):  # fmt: skip
        table.add_column(col, justify="right" if right else "left")
    for g in report.groups:
        cus = "-" if g.cusum is None else f"{g.cusum.max_statistic / g.cusum.h:.2f}"
        table.add_row(
            str(g.rank), g.group, str(g.observed), _fmt(g.expected, 3), _fmt(g.ratio, 3),
            _pair(g.ratio_ci, 3), _fmt(g.p_value, 2), _fmt(g.q_value, 2), cus,
            "; ".join(g.reasons) if g.flagged else "",
        )  # fmt: skip
    console.print(table)
    d = report.dispersion
    if d.df:
        console.print(
            f"dispersion {d.ratio:.2f} (Pearson chi2 {d.pearson_chi2:.1f}, df {d.df}, "
            f"p={_fmt(d.p_value, 2)}); test: {report.groups[0].test}",
            highlight=False,
        )
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)


@analytics_app.command()
def rates(
    csv: CsvOpt,
    by: Annotated[
        list[str] | None,
        typer.Option("--by", help="Group column(s), repeatable: --by model --by hw_rev."),
    ] = None,
    exposure_col: Annotated[str | None, typer.Option(help="Column with exposure.")] = None,
    failures_col: Annotated[str | None, typer.Option(help="Column with failures.")] = None,
    per: Annotated[float, typer.Option(help="Express rates per this much exposure.")] = 1.0,
    confidence: ConfOpt = 0.95,
    as_json: JsonOpt = False,
) -> None:
    """Fault or claim rates per group with exact (Garwood) confidence intervals.

    Groups by model, hardware revision, batch or software version (``--by``, repeatable);
    prints each group's rate and interval and a chi-square test that all rates are equal.
    """
    from rich.table import Table

    # Imported here: scipy/numpy cost seconds, and `fleetctl --help` must start fast.
    from fleet_server.analytics import csvio
    from fleet_server.analytics.errors import AnalyticsInputError
    from fleet_server.analytics.rates import rates_by_group

    try:
        data = csvio.read_counts(
            csv,
            group_cols=by,
            exposure_col=exposure_col,
            failures_col=failures_col,
            use_age=False,
            use_period=False,
        )
        result = rates_by_group(
            data.groups, data.exposure, data.failures, confidence=confidence, per=per
        )
    except AnalyticsInputError as exc:
        _fail(str(exc))
    if as_json:
        _emit_json(result.to_dict())
        return
    console = common.console
    table = Table(title=f"Rates by {data.group_col} (per {per:g} exposure)")
    for col in ("group", "exposure", "failures", "rate", f"{confidence:.0%} interval"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for g in (*result.groups, result.pooled):
        table.add_row(
            g.group, _fmt(g.exposure, 6), str(g.failures), _fmt(g.rate), _pair((g.lower, g.upper))
        )
    console.print(table)
    if result.p_homogeneity is not None:
        console.print(
            f"all groups equal? chi2 {result.chi2:.2f}, df {result.df}, "
            f"p={_fmt(result.p_homogeneity, 3)}",
            highlight=False,
        )


@analytics_app.command()
def growth(
    csv: CsvOpt,
    end_time: Annotated[
        float | None,
        typer.Option(help="Failure times: end of observation (omit if it ended at a failure)."),
    ] = None,
    time_col: Annotated[str | None, typer.Option(help="Column with failure times.")] = None,
    release_col: Annotated[str | None, typer.Option(help="Column with the release.")] = None,
    exposure_col: Annotated[str | None, typer.Option(help="Column with exposure.")] = None,
    failures_col: Annotated[str | None, typer.Option(help="Column with failures.")] = None,
    per: Annotated[float, typer.Option(help="Express rates per this much exposure.")] = 1.0,
    confidence: ConfOpt = 0.95,
    as_json: JsonOpt = False,
) -> None:
    """Reliability growth: Crow-AMSAA on failure times, or the trend across releases.

    With a release column (rows oldest release first, each with exposure and failures) the
    command fits the per-release trend; otherwise it reads cumulative failure times and
    fits the Crow-AMSAA power-law model.
    """
    from rich.table import Table

    # Imported here: scipy/numpy cost seconds, and `fleetctl --help` must start fast.
    from fleet_server.analytics import csvio
    from fleet_server.analytics.errors import AnalyticsInputError
    from fleet_server.analytics.growth import crow_amsaa, release_trend

    try:
        by_release = release_col is not None or csvio.has_column(csv, None, csvio.RELEASE_NAMES)
        if by_release:
            data = csvio.read_releases(
                csv, release_col=release_col, exposure_col=exposure_col,
                failures_col=failures_col,
            )  # fmt: skip
            trend = release_trend(
                data.releases, data.exposure, data.failures, confidence=confidence, per=per
            )
        else:
            times = csvio.read_failure_times(csv, time_col=time_col)
            fit = crow_amsaa(times, end_time, confidence=confidence)
    except AnalyticsInputError as exc:
        _fail(str(exc))
    console = common.console
    if by_release:
        if as_json:
            _emit_json(trend.to_dict())
            return
        table = Table(title=f"Failure rate per release (per {per:g} exposure)")
        for col in ("release", "exposure", "failures", "rate", f"{confidence:.0%} interval"):
            table.add_column(col, justify="left" if col == "release" else "right")
        for r in trend.releases:
            table.add_row(
                r.release, _fmt(r.exposure, 6), str(r.failures), _fmt(r.rate),
                _pair((r.lower, r.upper)),
            )  # fmt: skip
        console.print(table)
        console.print(
            f"rate ratio per release {trend.ratio_per_release:.3f} {_pair(trend.ratio_ci, 3)}, "
            f"LR test p={_fmt(trend.p_value, 3)}: {trend.verdict}"
            + (" (quasi-Poisson: releases vary more than Poisson)" if trend.quasi_poisson else ""),
            highlight=False,
        )
        return
    if as_json:
        _emit_json(fit.to_dict())
        return
    table = Table(title=f"Crow-AMSAA, {fit.termination}-terminated, {fit.n_failures} failures")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("beta (MLE)", _fmt(fit.beta))
    table.add_row("beta (unbiased)", _fmt(fit.beta_unbiased))
    table.add_row(f"beta {fit.confidence:.0%} interval", _pair(fit.beta_ci))
    table.add_row("lambda", _fmt(fit.lam))
    table.add_row("instantaneous MTBF at end", _fmt(fit.mtbf_instantaneous))
    table.add_row("cumulative MTBF", _fmt(fit.mtbf_cumulative))
    table.add_row("p (no growth vs growth)", _fmt(fit.p_growth, 3))
    console.print(table)


def _unwrap(doc: str) -> str:
    """Docstring paragraphs as single lines, so the help reflows to the terminal width."""
    paragraphs = [" ".join(p.split()) for p in doc.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


for _info in analytics_app.registered_commands:
    if _info.callback is not None and _info.callback.__doc__:
        _info.help = _unwrap(_info.callback.__doc__)

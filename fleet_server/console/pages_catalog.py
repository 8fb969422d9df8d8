"""Bundles, recalls (completion over time, remaining devices, export) and warranty and
quality (claim rates, early warning flagged first, Weibull plots, RMAs, parts)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from fleet_server.analytics.errors import AnalyticsInputError
from fleet_server.analytics.weibull_plot import weibull_plot
from fleet_server.api.deps import Db, context
from fleet_server.console.auth import Viewer
from fleet_server.console.web import page_params, pager, query_value, render
from fleet_server.errors import FleetError, InvalidInputError
from fleet_server.services import bundles, fleet_views, recalls, reliability, rma, warranty
from fleet_server.services.bundles import BundleFilter

router = APIRouter()
T = TypeVar("T")


def attempt(fn: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run an analysis; a refusal (too little data...) becomes its message, so one empty
    analysis does not take the whole page down."""
    try:
        return fn(), None
    except (FleetError, AnalyticsInputError) as exc:
        return None, str(getattr(exc, "message", exc))


@router.get("/bundles")
def bundle_list(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Published bundles (filter by model, version, channel) and where each runs."""
    filt = BundleFilter(
        model=query_value(request, "model"),
        version=query_value(request, "version"),
        channel=query_value(request, "channel"),
    )
    page = bundles.list_bundles(session, filt, page_params(request))
    running = fleet_views.versions_per_model(session)
    return render(request, "bundles.html", page=page, pager=pager(page), filt=filt, running=running)


@router.get("/bundles/{name}")
def bundle_page(name: str, request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """One bundle with its SBOM components."""
    b = bundles.bundle_view(bundles.get_bundle(session, name), with_manifest=True)
    sbom = b["manifest"].get("sbom") or []
    components = [c for c in sbom if isinstance(c, dict)] if isinstance(sbom, list) else []
    return render(request, "bundle.html", b=b, components=components)


@router.get("/recalls")
def recall_list(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Recall campaigns with their completion."""
    state = query_value(request, "state")
    page = recalls.list_campaigns(session, page_params(request), state)
    return render(request, "recalls.html", page=page, pager=pager(page), state=state)


@router.get("/recalls/{campaign_id}")
def recall_page(campaign_id: str, request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """A campaign: scope, remedy, completion over time, the remaining devices."""
    campaign = recalls.show_campaign(session, campaign_id)
    progress = recalls.progress(session, campaign_id)
    member_state = query_value(request, "member_state")
    members = recalls.list_members(session, campaign_id, page_params(request), member_state)
    chart = {
        "x": [s["at"] for s in progress["snapshots"]],
        "raw_rate": [s["raw_rate"] for s in progress["snapshots"]],
        "adjusted_rate": [s["adjusted_rate"] for s in progress["snapshots"]],
    }
    return render(
        request,
        "recall.html",
        c=campaign,
        progress=progress,
        chart=chart,
        members=members,
        pager=pager(members),
        member_state=member_state,
    )


@router.get("/recalls/{campaign_id}/affected.csv")
def recall_export(campaign_id: str, session: Db, _who: Viewer) -> Response:
    """The frozen population as CSV (the same export as the API's)."""
    body = recalls.export_affected(session, campaign_id)
    return Response(
        body,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{campaign_id}-affected.csv"'},
    )


@router.get("/warranty")
def warranty_page(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Claims and RMAs at once; the analyses (early warning and claim rates, Weibull
    plots, parts reliability) load into the page as they finish, since they read the
    whole fleet's service history."""
    claims = warranty.list_claims(session, page_params(request, 20), query_value(request, "state"))
    return render(
        request,
        "warranty.html",
        by=query_value(request, "by") or "batch",
        claims=claims,
        rmas=fleet_views.rmas_by_state(session),
    )


@router.get("/warranty/analysis")
def warranty_analysis(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """One analysis of the warranty page (``part``: groups, weibull or parts)."""
    today = datetime.fromtimestamp(context(request).clock(), UTC).date()
    by = query_value(request, "by") or "batch"
    part = query_value(request, "part")
    if part == "groups":
        cells, cells_error = attempt(lambda: reliability.month_cells(session, today, by))
        rates, rates_error = attempt(
            lambda: reliability.claim_rates(session, today, by, cells=cells)
        )
        warning, warning_error = attempt(
            lambda: reliability.claims_early_warning(session, today, by, cells=cells)
        )
        rates_error = rates_error or cells_error
        warning_error = warning_error or cells_error
        if warning:
            warning["groups"] = sorted(
                warning.get("groups", []), key=lambda g: (not g.get("flagged"), g.get("rank", 0))
            )
        return render(
            request,
            "_warranty_groups.html",
            by=by,
            rates=rates,
            rates_error=rates_error,
            warning=warning,
            warning_error=warning_error,
        )
    if part == "weibull":
        fits: list[dict[str, Any]] = []
        fleet = reliability.cohorts(session, today, None)
        for mode in fleet_views.failure_modes(session):
            fit, error = attempt(
                lambda mode=mode: reliability.weibull(session, today, mode, fleet=fleet)
            )
            plot = weibull_plot(fit["fit"], data=fit["points"]) if fit else None
            fits.append({"mode": mode, "fit": fit, "error": error, "plot": plot})
        return render(request, "_warranty_weibull.html", fits=fits)
    if part == "parts":
        parts, parts_error = attempt(
            lambda: rma.parts_reliability(session, context(request).clock())
        )
        return render(request, "_warranty_parts.html", parts=parts, parts_error=parts_error)
    raise InvalidInputError("validation_error", "part: groups, weibull or parts")

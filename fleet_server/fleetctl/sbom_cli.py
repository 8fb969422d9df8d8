"""``fleetctl sbom ...`` (the offline check, bundle components, fleet inventory),
``fleetctl advisories ...`` (OSV import, exposure, remedy), ``fleetctl licences ...``
(policies, waivers, reviews) and ``fleetctl bundle notices VERSION``.

``sbom check`` needs no server: it runs the server's own evaluation (licence policy,
OSV matching, VEX) on one SBOM file, for a build pipeline to gate on. The libraries it
needs are imported inside the commands, so ``fleetctl``'s start-up stays fast.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet_server.fleetctl import common
from fleet_server.fleetctl.client import CtlError
from fleet_server.fleetctl.common import JsonOpt, LimitOpt
from fleet_server.fleetctl.updates_cli import bundle_app

sbom_app = common.new_app(
    help="SBOMs: check one offline (CI gate), a bundle's components, the fleet inventory.",
    no_args_is_help=True,
)
advisories_app = common.new_app(
    help="OSV advisories: import, exposure by committed release, VEX, remedy.",
    no_args_is_help=True,
)
licences_app = common.new_app(
    help="Licence policies per model, admin waivers and bundle licence reviews.",
    no_args_is_help=True,
)
SEVERITY_CHOICES = ("none", "low", "medium", "high", "critical")


def _invalid(message: str) -> CtlError:
    return CtlError(message, code="invalid_input", status=422)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _invalid(f"cannot read {path}: {exc}") from None


def load_advisories(path: Path) -> list[tuple[str, Any]]:
    """(file name, decoded JSON or its error) of every OSV document in a directory (all
    ``*.json`` below it), a zip or one JSON file."""
    from fleet_server.domain.osv import iter_documents

    if path.is_dir():
        out: list[tuple[str, Any]] = []
        for file in sorted(path.rglob("*.json")):
            out += iter_documents(str(file.relative_to(path)), _read(file))
        return out
    return list(iter_documents(path.name, _read(path)))


@sbom_app.command("check")
def sbom_check(
    sbom: Annotated[Path, typer.Option("--sbom", help="CycloneDX JSON or SPDX JSON/tag-value")],
    advisories: Annotated[
        Path | None, typer.Option("--advisories", help="OSV directory, zip or JSON file")
    ] = None,
    vex: Annotated[Path | None, typer.Option("--vex", help="CycloneDX VEX or OpenVEX")] = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="licence policy JSON (allowed/denied/...)")
    ] = None,
    fail_on: Annotated[
        str, typer.Option("--fail-on", help="fail on an unsuppressed advisory at or above")
    ] = "high",
    as_json: JsonOpt = False,
) -> None:
    """Evaluate one SBOM offline: licences against --policy, advisories with VEX.
    Exit 1 on a denied licence or an unsuppressed advisory at or above --fail-on."""
    from firmware_bundles.sbom import SbomError, parse_sbom
    from fleet_server.domain.exposure import check_report, index_advisories, match
    from fleet_server.domain.licence_policy import ALLOWED, Policy, evaluate, parse_policy
    from fleet_server.domain.osv import parse_advisory
    from fleet_server.domain.vex import parse_vex
    from fleet_server.errors import FleetError

    if fail_on not in SEVERITY_CHOICES:
        raise _invalid(f"--fail-on: one of {', '.join(SEVERITY_CHOICES)}")
    try:
        doc = parse_sbom(_read(sbom), sbom.name)
        rules = Policy(default=ALLOWED)
        if policy is not None:
            rules = parse_policy(_json_object(policy))
        parsed = []
        for name, item in load_advisories(advisories) if advisories else []:
            if isinstance(item, FleetError):
                raise item
            parsed.append(parse_advisory(item, name))
        statements = parse_vex(_read(vex), vex.name) if vex else []
    except SbomError as exc:
        raise _invalid(str(exc)) from None
    except FleetError as exc:
        raise _invalid(exc.message) from None
    matches = match([c.purl for c in doc.components], index_advisories(parsed), statements)
    report, failed = check_report(
        len(doc.components), matches, evaluate(doc.components, rules), fail_on
    )
    common.emit(report, as_json, _render_check)
    if failed:
        raise typer.Exit(1)


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read(path))
    except ValueError as exc:
        raise _invalid(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _invalid(f"{path}: must hold a JSON object")
    return data


def _render_check(r: dict[str, Any]) -> None:
    typer.echo(f"{r['components']} components, {len(r['licences'])} licences")
    for v in r["vulnerabilities"]:
        fix = f", fixed in {v['fixed_in']}" if v["fixed_in"] else ", no fix"
        typer.echo(f"  {v['severity']:<8} {v['id']}  {v['purl']}{fix}")
    for s in r["suppressed"]:
        typer.echo(f"  suppressed {s['id']}  {s['purl']}: {s['status']} ({s['justification']})")
    for v in r["violations"]:
        typer.echo(f"  licence {v['rule']}: {v['purl']} ({v['licence']})")
    typer.echo("FAILED" if r["failed"] else "ok")


@sbom_app.command("components")
def sbom_components(bundle: str, as_json: JsonOpt = False, limit: LimitOpt = None) -> None:
    """A published bundle's components (name, version, purl, licence, supplier)."""
    items = common.client().paginate(f"/api/v1/bundles/{bundle}/components", {}, limit)
    cols = ["name", "version", "licence", "purl", "supplier"]
    common.emit(items, as_json, lambda d: common.table(d, cols, f"{len(d)} component(s)"))


@sbom_app.command("inventory")
def sbom_inventory(
    by: Annotated[
        str | None, typer.Option(help="break down by model, hw_revision, region or channel")
    ] = None,
    component: Annotated[str | None, typer.Option(help="only this component name")] = None,
    as_json: JsonOpt = False,
    limit: LimitOpt = None,
) -> None:
    """Which component@version runs on how many devices (by committed release)."""
    items = common.client().paginate("/api/v1/inventory", {"by": by, "component": component}, limit)
    cols = ["component", "version", *([by] if by else []), "devices", "purl"]
    common.emit(items, as_json, lambda d: common.table(d, cols, f"{len(d)} row(s)"))


@bundle_app.command("notices")
def bundle_notices(
    version: str,
    model: Annotated[str | None, typer.Option(help="model, when several have it")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text or html")] = "text",
    out: Annotated[Path | None, typer.Option("-o", "--out", help="write to this file")] = None,
) -> None:
    """Export the attribution notice (text or HTML) of release VERSION."""
    params = {"format": fmt, **({"model": model} if model else {})}
    body = common.client().request("GET", f"/api/v1/releases/{version}/notices", params=params)
    text = body.decode() if isinstance(body, bytes) else str(body)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}")


@advisories_app.command("import")
def advisories_import(
    path: Annotated[Path, typer.Argument(help="directory or zip of OSV JSON files")],
    as_json: JsonOpt = False,
) -> None:
    """Load OSV advisories (no network needed) and match them against every bundle."""
    if path.is_dir():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(path.rglob("*.json")):
                archive.write(file, file.relative_to(path).as_posix())
        data = buf.getvalue()
    else:
        data = _read(path)
    kind = "application/json" if path.suffix == ".json" else "application/zip"
    result = common.client().request(
        "POST", "/api/v1/advisories/import", content=data, headers={"Content-Type": kind}
    )

    def render(d: dict[str, Any]) -> None:
        m = d["matching"]
        typer.echo(
            f"imported {d['imported']}, updated {d['updated']}, unchanged {d['unchanged']}, "
            f"rejected {len(d['rejected'])}; {m['matches']} match(es), {m['events']} event(s)"
        )
        for r in d["rejected"][:20]:
            typer.echo(f"  rejected {r['file']}: {r['error']}")

    common.emit(result, as_json, render)


@advisories_app.command("list")
def advisories_list(
    severity: Annotated[str | None, typer.Option(help="only this severity")] = None,
    exposed: Annotated[bool, typer.Option(help="only advisories matching a bundle")] = False,
    as_json: JsonOpt = False,
    limit: LimitOpt = None,
) -> None:
    """Advisories, most severe first."""
    items = common.client().paginate(
        "/api/v1/advisories", {"severity": severity, "exposed": exposed or None}, limit
    )
    cols = ["id", "severity", "score", "aliases", "summary"]
    common.emit(items, as_json, lambda d: common.table(d, cols, f"{len(d)} advisory(ies)"))


@advisories_app.command("show")
def advisories_show(advisory_id: str, as_json: JsonOpt = False) -> None:
    """Affected bundles (VEX status), exposed devices, earliest fixing release."""
    data = common.client().request("GET", f"/api/v1/advisories/{advisory_id}")

    def render(d: dict[str, Any]) -> None:
        typer.echo(f"{d['id']} {d['severity']} ({d['score']}) {', '.join(d['aliases'])}")
        typer.echo(f"  {d['summary']}")
        typer.echo(f"  exposed devices: {d['exposed_devices']}")
        for b in d["affected_bundles"]:
            note = f" ({b['justification']})" if b["justification"] else ""
            typer.echo(f"  {b['status']:<20} {b['bundle']}  {b['purl']}{note}")
        for model, fix in d["earliest_fix"].items():
            typer.echo(f"  fix for {model}: {fix['bundle'] if fix else 'none published'}")

    common.emit(data, as_json, render)


@advisories_app.command("devices")
def advisories_devices(advisory_id: str, as_json: JsonOpt = False, limit: LimitOpt = None) -> None:
    """Devices exposed to an advisory (by the release they have committed)."""
    items = common.client().paginate(f"/api/v1/advisories/{advisory_id}/devices", {}, limit)
    cols = ["device_id", "model", "software_version", "hw_revision", "region", "channel"]
    common.emit(items, as_json, lambda d: common.table(d, cols, f"{len(d)} device(s)"))


@advisories_app.command("events")
def advisories_events(as_json: JsonOpt = False, limit: LimitOpt = None) -> None:
    """Exposure events: critical advisories that newly reached devices."""
    items = common.client().paginate("/api/v1/advisories/events", {}, limit)
    cols = ["id", "advisory", "severity", "exposed_devices", "state", "raised_at"]
    common.emit(items, as_json, lambda d: common.table(d, cols, f"{len(d)} event(s)"))


@advisories_app.command("remedy")
def advisories_remedy(
    advisory_id: str,
    model: Annotated[str | None, typer.Option(help="model, when several are exposed")] = None,
    start: Annotated[bool, typer.Option(help="start the rollout at once")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Staged rollout of the fixing release to exactly the exposed devices, or a draft
    recall when no fix is published."""
    data = common.client().request(
        "POST",
        f"/api/v1/advisories/{advisory_id}/remedy",
        json={"model": model, "start": start},
    )

    def render(d: dict[str, Any]) -> None:
        what = d.get("rollout_id") or d.get("campaign_id")
        typer.echo(f"{d['kind']} {what} ({d['state']}) for {d['devices']} device(s)")

    common.emit(data, as_json, render)


@advisories_app.command("vex")
def advisories_vex(
    bundle: str,
    vex_file: Annotated[Path, typer.Argument(help="CycloneDX VEX or OpenVEX JSON")],
    as_json: JsonOpt = False,
) -> None:
    """Attach VEX statements to a published bundle (it is re-matched at once)."""
    data = common.client().request(
        "POST",
        f"/api/v1/bundles/{bundle}/vex",
        content=_read(vex_file),
        headers={"Content-Type": "application/json"},
    )
    common.emit(data, as_json, lambda d: typer.echo(f"{d['statements']} statement(s) added"))


@licences_app.command("policy")
def licences_policy(
    model: str,
    set_file: Annotated[Path | None, typer.Option("--set", help="policy JSON to store")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a model's licence policy, or replace it with --set FILE (admin)."""
    if set_file is not None:
        data = common.client().request(
            "PUT", f"/api/v1/licence-policies/{model}", json=_json_object(set_file)
        )
    else:
        data = common.client().request("GET", f"/api/v1/licence-policies/{model}")
    common.emit(data, as_json, lambda d: typer.echo(json.dumps(d, indent=2)))


@licences_app.command("waive")
def licences_waive(
    model: str,
    component: Annotated[str, typer.Argument(help="name@version or purl")],
    reason: Annotated[str, typer.Option("--reason", help="why (kept in the audit log)")],
    as_json: JsonOpt = False,
) -> None:
    """Waive a denied component for a model (admin)."""
    data = common.client().request(
        "POST",
        f"/api/v1/licence-policies/{model}/waivers",
        json={"component": component, "reason": reason},
    )
    common.emit(data, as_json, lambda d: typer.echo(f"waived {d['component']} for {model}"))


@licences_app.command("review")
def licences_review(
    bundle: str,
    decision: Annotated[
        str | None, typer.Option("--decide", help="approved or rejected (admin)")
    ] = None,
    note: Annotated[str, typer.Option(help="why (kept in the audit log)")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Show a bundle's licence review, or decide it with --decide."""
    path = f"/api/v1/bundles/{bundle}/licence-review"
    if decision is None:
        data = common.client().request("GET", path)
    else:
        data = common.client().request("POST", path, json={"decision": decision, "note": note})
    common.emit(data, as_json, lambda d: typer.echo(json.dumps(d, indent=2)))

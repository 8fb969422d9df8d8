"""``fleet-bundle``: build, inspect and verify update bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from firmware_bundles import __version__
from firmware_bundles.build import build_bundle
from firmware_bundles.errors import BundleError
from firmware_bundles.examples import EXAMPLE_NAMES, build_examples
from firmware_bundles.files import sha256_file
from firmware_bundles.inspect import read_manifest, summary
from firmware_bundles.verify import verify_bundle

app = typer.Typer(
    name="fleet-bundle",
    help=(
        "Build, inspect and verify Edgefleet update bundles.\n\n"
        "A bundle source is a directory with manifest.json and a payload/ tree; "
        "`build` turns it into a deterministic .tar.gz that `verify` checks completely."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def _fail(exc: BundleError, as_json: bool = False) -> typer.Exit:
    if as_json:
        typer.echo(json.dumps({"ok": False, "reason": exc.reason.value, "error": exc.message}))
    else:
        typer.echo(f"error: {exc.message} [{exc.reason.value}]", err=True)
    return typer.Exit(1)


@app.callback()
def _root() -> None:
    """Keep sub-commands as sub-commands."""


@app.command()
def version() -> None:
    """Print the bundle tool version."""
    typer.echo(f"fleet-bundle {__version__}")


@app.command()
def build(
    src: Annotated[Path, typer.Argument(help="source directory: manifest.json + payload/")],
    out: Annotated[Path, typer.Option("-o", "--out", help="bundle file, or an existing directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Build a bundle from SRC. The manifest may omit `payload`: it is computed."""
    try:
        built = build_bundle(src, out)
    except BundleError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        typer.echo(
            json.dumps(
                {"ok": True, "path": str(built.path), "sha256": built.sha256, "size": built.size}
            )
        )
    else:
        m = built.manifest
        typer.echo(f"built {built.path} ({built.size} bytes, sha256 {built.sha256})")
        typer.echo(
            f"  {m.product}/{m.model} {m.version} release {m.release_counter}, "
            f"{len(m.payload)} payload files"
        )


@app.command()
def inspect(
    bundle: Annotated[Path, typer.Argument(help="bundle file (.tar.gz)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Show a bundle's manifest (the payload is not checked; use `verify` for that)."""
    try:
        manifest = read_manifest(bundle)
    except BundleError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        typer.echo(json.dumps(summary(bundle, manifest), indent=2))
        return
    m = manifest
    rows = [
        ("product / model", f"{m.product} / {m.model}"),
        ("version", m.version),
        ("release counter", str(m.release_counter)),
        ("hardware", ", ".join(m.hardware_revisions)),
        ("min agent", m.min_agent_version),
        ("channel", m.channel or "-"),
        ("payload", f"{len(m.payload)} files, {m.payload_size} bytes"),
        ("health check", "yes" if m.health_check else "none"),
        ("sha256", sha256_file(bundle)[0]),
    ]
    if m.simulation:
        rows.append(("simulation", f"boot={m.simulation.boot} health={m.simulation.health}"))
    for key, value in rows:
        typer.echo(f"{key:<16} {value}")
    doc = m.sbom_document
    source = f"{doc.format} {doc.spec_version} ({doc.member})" if doc else "manifest list"
    typer.echo(f"sbom: {len(m.sbom)} components from {source}")
    for comp in m.sbom:
        extra = [comp.purl or "", f"supplier {comp.supplier}" if comp.supplier else ""]
        extra += [f"{alg} {value[:16]}" for alg, value in sorted(comp.hashes.items())[:1]]
        details = "  ".join(e for e in extra if e)
        typer.echo(f"  {comp.name} {comp.version} ({comp.licence or 'NOASSERTION'})  {details}")
    typer.echo("files:")
    for f in m.payload:
        typer.echo(f"  {f.size:>10}  {f.sha256[:16]}  {f.path}")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="bundle file (.tar.gz)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Check every payload file's size and sha256 and refuse unsafe archives. Exit 1 if bad."""
    try:
        manifest = verify_bundle(bundle)
    except BundleError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        typer.echo(
            json.dumps({"ok": True, "version": manifest.version, "files": len(manifest.payload)})
        )
    else:
        typer.echo(
            f"ok: {bundle} {manifest.model} {manifest.version}, "
            f"{len(manifest.payload)} files verified"
        )


@app.command()
def examples(
    out_dir: Annotated[Path, typer.Argument(help="directory to build the examples into")],
) -> None:
    """Build the example bundles (good, health-fail, boot-crash, wrong-hardware) into OUT_DIR."""
    try:
        built = build_examples(out_dir)
    except BundleError as exc:
        raise _fail(exc) from None
    for name in EXAMPLE_NAMES:
        typer.echo(f"{name:<16} {built[name].path}")


def main() -> None:
    """Entry point of the ``fleet-bundle`` console script."""
    app()


if __name__ == "__main__":
    main()

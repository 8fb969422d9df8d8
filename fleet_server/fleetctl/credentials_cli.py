"""``fleetctl devices provision|certify|revoke``: device credentials over the API.

Registered on the ``devices`` group (also reachable as ``fleetctl device ...``) by
:func:`register_credentials`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet_server.fleetctl.client import ApiClient, CtlError

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def _extract_bundle(data: bytes, device_id: str, out: Path) -> None:
    """Unpack the ``<device_id>/`` archive into ``out`` (created, must not hold files)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CtlError(f"{out} already exists and is not an empty directory")
    import tarfile  # here, not at the top: keeps `fleetctl --help` fast

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".provision-", dir=out.parent))
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                tar.extractall(staging, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise CtlError(f"the server sent an unreadable bundle: {exc}") from None
        unpacked = staging / device_id
        if not (unpacked / "bundle.json").is_file():
            raise CtlError("the server's bundle has no bundle.json")
        if out.exists():
            out.rmdir()
        os.chmod(unpacked, 0o700)
        os.rename(unpacked, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def register_credentials(group: typer.Typer, client: Callable[[], ApiClient]) -> None:
    """Add the credential commands to ``group`` (``fleetctl devices``)."""

    @group.command("provision")
    def provision(
        device_id: Annotated[str, typer.Argument(help="registered device id")],
        out: Annotated[Path, typer.Option("--out", help="directory to write the bundle to")],
        as_json: JsonOpt = False,
    ) -> None:
        """Factory provisioning: the server makes a key and certificate and this writes
        the device's credentials bundle to --out (key mode 0600; copy it to the device's
        /etc/edgefleet/credentials and delete it here). Needs operator."""
        data = client().request("POST", f"/api/v1/devices/{device_id}/provision")
        if not isinstance(data, bytes):
            raise CtlError("the server did not answer with a bundle archive")
        _extract_bundle(data, device_id, out)
        meta = json.loads((out / "bundle.json").read_text())
        from cryptography import x509  # here, not at the top: keeps `fleetctl --help` fast

        cert = x509.load_pem_x509_certificate((out / "device.crt").read_bytes())
        result: dict[str, Any] = {
            "device_id": device_id,
            "serial": f"{cert.serial_number:x}",
            "not_after": meta.get("not_after"),
            "bundle": str(out),
        }
        if as_json:
            typer.echo(json.dumps(result))
            return
        typer.echo(f"credentials for {device_id} written to {out}")
        typer.echo(f"certificate serial {result['serial']}, valid until {result['not_after']}")
        typer.secho(
            f"{out / 'device.key'} is the device's private key: move it to the device, "
            "then delete this copy.",
            fg=typer.colors.YELLOW,
        )

    @group.command("certify")
    def certify(
        device_id: Annotated[str, typer.Argument(help="registered device id")],
        csr: Annotated[Path, typer.Option("--csr", help="PEM CSR made on the device")],
        out: Annotated[
            Path | None, typer.Option("--out", help="write the certificate here (else stdout)")
        ] = None,
        chain: Annotated[
            Path | None, typer.Option("--chain", help="also write the CA chain here")
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Claim flow: certify a CSR the device generated (its key never leaves it).
        Needs operator."""
        try:
            pem = csr.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CtlError(f"cannot read the CSR {csr}: {exc}") from None
        body = client().request(
            "POST", f"/api/v1/devices/{device_id}/certificate", json={"csr": pem}
        )
        if out is not None:
            out.write_text(body["certificate"])
        if chain is not None:
            chain.write_text(body["ca_chain"])
        if as_json:
            typer.echo(json.dumps(body))
        elif out is None:
            typer.echo(body["certificate"], nl=False)
        else:
            typer.echo(f"certificate {body['serial']} for {device_id} (until {body['not_after']})")

    @group.command("revoke")
    def revoke(
        device_id: Annotated[str, typer.Argument(help="device id")],
        reason: Annotated[
            str,
            typer.Option(
                "--reason", help="key_compromise, superseded, cessation_of_operation, ..."
            ),
        ] = "unspecified",
        as_json: JsonOpt = False,
    ) -> None:
        """Revoke every certificate of a device and re-sign the CRL (then reload the
        broker). Decommissioning does this by itself. Needs admin."""
        body = client().request(
            "POST", f"/api/v1/devices/{device_id}/revoke", json={"reason": reason}
        )
        if as_json:
            typer.echo(json.dumps(body))
        elif body["revoked_serials"]:
            typer.echo(f"revoked {', '.join(body['revoked_serials'])}; reload the broker")
        else:
            typer.echo(f"{device_id} had no valid certificate left")

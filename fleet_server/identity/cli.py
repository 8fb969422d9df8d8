"""``ca``: the fleet certificate authority on the command line (mounted as
``fleet-server ca``).

Typical first run::

    fleet-server ca init-root --out /media/offline/edgefleet-root
    fleet-server ca init-issuing --root /media/offline/edgefleet-root --out /var/lib/edgefleet/ca
    export FLEET_CA_DIR=/var/lib/edgefleet/ca
    fleet-server ca server-cert --out /etc/edgefleet/broker --host broker.example --host 127.0.0.1
    fleet-server ca service-cert svc-ingest --out /etc/edgefleet/ingest --mqtt-url ... --api-url ...
    fleet-server ca mosquitto-config --server-dir /etc/edgefleet/broker --out /etc/mosquitto/conf.d
    fleet-server ca nats-config --out /etc/nats/fleet-auth.conf   # the [nats] back-end instead
    fleet-server ca provision pi-0001 --out ./pi-0001 --mqtt-url ... --api-url ...
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from cryptography.hazmat.primitives import serialization

from firmware_bundles.files import write_public_file
from fleet_server.identity import ca_store
from fleet_server.identity.certificates import common_name
from fleet_server.identity.errors import IdentityError
from fleet_server.identity.mosquitto_config import (
    DEFAULT_PERSISTENCE_DIR,
    DEFAULT_QUEUE_BYTES,
    DEFAULT_SERVICES,
    BrokerSettings,
    write_broker_config,
)
from protocol.credentials import BundleError, CredentialsBundle

MIB = 1024 * 1024

ca_app = typer.Typer(
    name="ca",
    help=(
        "Fleet certificate authority: an offline root, an online issuing CA, device and "
        "service certificates, server TLS certificates, revocation (CRL) and the broker's "
        "Mosquitto configuration."
    ),
    no_args_is_help=True,
    add_completion=False,
)

CaDir = Annotated[
    Path,
    typer.Option(
        "--ca",
        envvar="FLEET_CA_DIR",
        help="Issuing CA directory (made by 'ca init-issuing'); or set FLEET_CA_DIR.",
        file_okay=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
MqttUrl = Annotated[
    str, typer.Option("--mqtt-url", envvar="FLEET_MQTT_URL", help="Broker URL for the device.")
]
ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="FLEET_API_URL", help="Fleet API URL for the device.")
]
Days = Annotated[int, typer.Option("--days", min=1, max=3650, help="Validity in days.")]


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the CA's expected errors into one clear line and exit status 1."""
    try:
        yield
    except (IdentityError, BundleError, ValueError) as exc:
        _fail(str(exc))
    except PermissionError as exc:
        _fail(f"permission denied: {exc.filename}")
    except OSError as exc:
        _fail(f"{exc.filename or 'file system'}: {exc.strerror or exc}")


def _read_passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        secret = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        _fail(f"cannot read passphrase file {path}: {exc.strerror}")
    if not secret:
        _fail(f"passphrase file {path} is empty")
    return secret


def _read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {what} {path}: {exc.strerror}")


def _bundle_summary(bundle: CredentialsBundle) -> dict[str, str]:
    return {
        "device_id": bundle.device_id,
        "directory": str(bundle.directory),
        "serial": f"{bundle.certificate.serial_number:x}",
        "not_after": bundle.not_after.isoformat(),
    }


def _emit(as_json: bool, data: dict[str, object], text: str) -> None:
    typer.echo(json.dumps(data) if as_json else text)


@ca_app.command("init-root")
def init_root(
    out: Annotated[Path, typer.Option("--out", help="New directory for the root CA.")],
    passphrase_file: Annotated[
        Path | None,
        typer.Option(help="Encrypt the root key with the passphrase in this file."),
    ] = None,
    name: Annotated[str, typer.Option(help="Root CA common name.")] = "Edgefleet Root CA",
    years: Annotated[int, typer.Option(min=1, max=30, help="Validity in years.")] = 10,
) -> None:
    """Create the root CA (keep its directory offline; it only signs issuing CAs)."""
    with _user_errors():
        cert = ca_store.init_root(
            out,
            _now(),
            passphrase=_read_passphrase(passphrase_file),
            name=name,
            validity=timedelta(days=365 * years),
        )
    typer.echo(
        f"root CA {common_name(cert)!r} written to {out} "
        f"(valid to {cert.not_valid_after_utc:%Y-%m-%d})"
    )
    typer.echo("Keep this directory offline; it is needed again only for 'ca init-issuing'.")


@ca_app.command("init-issuing")
def init_issuing(
    root: Annotated[Path, typer.Option("--root", help="The root CA directory.")],
    out: Annotated[Path, typer.Option("--out", help="New directory for the issuing CA.")],
    root_passphrase_file: Annotated[
        Path | None, typer.Option(help="File holding the root key's passphrase.")
    ] = None,
    name: Annotated[str, typer.Option(help="Issuing CA common name.")] = "Edgefleet Issuing CA",
    years: Annotated[int, typer.Option(min=1, max=20, help="Validity in years.")] = 5,
) -> None:
    """Create the online issuing CA signed by the root, with an empty CRL."""
    with _user_errors():
        ca = ca_store.init_issuing(
            root,
            out,
            _now(),
            root_passphrase=_read_passphrase(root_passphrase_file),
            name=name,
            validity=timedelta(days=365 * years),
        )
    typer.echo(f"issuing CA written to {out}")
    typer.echo(f"  broker cafile:  {ca.chain_path}")
    typer.echo(f"  broker crlfile: {ca.crl_path}")


@ca_app.command("issue")
def issue(
    csr: Annotated[Path, typer.Option("--csr", help="The device's CSR (PEM or DER).")],
    device_id: Annotated[
        str, typer.Option("--device-id", help="Device id the CSR must name as its CN.")
    ],
    ca: CaDir,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the certificate here (default: stdout).")
    ] = None,
    days: Days = 365,
    as_json: JsonFlag = False,
) -> None:
    """Certify a device's own key from its CSR (claim flow: the key never leaves it)."""
    data = _read_input(csr, "CSR")
    with _user_errors():
        authority = ca_store.CertificateAuthority.load(ca)
        cert = authority.issue_csr(data, device_id, _now(), timedelta(days=days))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if out is None and not as_json:
        typer.echo(pem.decode(), nl=False)
        return
    if out is not None:
        write_public_file(out, pem)
    _emit(
        as_json,
        {
            "device_id": device_id,
            "serial": f"{cert.serial_number:x}",
            "not_after": cert.not_valid_after_utc.isoformat(),
            "certificate": str(out) if out else pem.decode(),
            "ca_chain": str(authority.chain_path),
        },
        f"certificate for {device_id} written to {out} (serial {cert.serial_number:x})",
    )


@ca_app.command("renew")
def renew(
    cert: Annotated[Path, typer.Option("--cert", help="The device's current certificate.")],
    csr: Annotated[Path, typer.Option("--csr", help="CSR for the (new) device key.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the new certificate.")],
    ca: CaDir,
    days: Days = 365,
    as_json: JsonFlag = False,
) -> None:
    """Renew a device certificate that is still valid and not revoked."""
    presented, request = _read_input(cert, "certificate"), _read_input(csr, "CSR")
    with _user_errors():
        new = ca_store.CertificateAuthority.load(ca).renew(
            presented, request, _now(), timedelta(days=days)
        )
    write_public_file(out, new.public_bytes(serialization.Encoding.PEM))
    _emit(
        as_json,
        {
            "device_id": common_name(new),
            "serial": f"{new.serial_number:x}",
            "certificate": str(out),
        },
        f"renewed certificate for {common_name(new)} written to {out}",
    )


@ca_app.command("provision")
def provision(
    device_id: Annotated[str, typer.Argument(help="The device id (certificate CN).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the credentials bundle.")],
    ca: CaDir,
    mqtt_url: MqttUrl,
    api_url: ApiUrl,
    tuf_root: Annotated[
        Path | None, typer.Option(help="Trusted TUF root.json to ship with the device.")
    ] = None,
    days: Days = 365,
    as_json: JsonFlag = False,
) -> None:
    """Factory provisioning: generate a key, issue its certificate, write the bundle."""
    root_json = _read_input(tuf_root, "TUF root") if tuf_root else None
    with _user_errors():
        bundle = ca_store.CertificateAuthority.load(ca).provision(
            device_id,
            out,
            _now(),
            mqtt_url=mqtt_url,
            api_url=api_url,
            tuf_root=root_json,
            validity=timedelta(days=days),
        )
    _emit(
        as_json,
        _bundle_summary(bundle),
        f"credentials for {device_id} written to {out} (valid to {bundle.not_after:%Y-%m-%d})",
    )


@ca_app.command("service-cert")
def service_cert(
    service: Annotated[str, typer.Argument(help="Service identity, e.g. svc-ingest.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the credentials.")],
    ca: CaDir,
    mqtt_url: MqttUrl,
    api_url: ApiUrl,
    days: Days = 365,
    as_json: JsonFlag = False,
) -> None:
    """Client credentials for a fleet service (its broker rights come from the ACL file)."""
    with _user_errors():
        bundle = ca_store.CertificateAuthority.load(ca).service_credentials(
            service, out, _now(), mqtt_url=mqtt_url, api_url=api_url, validity=timedelta(days=days)
        )
    _emit(as_json, _bundle_summary(bundle), f"credentials for {service} written to {out}")


@ca_app.command("server-cert")
def server_cert(
    out: Annotated[Path, typer.Option("--out", help="Directory for server.key/server.crt.")],
    ca: CaDir,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="DNS name or IP clients use (repeat). Default: localhost, 127.0.0.1."
        ),
    ] = None,
    days: Days = 397,
) -> None:
    """TLS certificate for the broker or the API, issued by the fleet's issuing CA."""
    hosts = host or ["localhost", "127.0.0.1"]
    with _user_errors():
        cert = ca_store.CertificateAuthority.load(ca).server_certificate(
            hosts, out, _now(), timedelta(days=days)
        )
    typer.echo(
        f"server certificate for {', '.join(hosts)} written to {out} "
        f"(valid to {cert.not_valid_after_utc:%Y-%m-%d})"
    )


@ca_app.command("revoke")
def revoke(
    ca: CaDir,
    serial: Annotated[str | None, typer.Option(help="Serial number (hex) to revoke.")] = None,
    device: Annotated[
        str | None, typer.Option(help="Revoke every certificate of this device (decommission).")
    ] = None,
    reason: Annotated[
        str, typer.Option(help="One of: " + ", ".join(ca_store.REVOCATION_REASONS))
    ] = "unspecified",
    days: Annotated[int, typer.Option("--days", min=1, max=90, help="CRL validity.")] = 7,
    as_json: JsonFlag = False,
) -> None:
    """Revoke a certificate (or all of a device's) and rewrite the CRL.

    Then reload the broker (SIGHUP) so it reads the new CRL.
    """
    if (serial is None) == (device is None):
        _fail("give exactly one of --serial or --device")
    with _user_errors():
        authority = ca_store.CertificateAuthority.load(ca)
        done = authority.revoke(
            _now(), serial=serial, cn=device, reason=reason, crl_validity=timedelta(days=days)
        )
    _emit(
        as_json,
        {"revoked": [r.serial for r in done], "crl": str(authority.crl_path)},
        (
            f"revoked {len(done)} certificate(s): {', '.join(r.serial for r in done) or 'none new'}"
            f"\nCRL rewritten: {authority.crl_path} (reload the broker: systemctl reload mosquitto)"
        ),
    )


@ca_app.command("crl")
def crl(
    ca: CaDir,
    days: Annotated[int, typer.Option("--days", min=1, max=90, help="CRL validity.")] = 7,
) -> None:
    """Re-sign the CRL with a fresh next-update.

    Run it daily from a timer, then reload the broker: an expired CRL locks every client
    out.
    """
    with _user_errors():
        authority = ca_store.CertificateAuthority.load(ca)
        new = authority.write_crl(_now(), timedelta(days=days))
    typer.echo(
        f"CRL {authority.crl_path} re-signed: {len(list(new))} revoked, next update "
        f"{new.next_update_utc:%Y-%m-%d %H:%M} UTC"
    )


@ca_app.command("list")
def list_certificates(ca: CaDir, as_json: JsonFlag = False) -> None:
    """List every certificate the issuing CA has issued."""
    with _user_errors():
        records = ca_store.CertificateAuthority.load(ca).records()
    if as_json:
        typer.echo(json.dumps({"certificates": [asdict(r) for r in records]}))
        return
    for r in records:
        state = f"revoked {r.revoked_at[:10]} ({r.reason})" if r.revoked_at else "valid"
        typer.echo(f"{r.serial:>40}  {r.kind:<7}  {r.cn:<24}  to {r.not_after[:10]}  {state}")


@ca_app.command("mosquitto-config")
def mosquitto_config(
    ca: CaDir,
    server_dir: Annotated[
        Path, typer.Option(help="Directory made by 'ca server-cert' (server.key, server.crt).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory for mosquitto.conf and fleet.acl.")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
    bind: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    service: Annotated[
        list[str] | None,
        typer.Option("--service", help="Service identity allowed to read all devices (repeat)."),
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="Account Mosquitto runs as when started as root.")
    ] = None,
    persistence_dir: Annotated[
        Path,
        typer.Option(help="Where Mosquitto saves sessions and queues (writable by its account)."),
    ] = DEFAULT_PERSISTENCE_DIR,
    queue_mib: Annotated[
        int,
        typer.Option(
            min=1, help="Per-client queue bound of an offline session, in MiB of payload."
        ),
    ] = DEFAULT_QUEUE_BYTES // MIB,
    max_connections: Annotated[
        int, typer.Option(min=-1, help="Clients the listener accepts at once (-1: no limit).")
    ] = -1,
) -> None:
    """Write the broker configuration (mosquitto.conf and its ACL file).

    Mutual TLS with the fleet CA, the CRL, identity from the certificate CN, ACLs that
    confine every device to its own topics, and persistent sessions whose queues are
    bounded by bytes (see README, Limits, for what the bound means in minutes).
    """
    with _user_errors():
        authority = ca_store.CertificateAuthority.load(ca)
        out.mkdir(parents=True, exist_ok=True)
        settings = BrokerSettings(
            cafile=authority.chain_path.resolve(),
            certfile=(server_dir / ca_store.SERVER_CERT).resolve(),
            keyfile=(server_dir / ca_store.SERVER_KEY).resolve(),
            crlfile=authority.crl_path.resolve(),
            acl_file=(out / "fleet.acl").resolve(),
            port=port,
            bind_address=bind,
            services=tuple(service or DEFAULT_SERVICES),
            user=user,
            persistence_dir=persistence_dir.resolve(),
            queue_bytes=queue_mib * MIB,
            max_connections=max_connections,
        )
        write_broker_config(settings, out / "mosquitto.conf")
    typer.echo(f"wrote {out / 'mosquitto.conf'} and {out / 'fleet.acl'}")
    typer.echo(f"run: mosquitto -c {(out / 'mosquitto.conf').resolve()}")


@ca_app.command("nats-config")
def nats_config(
    ca: CaDir,
    out: Annotated[Path, typer.Option("--out", help="File for the NATS authorisation.")],
) -> None:
    """Write the NATS authorisation (one user per device and service certificate that is
    valid now, each device confined to its own subjects); include it from every node's
    configuration and reload the nodes after provisioning or revoking."""
    from fleet_server.identity.nats_config import identities, render_authorization

    with _user_errors():
        authority = ca_store.CertificateAuthority.load(ca)
        ids = identities(authority.records(), datetime.now(UTC))
        write_public_file(out, render_authorization(ids).encode())
    typer.echo(f"wrote {out}: {len(ids.devices)} devices, {len(ids.services)} services")
    for device in ids.skipped:
        typer.secho(
            f"left out {device}: a '.' in the id cannot be a NATS subject",
            fg=typer.colors.YELLOW,
            err=True,
        )


if __name__ == "__main__":  # until the server CLI mounts it: python -m fleet_server.identity.cli
    ca_app()

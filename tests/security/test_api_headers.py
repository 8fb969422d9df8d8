"""Issue 13, finding 7: HTTP hardening on a real ``fleet-server api``.

Security headers on every answer (200, 401, 404, 413) and HSTS only under TLS; the
trailing-slash redirect never takes its ``Location`` from the Host header; diagnostics
download as an ``application/octet-stream`` attachment whatever the device declared;
the 11th bad token from one source is refused 429 with ``Retry-After``; an expired
token is refused 401 ``token_expired``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet_server.api.headers import STRICT_CSP
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.identity import ca_store
from fleet_server.services.audit import SYSTEM
from fleet_server.services.commands import send_command
from fleet_server.services.registry import create_device, get_device
from tests.conftest import wait_for
from tests.support.api_process import ApiProcess, api_process

DEVICES = "/api/v1/devices"
BASELINE = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    with api_process(tmp_path_factory.mktemp("api")) as srv:
        yield srv


def _assert_hardened(r: httpx.Response, *, no_store: bool = True) -> None:
    for name, value in BASELINE.items():
        assert r.headers.get(name) == value, (r.status_code, name, dict(r.headers))
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    if no_store:
        assert r.headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in r.headers


def test_headers_on_success_and_every_refusal(server: ApiProcess) -> None:
    auth = {"Authorization": f"Bearer {server.admin}"}
    with server.client() as client:
        ok = client.get(DEVICES, headers=auth)
        assert ok.status_code == 200
        _assert_hardened(ok)
        anonymous = client.get(DEVICES)
        assert anonymous.status_code == 401
        _assert_hardened(anonymous)
        missing = client.get("/api/v1/nothing-here", headers=auth)
        assert missing.status_code == 404
        _assert_hardened(missing)
        big = client.post(DEVICES, content=b" " * (2 * 1024 * 1024), headers=auth)
        assert big.status_code == 413
        _assert_hardened(big)
        health = client.get("/healthz")
        _assert_hardened(health, no_store=False)
        assert health.headers["content-security-policy"] == STRICT_CSP


def test_trailing_slash_redirect_ignores_the_host_header(server: ApiProcess) -> None:
    auth = {"Authorization": f"Bearer {server.admin}"}
    with server.client() as client:
        r = client.get(f"{DEVICES}/?limit=5", headers={**auth, "Host": "evil.example"})
        assert r.status_code == 307
        assert r.headers["location"] == f"{DEVICES}?limit=5"
        # "//evil.example/" would be read by a browser as another site: never redirected.
        r = client.get("//evil.example/", headers=auth)
        assert r.status_code == 404
        assert "location" not in r.headers
        followed = client.get(f"{DEVICES}/", headers=auth, follow_redirects=True)
        assert followed.status_code == 200


class _Recorder:
    """Stands in for the broker so the test can read the upload URL sent to the device."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.payloads.append(payload)


def _upload_path(server: ApiProcess) -> str:
    """Register a device and issue it a collect_diagnostics command in the server's
    database; returns the one-time upload path the command carries."""
    engine = create_db_engine(f"sqlite:///{server.config.parent}/fleet.db")
    recorder = _Recorder()
    try:
        with make_session_factory(engine)() as s:
            now = time.time()
            create_device(s, {"device_id": "pi-diag", "serial": "SN-D"}, actor=SYSTEM, now=now)
            s.commit()
            send_command(
                s,
                recorder,
                get_device(s, "pi-diag"),
                "collect_diagnostics",
                actor=SYSTEM,
                now=now,
                ttl_s=600,
                base_url=server.url,
            )
    finally:
        engine.dispose()
    marker = b"/api/v1/diagnostics/upload/"
    payload = recorder.payloads[0]
    start = payload.index(marker)
    end = start + len(marker) + 43  # token_urlsafe(32)
    return payload[start:end].decode()


def test_diagnostics_download_is_always_an_octet_stream_attachment(server: ApiProcess) -> None:
    html = b"<html><script>alert(document.cookie)</script></html>"
    with server.client() as client:
        up = client.post(_upload_path(server), content=html, headers={"Content-Type": "text/html"})
        assert up.status_code == 201, up.text
        r = client.get(
            f"/api/v1/diagnostics/{up.json()['id']}",
            headers={"Authorization": f"Bearer {server.admin}"},
        )
    assert r.status_code == 200
    assert r.content == html
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["x-content-type-options"] == "nosniff"


def test_the_eleventh_bad_token_from_one_source_is_slowed_down(server: ApiProcess) -> None:
    # From 127.0.0.2, so the block does not touch the other tests' source address.
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    bad = {"Authorization": "Bearer efk_not-a-token"}
    with httpx.Client(base_url=server.url, transport=other, timeout=10) as attacker:
        codes = [attacker.get(DEVICES, headers=bad).status_code for _ in range(10)]
        assert codes == [401] * 10
        blocked = attacker.get(DEVICES, headers=bad)
        assert blocked.status_code == 429
        assert blocked.json()["error"]["code"] == "too_many_auth_failures"
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        # The block is per source: while blocked, even a good token from there waits...
        good = {"Authorization": f"Bearer {server.admin}"}
        assert attacker.get(DEVICES, headers=good).status_code == 429
    # ...and everyone else is served as before.
    with server.client() as client:
        assert client.get(DEVICES, headers=good).status_code == 200
        metrics = client.get("/metrics").text
    assert 'fleet_api_auth_failures_total{reason="unknown"} 10.0' in metrics


def test_an_expired_token_is_refused(server: ApiProcess) -> None:
    # About a second to live, created by the CLI (``token create --ttl-days``).
    secret = server.token("viewer", "short-lived", "--ttl-days", "0.00001")
    auth = {"Authorization": f"Bearer {secret}"}
    with server.client() as client:
        first = client.get(DEVICES, headers=auth)
        assert first.status_code in (200, 401)  # a slow machine may already be past it

        def expired() -> httpx.Response | None:
            r = client.get(DEVICES, headers=auth)
            return r if r.status_code == 401 else None

        r: Any = wait_for(expired, timeout=15, interval=0.2)
        assert r.json()["error"]["code"] == "token_expired"
        # The API takes ttl_days too and shows when a token expires.
        admin = {"Authorization": f"Bearer {server.admin}"}
        made = client.post(
            "/api/v1/tokens", json={"name": "ci", "role": "viewer", "ttl_days": 30}, headers=admin
        )
        assert made.status_code == 201, made.text
        expires = datetime.fromisoformat(made.json()["expires_at"])
        created = datetime.fromisoformat(made.json()["created_at"])
        assert round((expires - created).total_seconds()) == 30 * 86400
        assert client.get(
            DEVICES, headers={"Authorization": f"Bearer {made.json()['secret']}"}
        ).is_success


def test_hsts_only_under_tls(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ca_store.init_root(tmp_path / "root", now)
    ca = ca_store.init_issuing(tmp_path / "root", tmp_path / "issuing", now)
    ca.server_certificate(["127.0.0.1"], tmp_path / "cert", now)
    tls = f"""
[tls]
api_cert = "{tmp_path}/cert/server.crt"
api_key = "{tmp_path}/cert/server.key"
"""
    trust = ssl.create_default_context(cafile=str(ca.chain_path))
    with api_process(tmp_path, tls, verify=trust) as server, server.client() as client:
        for r in (client.get("/healthz"), client.get(DEVICES)):
            assert r.headers["strict-transport-security"] == "max-age=31536000"
            assert r.headers["x-content-type-options"] == "nosniff"

"""The API listener with the production TLS settings: HTTPS with the fleet CA's server
certificate, client certificates optional (verified against the chain when offered)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn

from fleet_server.api import create_app
from fleet_server.cli import _ssl_options
from fleet_server.fleetctl.client import EXIT_UNAVAILABLE
from fleet_server.identity import ca_store
from tests.conftest import free_port, wait_for
from tests.server_fixtures import settings_for

NOW = datetime.now(UTC).replace(microsecond=0)


def test_api_serves_https_and_accepts_optional_client_certificates(tmp_path: Path) -> None:
    ca_store.init_root(tmp_path / "root", NOW)
    ca = ca_store.init_issuing(tmp_path / "root", tmp_path / "issuing", NOW)
    ca.server_certificate(["127.0.0.1"], tmp_path / "api", NOW)
    device = ca.provision("pi-1", tmp_path / "pi-1", NOW, mqtt_url="mqtts://x", api_url="https://x")
    settings = settings_for(
        f"sqlite:///{tmp_path}/f.db",
        tls={
            "api_cert": str(tmp_path / "api/server.crt"),
            "api_key": str(tmp_path / "api/server.key"),
            "api_client_ca": str(ca.chain_path),
        },
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            **_ssl_options(settings),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}/healthz"
    trust = ssl.create_default_context(cafile=str(ca.chain_path))
    try:

        def up() -> bool:
            try:
                return httpx.get(url, verify=trust, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=15)
        # A device presenting its certificate is accepted as well.
        with_cert = ssl.create_default_context(cafile=str(ca.chain_path))
        with_cert.load_cert_chain(str(device.cert_path), str(device.key_path))
        assert httpx.get(url, verify=with_cert, timeout=5).status_code == 200
        # Plain HTTP gets no answer, and a client that does not trust the fleet CA refuses.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, verify=ssl.create_default_context(), timeout=5)
        # fleetctl trusts the system store, or the bundle SSL_CERT_FILE names.
        ctl = [str(Path(sys.executable).parent / "fleetctl"), "--url", url[: -len("/healthz")]]
        ctl += ["--token", "efk_unknown", "whoami"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "SSL_CERT"))}
        refused = subprocess.run(ctl, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == EXIT_UNAVAILABLE, refused.stderr  # not trusted
        env["SSL_CERT_FILE"] = str(ca.chain_path)
        trusted = subprocess.run(ctl, env=env, capture_output=True, text=True, timeout=60)
        # the API answered (this bare test app has no tables: any answer but unreachable)
        assert trusted.returncode != EXIT_UNAVAILABLE, trusted.stderr
        assert "unreachable" not in trusted.stderr
    finally:
        server.should_exit = True
        thread.join(timeout=10)

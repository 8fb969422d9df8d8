"""``fleet-sim demo`` (``make demo``): the whole product on one machine in about two minutes.

A fleet server (SQLite, embedded MQTT broker, development TUF root) runs as a subprocess
in a temporary directory; about 200 simulated gateways (the real agent core on
simulated hardware, each with its own MQTT connection) are registered from a factory CSV
and run live in this process, and one real ``fleet-agent`` process joins them
(:mod:`simulator.demo_agent`); a good and a bad bundle are published and rolled out in
stages (the good one completes, the bad one halts and rolls back by itself); a seized fan
raises an alarm; a recall campaign is opened and a warranty claim filed. Every step is
narrated. Everything is stopped and the temporary directory removed at the end, also on
Ctrl-C or a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from simulator.demo_agent import DEVICE_ID as REAL_DEVICE
from simulator.demo_agent import RealAgent, agent_config
from simulator.demo_server import (
    held_interrupts,
    server_command,
    server_config,
    start_process,
    two_free_ports,
)
from simulator.server_api import ServerApi, ServerError

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "live-demo.toml"
MODEL = "gw-100"
FAULTY_DEVICE = "gw-00007"
TIMING = {"download_s": 1.5, "install_s": 1.0, "reboot_s": 0.5, "trial_s": 1.5}
"""How long each update phase takes on a demo device (seconds)."""

FAST_POLICY: dict[str, Any] = {
    "waves": [{"percent": 10}, {"percent": 30}, {"percent": 60}],
    "stratify_by": ["hardware_revision"],
    "min_per_stratum": 3,
    "min_sample": 5,
    "canary_in_flight": 20,
    "bake_s": 3,
    "health_gates": [],
    "failure_criteria": [
        {"failure_class": "any", "max_rate": 0.25, "pass_gate": True},
        {"failure_class": "boot", "max_rate": 0.05},
        {"failure_class": "security", "max_rate": 0.01, "max_failures": 0},
    ],
    "timeouts": {
        "accept_s": 60,
        "download_s": 60,
        "install_s": 60,
        "reboot_s": 60,
        "commit_s": 60,
    },
}
"""A rollout policy for a demo: small sample, seconds of bake (production: minutes)."""


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


class Narrator:
    """Numbered steps and plain explanations for a newcomer."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.n = 0
        self.t0 = time.monotonic()

    def step(self, title: str, text: str = "") -> None:
        """Announce a step."""
        self.n += 1
        elapsed = time.monotonic() - self.t0
        self.console.rule(f"[bold]{self.n}. {title}[/bold] [dim]({elapsed:.0f}s)[/dim]")
        if text:
            self.console.print(text, highlight=False)

    def say(self, text: str) -> None:
        """One line of narration."""
        self.console.print(f"  {text}", highlight=False)

    def ok(self, text: str) -> None:
        """A result the newcomer should notice."""
        self.console.print(f"  [green]✔[/green] {text}", highlight=False)


class Api(ServerApi):
    """The REST calls the demo makes (JSON bodies)."""

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST a JSON body."""
        data = json.dumps(body or {}).encode()
        return self._request("POST", path, body=data, content_type="application/json")

    def get(self, path: str, **query: Any) -> Any:
        """GET with query parameters."""
        return self._request("GET", path, query or None)

    def upload(self, path: str, data: bytes) -> Any:
        """POST raw bytes (a bundle)."""
        return self._request("POST", path, body=data, content_type="application/octet-stream")


def wait_until(
    what: str, probe: Callable[[], Any], timeout: float, *, check: Callable[[], None] | None = None
) -> Any:
    """Poll ``probe`` until it returns something truthy; :class:`DemoError` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


class Demo:
    """The demo's resources: temp dir, server subprocess, live fleet thread."""

    def __init__(self, console: Console, devices: int, keep: Path | None) -> None:
        self.console = console
        self.n_devices = devices
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
        self.server: subprocess.Popen[bytes] | None = None
        self.engine: Any = None
        self.engine_thread: threading.Thread | None = None
        self.engine_error: BaseException | None = None
        self.real: RealAgent | None = None
        self.api_port, self.mqtt_port = two_free_ports()
        self.token = ""
        self.console_password = ""
        self.log_path = self.tmp / "fleet-server.log"
        self.say = Narrator(console)
        self.explored = False
        self.api = Api(self.url, None)

    # --- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Stop the real agent, the fleet and the server, remove the temporary directory."""
        if self.real is not None:
            self.real.stop()
        if self.engine is not None:
            self.engine.request_stop()
        if self.engine_thread is not None:
            self.engine_thread.join(timeout=30)
        self._stop_server()
        if self.keep is not None:
            with contextlib.suppress(OSError):
                shutil.copy(self.log_path, self.keep / "fleet-server.log")
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def url(self) -> str:
        """The API's base URL (follows the port, which a retry may change)."""
        return f"http://127.0.0.1:{self.api_port}"

    def _stop_server(self) -> None:
        """SIGTERM the server process if it runs (SIGKILL after 20 s)."""
        if self.server is not None and self.server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=10)

    def _server_alive(self) -> None:
        if self.server is not None and self.server.poll() is not None:
            raise DemoError(
                f"the fleet server exited with status {self.server.returncode}:\n"
                + self._log_tail()
            )
        if self.engine_error is not None:
            raise DemoError(f"the simulated fleet stopped: {self.engine_error}")
        if self.real is not None and self.real.exited() is not None:
            tail = "\n".join(self.real.log().splitlines()[-15:])
            raise DemoError(f"the real agent exited with status {self.real.exited()}:\n{tail}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # --- steps -----------------------------------------------------------------------

    def start_server(self) -> None:
        """``fleet-server init`` then ``fleet-server run`` on free loopback ports."""
        say = self.say
        say.step(
            "Start a fleet server",
            "The fleet server keeps the device registry, ingests what devices report over "
            "MQTT, turns faults into alarms, serves the signed update repository and runs "
            "staged rollouts. For the demo it runs on SQLite with its embedded MQTT broker, "
            f"in {self.tmp}.",
        )
        config = self.tmp / "fleet-server.toml"
        config.write_text(server_config(self.tmp, self.api_port, self.mqtt_port))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        init = subprocess.run(
            server_command("init", "--config", str(config), "--json"),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        if init.returncode != 0:
            raise DemoError(f"fleet-server init failed: {(init.stderr or init.stdout).strip()}")
        try:
            made = json.loads(init.stdout.strip().splitlines()[-1])
            self.token, self.console_password = made["admin_token"], made["console_password"]
        except (ValueError, KeyError, IndexError):
            raise DemoError(f"fleet-server init said: {init.stdout.strip()}") from None
        say.ok("database and TUF repository created (a DEVELOPMENT root: demo only)")

        for attempt in range(3):  # a chosen port may be taken before the server binds it
            with held_interrupts():
                self.server = start_process(
                    server_command("run", "--config", str(config)), self.log_path, env=env
                )
            self.api = Api(self.url, self.token, timeout=30)
            try:
                wait_until("the server's /healthz", self.api.healthy, 60, check=self._server_alive)
                break
            except DemoError:
                if "Address already in use" not in self._log_tail() or attempt == 2:
                    raise
            self._stop_server()
            say.say("a port was taken by another program meanwhile: trying two others")
            self.api_port, self.mqtt_port = two_free_ports()
            config.write_text(server_config(self.tmp, self.api_port, self.mqtt_port))
        say.ok(f"API on {self.url} (docs: {self.url}/docs), MQTT on 127.0.0.1:{self.mqtt_port}")
        say.ok(f"web console {self.console_url}")

    def start_fleet(self) -> None:
        """Register the fleet (factory CSV import) and run it live."""
        import paho.mqtt.client as mqtt

        from simulator.engine import agent_settings, build_devices
        from simulator.fleet_builder import build_fleet
        from simulator.live import LiveEngine
        from simulator.scenario import load_scenario
        from simulator.server_api import ServerRegistrar
        from simulator.timeline import Timeline
        from simulator.update_backends import DeviceUpdates, TufTargets, UpdateTiming

        say = self.say
        say.step(
            f"Provision {self.n_devices} simulated gateways",
            "Each simulated gateway runs the real agent core (fault rules, store and "
            "forward, update flow) on simulated hardware, with its own MQTT connection. "
            "The factory's CSV registers them with the server first.",
        )
        scenario = load_scenario(SCENARIO)
        scenario = replace(
            scenario,
            start=time.time(),
            fleet=replace(scenario.fleet, devices=self.n_devices),
        )
        fleet = build_fleet(scenario)
        added = ServerRegistrar(self.api).register(fleet)
        revisions: dict[str, int] = {}
        for spec in fleet:
            revisions[spec.hardware_revision] = revisions.get(spec.hardware_revision, 0) + 1
        say.ok(
            f"registered {added} devices (model {MODEL}: "
            + ", ".join(f"{n} × {rev}" for rev, n in sorted(revisions.items()))
            + ")"
        )
        from fleet_server.updates.tuf_repository import root_bytes

        root = root_bytes(self.tmp / "tuf")
        source = TufTargets(self.url, root, self.tmp / "device-tuf")
        timeline = Timeline(scenario, fleet)
        devices = build_devices(scenario, agent_settings(scenario), fleet=fleet, timeline=timeline)
        timing = UpdateTiming(**TIMING)
        for device in devices:
            DeviceUpdates(
                source,
                hardware_revision=device.spec.hardware_revision,
                model=device.spec.model,
                timing=timing,
            ).attach(device)
        self.engine = LiveEngine(
            devices,
            "127.0.0.1",
            self.mqtt_port,
            start=scenario.start,
            speed=1.0,
            seed=42,
            mqtt_protocol=mqtt.MQTTv311,  # the embedded broker speaks MQTT 3.1.1
        )
        engine = self.engine

        def run() -> None:
            try:
                asyncio.run(engine.run(scenario.start + scenario.duration_s, drain_s=5.0))
            except BaseException as exc:  # reported by the main thread
                self.engine_error = exc

        self.engine_thread = threading.Thread(target=run, name="sim-fleet", daemon=True)
        self.engine_thread.start()

        def online() -> int:
            count = int(self.api.get("/api/v1/fleet/summary")["presence"].get("online", 0))
            return count if count >= self.n_devices * 0.95 else 0

        count = wait_until("the devices to come online", online, 90, check=self._server_alive)
        say.ok(f"{count} devices online, reporting telemetry every 10 s")

    def start_real_agent(self) -> None:
        """One real ``fleet-agent`` process joins the fleet, registered through the API."""
        from fleet_server.updates.tuf_repository import root_bytes

        say = self.say
        say.step(
            "Start one real agent",
            "Beside the simulated gateways runs one real fleet-agent process: this "
            "machine's own vitals, A/B slot directories in the demo's directory, and the "
            "agent's default MQTT settings (MQTT 5 if the broker speaks it, else 3.1.1).",
        )
        registered = self.api.post(
            "/api/v1/devices",
            {"device_id": REAL_DEVICE, "model": MODEL, "hw_revision": "rev-a", "tags": ["real"]},
        )
        say.ok(f"registered {REAL_DEVICE} through the API (model {MODEL}, rev-a)")
        config = agent_config(
            self.tmp / "real-agent",
            broker=f"mqtt://127.0.0.1:{self.mqtt_port}",
            server_url=self.url,
            hardware_revision=registered.get("hw_revision") or "rev-a",
            model=MODEL,
        )
        self.real = RealAgent(self.tmp / "real-agent", config, root_bytes(self.tmp / "tuf"))
        self.real.start()

        def reporting() -> dict[str, Any] | None:
            items = self.api.telemetry(REAL_DEVICE, max_samples=1)
            return items[0] if items else None

        sample = wait_until(f"{REAL_DEVICE}'s telemetry", reporting, 60, check=self._server_alive)
        say.ok(
            f"{REAL_DEVICE} connected over MQTT {self.real.mqtt_version()} and reports: "
            f"cpu {sample.get('cpu_pct')} %, memory {sample.get('mem_pct')} %, "
            f"disk {sample.get('disk_pct')} % (its telemetry, read back through the API)"
        )

    def publish(self, example: str) -> dict[str, Any]:
        """Build an example bundle and publish it through the API."""
        from firmware_bundles.examples import build_examples

        built = build_examples(self.tmp / "bundles", (example,))[example]
        return dict(self.api.upload("/api/v1/bundles", built.path.read_bytes()))

    def publish_rerelease(self, example: str, version: str, release_counter: int) -> dict[str, Any]:
        """Re-release an example's payload as ``version`` with a higher release counter: the
        known-good release a rollback goes back to (devices never go down in release order)."""
        import json as _json
        import shutil

        from firmware_bundles.build import build_bundle
        from firmware_bundles.examples import EXAMPLES_DIR

        src = self.tmp / "rerelease" / example
        if src.exists():
            shutil.rmtree(src)
        shutil.copytree(EXAMPLES_DIR / example, src)
        manifest_path = src / "manifest.json"
        manifest = _json.loads(manifest_path.read_text())
        manifest.update(version=version, release_counter=release_counter)
        manifest_path.write_text(_json.dumps(manifest, indent=2))
        built = build_bundle(src, self.tmp / "bundles")
        return dict(self.api.upload("/api/v1/bundles", built.path.read_bytes()))

    def rollout(self, bundle: str, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Create and start a rollout, then follow it until it settles."""
        say = self.say
        created = self.api.post(
            "/api/v1/rollouts",
            {"name": name, "bundle": bundle, "selector": {"model": MODEL}, "policy": policy},
        )
        rollout_id = created["id"]
        self.api.post(
            f"/api/v1/rollouts/{rollout_id}/start",
            {"force_reason": "demo: no pre-production stage on this machine"},
        )
        say.say(f"rollout {rollout_id} started: waves of 10 %, 30 %, 60 % of the fleet")
        last = ""
        settled = ("completed", "halted", "rolled_back", "cancelled", "paused")

        def done() -> dict[str, Any] | None:
            nonlocal last
            status = self.api.get(f"/api/v1/rollouts/{rollout_id}")
            line = f"state {status['state']}, wave {status['current_wave'] + 1}/" + str(
                status["waves_total"]
            )
            counts = _counts(status)
            if counts:
                line += " · " + ", ".join(f"{k} {v}" for k, v in counts.items())
            if line != last:
                say.say(f"[dim]{line}[/dim]")
                last = line
            return status if status["state"] in settled else None

        return dict(wait_until(f"rollout {rollout_id}", done, 150, check=self._server_alive))

    def run(self) -> None:
        """Every step, in order."""
        say = self.say
        self.start_server()
        self.start_fleet()
        self.start_real_agent()

        say.step(
            "Publish two bundles",
            "A bundle is a signed firmware package. The server verifies it and signs it "
            "into its TUF repository; devices verify every download against that metadata.",
        )
        good = self.publish("good-1.2.0")
        say.ok(f"published {good['name']} (version {good['version']}, healthy)")
        bad = self.publish("boot-crash")
        say.ok(f"published {bad['name']} (version {bad['version']}, crashes on boot)")

        say.step(
            "Staged rollout of the good bundle",
            "The rollout sends the bundle wave by wave; each wave must show, with "
            "statistical confidence, that installs succeed before the next one starts.",
        )
        status = self.rollout(good["name"], "demo-good", FAST_POLICY)
        if status["state"] != "completed":
            raise DemoError(
                f"the good rollout ended {status['state']}: {status.get('halt_reason')}"
            )
        committed = _counts(status).get("committed", 0)
        say.ok(f"rollout completed: {status['id']} ({committed} devices committed 1.2.0)")
        real = self.api.device(REAL_DEVICE)
        if real.get("software_version") != good["version"]:
            raise DemoError(f"{REAL_DEVICE} runs {real.get('software_version')}, not 1.2.0")
        slot, version = (self.real.committed_slot() if self.real else None) or ("?", "?")
        say.ok(f"the real agent {REAL_DEVICE} committed 1.2.0 too: {slot} holds {version}")

        say.step(
            "Staged rollout of the bad bundle",
            "The canary devices install it, crash on boot, and their boot loader falls back "
            "to the old slot. The rollout halts on the boot-failure criterion and, with "
            "on_halt = rollback, rolls itself back; the rest of the fleet never sees it.",
        )
        known_good = self.publish_rerelease("good-1.2.0", "1.2.1", 5)
        say.ok(
            f"published {known_good['name']}: the 1.2.0 payload re-released as 1.2.1 with a "
            "higher release counter, the known-good target of a rollback"
        )
        policy = {**FAST_POLICY, "on_halt": {"action": "rollback", "rollback_to": "1.2.1"}}
        status = self.rollout(bad["name"], "demo-bad", policy)
        if status["state"] not in ("rolled_back", "halted"):
            raise DemoError(f"the bad rollout ended {status['state']} instead of halting")
        say.ok(
            f"rollout halted and {status['state'].replace('_', ' ')}: {status['id']} "
            f"({status.get('halt_reason') or 'halted'})"
        )

        say.step(
            "A hardware fault becomes an alarm",
            f"Gateway {FAULTY_DEVICE}'s fan seized shortly after it started. Its agent's "
            "fault rule raised fan_stopped; the server turned it into an alarm.",
        )

        def alarm() -> dict[str, Any] | None:
            items = self.api.get(f"/api/v1/devices/{FAULTY_DEVICE}/alarms")["items"]
            fan = [a for a in items if a.get("code") == "fan_stopped"]
            return fan[0] if fan else None

        found = wait_until("the fan alarm", alarm, 60, check=self._server_alive)
        say.ok(
            f"alarm: {FAULTY_DEVICE} fan_stopped ({found.get('severity')}, {found.get('state')})"
        )

        spec_batch = self.api.device(FAULTY_DEVICE).get("batch") or "B2025-12"
        say.step(
            "Open a recall and file a warranty claim",
            f"Suppose the fans of {FAULTY_DEVICE}'s batch, {spec_batch}, are faulty: a recall "
            "campaign freezes the affected population; a customer's warranty claim is checked "
            "against the device's own evidence.",
        )
        recall = self.api.post(
            "/api/v1/recalls",
            {
                "id": "RC-DEMO-001",
                "title": f"Fan bearings of batch {spec_batch}",
                "description": "Fans of this batch may seize; inspect and replace.",
                "scope": {"models": [MODEL], "batches": [spec_batch]},
                "physical_action": "inspect",
            },
        )
        opened = self.api.post(f"/api/v1/recalls/{recall['id']}/open")
        members = (opened.get("completion") or {}).get("population")
        say.ok(f"recall opened: {recall['id']} ({members} devices of batch {spec_batch} frozen in)")
        with contextlib.suppress(ServerError):
            self.api._request(
                "PUT",
                "/api/v1/warranty/rules",
                body=json.dumps({"model": MODEL, "months": 24, "covers": ["*"]}).encode(),
                content_type="application/json",
            )
        claim = self.api.post(
            "/api/v1/claims",
            {
                "device": FAULTY_DEVICE,
                "failure_mode": "fan_stopped",
                "failure_date": time.strftime("%Y-%m-%d", time.gmtime()),
                "part_kind": "fan",
                "description": "Customer reports the unit runs hot and the fan is silent.",
            },
        )
        say.ok(
            f"claim filed: {claim.get('id')} for {FAULTY_DEVICE} "
            f"(status {claim.get('status') or claim.get('state')})"
        )

    @property
    def console_url(self) -> str:
        """Where the console is, with the demo user's sign-in (printed, demo only)."""
        return f"{self.url}/console/ (user admin, password {self.console_password})"

    def explore(self) -> None:
        """Keep everything running until Ctrl-C (``--explore``)."""
        self.explored = True
        self.console.print(
            f"[bold]Still running.[/bold] Try, in another terminal:\n"
            f"  export FLEET_URL={self.url} FLEET_TOKEN={self.token}\n"
            "  fleetctl rollout list\n"
            f"  fleetctl devices show {FAULTY_DEVICE}\n"
            f"and open {self.console_url} (start on the overview's problem counters) "
            f"or {self.url}/docs. Press Ctrl-C to stop everything.",
            highlight=False,
        )
        while True:
            self._server_alive()
            time.sleep(1.0)

    def where_to_look(self) -> None:
        """What to try next (the server is gone once the demo ends)."""
        console = self.console
        console.rule("[bold]Where to look next[/bold]")
        console.print(
            "The demo stops its server and removes its files. To run your own:\n"
            "  fleet-server init && fleet-server run        # API docs at "
            "http://127.0.0.1:8080/docs\n"
            "  export FLEET_URL=http://127.0.0.1:8080 FLEET_TOKEN=<the token init printed>\n"
            "  fleetctl devices list --presence online\n"
            "  fleetctl bundle list\n"
            "  fleetctl rollout list\n"
            "  fleetctl executions list --status failed\n"
            "  fleet-sim run simulator/scenarios/live-demo.toml --broker mqtt://127.0.0.1:1883 "
            "--mqtt311 --server $FLEET_URL\n"
            "  fleet-sim bench <bundle.tar.gz>                # QA a candidate bundle\n"
            f"During this run the API was {self.url} (docs {self.url}/docs), admin token "
            f"{self.token}, console {self.console_url}; `fleet-sim demo --explore` keeps "
            "it running to try them.",
            highlight=False,
        )


def _counts(status: dict[str, Any]) -> dict[str, int]:
    """Executions by status over every wave of a rollout status."""
    totals: dict[str, int] = {}
    for wave in status.get("waves") or []:
        for key, value in wave.items():
            if key != "wave" and isinstance(value, int | float):
                totals[key] = totals.get(key, 0) + int(value)
    return totals


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C (cleanup runs)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(
    console: Console, *, devices: int = 200, keep: Path | None = None, explore: bool = False
) -> int:
    """Run the demo; returns the exit status (0 success, 1 a step failed, 130 Ctrl-C).

    With ``explore`` the server and fleet keep running after the last step until Ctrl-C,
    so the API docs and ``fleetctl`` can be tried against them."""
    import logging

    logging.getLogger("agent").setLevel(logging.CRITICAL)
    logging.getLogger("simulator").setLevel(logging.CRITICAL)
    demo = Demo(console, devices, keep)
    started = time.monotonic()
    try:
        with _terminate_as_interrupt():
            demo.run()
            demo.where_to_look()
            if explore:
                demo.explore()
    except KeyboardInterrupt:
        if explore and demo.explored:
            console.print("stopping the server and the fleet")
            demo.close()
            return 0
        console.print("[yellow]interrupted: stopping everything[/yellow]")
        return 130
    except (DemoError, ServerError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}", highlight=False)
        return 1
    finally:
        demo.close()
    console.print(
        f"[bold green]Demo finished in {time.monotonic() - started:.0f}s[/bold green]; "
        "the server is stopped and nothing is left running."
    )
    return 0


__all__ = ["FAST_POLICY", "DemoError", "run_demo", "server_config"]

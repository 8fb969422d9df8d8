"""``fleet-sim``: simulate devices for diagnosis, QA benches and demos.

Commands: ``run`` (a scenario, offline or against a broker), ``replay`` (a recorded signal
through the agent's fault rules), ``diagnose`` (rank fault hypotheses for a device),
``bench`` (QA: a candidate bundle through the real agent updater), ``demo`` (the whole
product on one machine).
User mistakes (bad files, bad options, unreachable server) end with one clear line and
exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from simulator import __version__
from simulator.hardware_faults import FAULTS
from simulator.replay_cli import replay_command

app = typer.Typer(
    name="fleet-sim",
    help="Simulate Edgefleet devices: scenarios, fault replay and diagnosis, QA benches.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]fleet-sim:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(2)


@app.callback()
def _root() -> None:
    """Keep sub-commands as sub-commands even while there is only one."""


@app.command()
def version() -> None:
    """Print the simulator version."""
    typer.echo(f"fleet-sim {__version__}")


# --- run -------------------------------------------------------------------------------


def _broker(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ValueError(f"expected mqtt://host[:port], got {url!r}")
    return parsed.hostname, parsed.port or 1883


def _progress_table(snap, title: str, extra: dict[str, object] | None = None) -> Table:
    table = Table(title=title, show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(snap.sim_time))
    rows = {
        "simulated time": when,
        "devices running / online": f"{snap.running} / {snap.online} of {snap.devices}",
        "samples": f"{snap.samples:,}",
        "messages delivered": f"{snap.messages:,}",
        "queued on devices": f"{snap.queued:,}",
        "faults raised / cleared": f"{snap.faults_raised} / {snap.faults_cleared}",
        "boots": f"{snap.boots}",
    }
    rows.update({k: str(v) for k, v in (extra or {}).items()})
    if snap.open_faults:
        rows["open faults"] = ", ".join(f"{k} {v}" for k, v in sorted(snap.open_faults.items()))
    for k, v in rows.items():
        table.add_row(k, v)
    return table


@app.command()
def run(
    scenario_file: Annotated[Path, typer.Argument(metavar="SCENARIO", help="scenario TOML")],
    speed: Annotated[
        float | None,
        typer.Option(help="real-time factor in live mode (default: the scenario's, else 1)"),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(help="mqtt://host:port: run live, each device with its own connection"),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="no broker: simulated time as fast as possible")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="override the scenario's seed")] = None,
    duration: Annotated[
        str | None, typer.Option(help="override the scenario's duration (e.g. 2h)")
    ] = None,
    adaptive: Annotated[
        list[str] | None, typer.Option(help="add an adaptive rule on this signal (repeatable)")
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="offline: write every message as JSON lines to this file"),
    ] = None,
    factory_csv: Annotated[
        Path | None, typer.Option(help="write the fleet's factory CSV here")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(envvar="FLEET_URL", help="fleet server URL: register the devices there"),
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="FLEET_TOKEN", help="API token for --server")
    ] = None,
    register: Annotated[
        bool,
        typer.Option(help="register the devices with the server first (live mode, --server)"),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    mqtt311: Annotated[
        bool,
        typer.Option(
            "--mqtt311",
            help="live: speak MQTT 3.1.1 only (by default MQTT 5, falling back to 3.1.1 "
            "when the broker refuses it, as the server's embedded broker does)",
        ),
    ] = False,
    updates_on: Annotated[
        bool,
        typer.Option(
            "--updates/--no-updates",
            help="live with --server: devices install updates from the server's TUF repository",
        ),
    ] = True,
    tuf_root: Annotated[
        Path | None,
        typer.Option(help="live: the trusted TUF root.json (default: fetched from the server)"),
    ] = None,
) -> None:
    """Run a scenario: offline (deterministic, as fast as possible) or live (--broker).

    Shows live progress (devices online, messages, faults, boots) and a summary at the
    end. With --server the devices are registered first (factory CSV import).
    """
    from dataclasses import replace

    from simulator.engine import (
        MemorySink,
        agent_settings,
        build_devices,
        jsonl_writer,
        run_offline,
    )
    from simulator.fleet_builder import build_fleet
    from simulator.scenario import ScenarioError, load_scenario
    from simulator.scenario_fields import parse_duration
    from simulator.server_api import ServerApi, ServerError, ServerRegistrar
    from simulator.timeline import Timeline

    try:
        scenario = load_scenario(scenario_file)
        if seed is not None:
            scenario = replace(scenario, seed=seed)
        if duration is not None:
            seconds = parse_duration(duration)
            if seconds <= 0:
                raise ValueError("--duration must be > 0")
            scenario = replace(scenario, duration_s=seconds)
        settings = agent_settings(scenario, adaptive or ())
    except ScenarioError as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:
        raise _fail(f"--duration: {exc}") from None
    if offline and broker:
        raise _fail("choose --offline or --broker, not both")
    # live: --broker, or a scenario with a [broker] and a real-time factor ("max" is offline)
    live = broker is not None or (
        not offline and scenario.broker is not None and scenario.speed is not None
    )
    if live:  # a live run is now: the devices' clocks are right and commands are current
        scenario = replace(scenario, start=float(int(time.time())))
    fleet = build_fleet(scenario)
    timeline = Timeline(scenario, fleet)
    if factory_csv is not None:
        from simulator.fleet_builder import write_factory_csv

        try:
            write_factory_csv(fleet, factory_csv)
        except OSError as exc:
            raise _fail(f"cannot write {factory_csv}: {exc.strerror or exc}") from None
        err.print(f"factory CSV with {len(fleet)} devices written to {factory_csv}")
    server_url = server or (scenario.server.url if scenario.server and live else None)
    if server_url and register:
        try:
            added = ServerRegistrar(ServerApi(server_url, token)).register(fleet)
        except ServerError as exc:
            raise _fail(f"registering the devices: {exc} (or run with --no-register)") from None
        err.print(f"registered {added} new device(s) with {server_url}")
    # every live start is a new boot: a fresh nonce in the boot ids (identities stay the
    # seed's), so a rerun is not deduplicated away by the server
    nonce = secrets.token_hex(8) if live else ""
    devices = build_devices(scenario, settings, fleet=fleet, timeline=timeline, boot_nonce=nonce)
    title = f"fleet-sim: {scenario.name} ({len(devices)} devices)"

    if not live:
        handle = None
        if out_file is not None:
            try:
                handle = out_file.open("w", encoding="utf-8")
            except OSError as exc:
                raise _fail(f"cannot write {out_file}: {exc.strerror or exc}") from None
        sink = MemorySink(jsonl_writer(handle) if handle else None)
        started = time.monotonic()
        try:
            with Live(console=err, transient=as_json, refresh_per_second=4) as display:
                result = run_offline(
                    scenario,
                    devices,
                    sink,
                    timeline=timeline,
                    slice_s=max(scenario.tick_s, min(3600.0, scenario.duration_s / 200)),
                    progress=lambda snap: display.update(_progress_table(snap, title)),
                )
        finally:
            if handle is not None:
                handle.close()
        summary = {
            "scenario": scenario.name,
            "mode": "offline",
            "seed": scenario.seed,
            "wall_s": round(time.monotonic() - started, 2),
            **result.as_dict(),
        }
        _print_summary(summary, as_json, title)
        return

    from simulator import live_run
    from simulator.live import LiveEngine

    try:
        if broker:
            host, port = _broker(broker)
        else:
            assert scenario.broker is not None
            host, port = scenario.broker.host or "127.0.0.1", scenario.broker.port or 1883
    except ValueError as exc:
        raise _fail(f"--broker: {exc}") from None
    rate = speed or scenario.speed or 1.0
    import paho.mqtt.client as mqtt

    workdir = live_run.updates_workdir()
    updates = 0
    if server_url and updates_on:
        try:
            root = tuf_root.read_bytes() if tuf_root else live_run.fetch_tuf_root(server_url)
        except OSError as exc:
            raise _fail(f"updates: {exc} (or run with --no-updates)") from None
        updates = live_run.attach_updates(devices, server_url, root, Path(workdir.name))
        err.print(f"{updates} device(s) take updates from {server_url}/tuf/")
    engine = LiveEngine(
        devices,
        host,
        port,
        start=scenario.start,
        speed=rate,
        seed=scenario.seed,
        mqtt_protocol=mqtt.MQTTv311 if mqtt311 else mqtt.MQTTv5,
    )
    started = time.monotonic()
    end = scenario.start + scenario.duration_s
    reporter = live_run.Reporter(
        err, lambda snap, extra: _progress_table(snap, title, extra), quiet_table=as_json
    )
    try:
        final = live_run.run_engine(engine, end, reporter)
    except KeyboardInterrupt:
        raise _fail("interrupted") from None
    finally:
        workdir.cleanup()
    summary = {
        "scenario": scenario.name,
        "mode": "live",
        "broker": f"mqtt://{host}:{port}",
        "speed": rate,
        "wall_s": round(time.monotonic() - started, 2),
        **live_run.live_summary(engine, final, updates),
        "hooks": [
            {
                "at": scenario.start + ev.at,
                "kind": ev.kind,
                "params": ev.params,
                "status": "skipped: publish/rollout events are not executed yet",
            }
            for ev in timeline.hooks_due(scenario.start - 1, end)
        ],
    }
    _print_summary(summary, as_json, title)
    status = live_run.exit_status(engine)
    if status:
        err.print(
            f"[red]fleet-sim:[/red] no device ever connected to mqtt://{host}:{port}: "
            f"{engine.stats.last_failure or 'no answer'}",
            markup=True,
            highlight=False,
        )
        raise typer.Exit(status)


def _print_summary(summary: dict[str, object], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
        return
    table = Table(title=f"{title}: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        elif isinstance(value, list):
            value = f"{len(value)}"
        elif isinstance(value, float) and key == "sim_time":
            value = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
        table.add_row(key.replace("_", " "), str(value))
    out.print(table)


# --- replay ----------------------------------------------------------------------------

app.command("replay")(replay_command)


# --- diagnose --------------------------------------------------------------------------


@app.command()
def diagnose(
    device: Annotated[str, typer.Argument(metavar="DEVICE", help="device id")],
    server: Annotated[str | None, typer.Option(envvar="FLEET_URL", help="fleet server URL")] = None,
    token: Annotated[str | None, typer.Option(envvar="FLEET_TOKEN", help="API token")] = None,
    hours: Annotated[float, typer.Option(help="how much recent telemetry to fetch")] = 24.0,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="offline: telemetry CSV instead of the server")
    ] = None,
    time_col: Annotated[str, typer.Option(help="time column of --csv")] = "ts",
    messages: Annotated[
        Path | None,
        typer.Option(help="offline: the JSON lines written by fleet-sim run --out"),
    ] = None,
    scenario_file: Annotated[
        Path | None,
        typer.Option("--scenario", help="take the device's hardware and climate from a scenario"),
    ] = None,
    fault: Annotated[
        list[str] | None, typer.Option(help=f"test only these faults ({', '.join(FAULTS)})")
    ] = None,
    ambient: Annotated[float | None, typer.Option(help="ambient temperature, °C")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Rank fault hypotheses (fan, thermal paste, storage, power supply...) for a device.

    Takes the device's recent telemetry from the server (--server, --token) or a CSV
    (--csv), replays it through the agent's fault rules, simulates every hypothesis and
    ranks them by how well they reproduce the field signals.
    """
    from simulator.diagnose import diagnose as run_diagnosis
    from simulator.diagnose import read_messages_jsonl, read_telemetry_csv, samples_from_api
    from simulator.replay import ReplayError
    from simulator.server_api import ServerApi, ServerError

    params = None
    climate = ambient
    utc_offset = 0.0
    if scenario_file is not None:
        from simulator.fleet_builder import build_fleet
        from simulator.scenario import ScenarioError, load_scenario

        try:
            specs = {s.device_id: s for s in build_fleet(load_scenario(scenario_file))}
        except ScenarioError as exc:
            raise _fail(str(exc)) from None
        spec = specs.get(device)
        if spec is None:
            raise _fail(f"device {device!r} is not in {scenario_file}")
        params = spec.hardware
        climate = ambient if ambient is not None else spec.ambient
        utc_offset = spec.utc_offset_s
    server_alarms: list[dict[str, object]] = []
    if csv_file is not None or messages is not None:
        try:
            if csv_file is not None:
                samples = read_telemetry_csv(csv_file, time_col=time_col)
            else:
                assert messages is not None
                samples = read_messages_jsonl(messages, device)
        except ReplayError as exc:
            raise _fail(str(exc)) from None
    elif server:
        try:
            api = ServerApi(server, token)
            items = api.telemetry(device, since=time.time() - hours * 3600)
            server_alarms = api.alarms(device)
            samples = samples_from_api(items)
        except (ServerError, ValueError) as exc:
            raise _fail(str(exc)) from None
    else:
        raise _fail("give --server URL (and --token), --csv FILE or --messages FILE")
    try:
        report = run_diagnosis(
            device,
            samples,
            params=params,
            ambient=climate,
            utc_offset_s=utc_offset,
            faults=fault or FAULTS,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    report.server_alarms = server_alarms
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    body = report.as_dict()
    out.print(f"[bold]{device}[/bold]: {body['samples']} samples, {body['start']} → {body['end']}")
    if report.alarms:
        alarms = Table(title="alarms the agent's rules raise on this telemetry")
        for col in ("time (UTC)", "event", "code"):
            alarms.add_column(col, no_wrap=True)
        alarms.add_column("message")
        for a in report.alarms:
            alarms.add_row(a.iso, a.event, a.code, a.message)
        out.print(alarms)
    table = Table(title="fault hypotheses, best first")
    for col in ("#", "fault", "severity", "onset (UTC)", "score", "× healthy", "supported"):
        table.add_column(col, no_wrap=col in ("fault", "onset (UTC)"))
    for row in body["ranking"]:
        table.add_row(
            str(row["rank"]),
            row["fault"],
            f"{row['severity']:.2f}",
            row["onset"][:16].replace("T", " "),
            f"{row['score']:.3f}",
            f"{row['improvement']:.2f}",
            "yes" if row["supported"] else "",
        )
    out.print(table)
    best = report.diagnosis.best
    if best is not None:
        out.print(best.explanation)
    for name, why in report.diagnosis.skipped.items():
        out.print(f"[dim]not tested: {name}: {why}[/dim]")


# --- bench -----------------------------------------------------------------------------


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="candidate bundle (.tar.gz)")],
    hardware: Annotated[
        list[str] | None,
        typer.Option(
            "--hardware",
            help="hardware revision of a bench device (repeatable; default: every "
            "revision the bundle claims)",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed for where the power cuts fall")] = 1,
    junit: Annotated[
        Path | None, typer.Option(help="write a JUnit XML report here (for CI)")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="write the JSON report here")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON report")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="show the updater's log")] = False,
    device_dir: Annotated[
        Path | None,
        typer.Option(
            help="run each case on a real fleet-agent process with DirectorySlots under "
            "this directory (needs --broker)"
        ),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(help="with --device-dir: an MQTT 5 broker the agents use (mqtt://host:port)"),
    ] = None,
    simulate_outcomes: Annotated[
        bool,
        typer.Option(
            "--simulate-outcomes",
            help="with --device-dir: the agents also honour the bundle's simulation block",
        ),
    ] = False,
    tryboot: Annotated[
        bool,
        typer.Option(
            "--tryboot",
            help="a whole-image bundle (rootfs.img, boot.img): install, a power cut after "
            "every write, and rollback with the tryboot slots on a fake Raspberry Pi",
        ),
    ] = False,
    pi_model: Annotated[
        str, typer.Option(help="with --tryboot: the fake board (pi4, cm4, pi5)")
    ] = "pi4",
) -> None:
    """QA bench: install BUNDLE with the real agent updater on simulated devices.

    For every hardware revision: a clean install, a power cut at a random (seeded) state
    of the update, and a network cut half-way through the download, each through the
    real TUF client against a temporary signed repository on loopback. The bundle passes
    when every case ends committed. Exit status 0 pass, 1 fail, 2 bench error.

    With --device-dir and --broker the same cases run on real `fleet-agent run`
    processes with DirectorySlots (one per case), restarted and killed like systemd and
    a power cut would.

    With --tryboot a whole-image bundle goes through the Raspberry Pi tryboot slots on a
    fake board (disk image, bootloader model): install, a power cut after every write of
    the update, and a rollback (health check forced to fail) with the same cuts.
    """
    import logging

    from simulator.bench import BenchError, junit_xml, run_bench

    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(message)s")
    if not verbose:
        logging.getLogger("agent").setLevel(logging.CRITICAL)

    def show(case) -> None:  # type: ignore[no-untyped-def]
        mark = "[green]pass[/green]" if case.passed else "[red]FAIL[/red]"
        what = case.state + (f" ({case.failure_class})" if case.failure_class else "")
        err.print(f"  {mark} {case.name:<22} {what}", highlight=False)

    if (device_dir is None) != (broker is None):
        raise _fail("--device-dir and --broker go together")
    if tryboot and device_dir is not None:
        raise _fail("--tryboot runs on a fake Raspberry Pi; it does not take --device-dir")
    if pi_model not in ("pi4", "cm4", "pi5"):
        raise _fail(f"--pi-model {pi_model!r}: use pi4, cm4 or pi5")
    err.print(f"bench: {bundle.name}")
    try:
        if tryboot:
            from simulator.bench_tryboot import run_tryboot_bench

            report = run_tryboot_bench(bundle, hardware=hardware, model=pi_model, progress=show)
        elif device_dir is not None and broker is not None:
            from simulator.bench_device import run_device_bench

            report = run_device_bench(
                bundle,
                device_dir,
                broker,
                hardware=hardware,
                seed=seed,
                progress=show,
                simulate_outcomes=simulate_outcomes,
            )
        else:
            report = run_bench(bundle, hardware=hardware, seed=seed, progress=show)
    except BenchError as exc:
        raise _fail(str(exc)) from None
    data = report.to_dict()
    try:
        if junit is not None:
            junit.write_bytes(junit_xml(report))
        if json_out is not None:
            json_out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise _fail(f"cannot write the report: {exc.strerror or exc}") from None
    if as_json:
        typer.echo(json.dumps(data, sort_keys=True))
    else:
        table = Table(title=f"bench {report.bundle} ({report.version})")
        for column in ("revision", "case", "result", "states", "detail"):
            table.add_column(column)
        for case in report.cases:
            result = "[green]pass[/green]" if case.passed else "[red]FAIL[/red]"
            reason = f"{case.failure_class or ''}{'/' + case.attack if case.attack else ''}"
            table.add_row(
                case.revision,
                case.case,
                f"{result} {case.state} {reason}".strip(),
                " > ".join(case.states),
                (case.reason + "; " if case.reason else "") + case.detail,
            )
        out.print(table)
        if report.passed:
            out.print(f"[green]PASS[/green] {report.bundle} on {', '.join(report.hardware)}")
        else:
            out.print(f"[red]FAIL[/red] {report.bundle}:")
            for line in report.reasons():
                out.print(f"  {line}", highlight=False, markup=False)
    raise typer.Exit(0 if report.passed else 1)


# --- demo ------------------------------------------------------------------------------


@app.command()
def demo(
    devices: Annotated[
        int, typer.Option(min=20, max=2000, help="how many simulated gateways")
    ] = 200,
    explore: Annotated[
        bool,
        typer.Option(
            "--explore", help="keep the server and fleet running after the demo, until Ctrl-C"
        ),
    ] = False,
) -> None:
    """The whole product on this machine in about two minutes (what `make demo` runs).

    Starts a fleet server (SQLite, embedded broker) in a temporary directory, runs a live
    simulated fleet against it, publishes a good and a bad bundle and rolls both out in
    stages, shows a fan fault as an alarm, opens a recall and files a warranty claim,
    narrating each step. Stops everything and removes its files at the end (also on
    Ctrl-C). Exit status 0 when every step worked.
    """
    from simulator.demo import run_demo

    raise typer.Exit(run_demo(out, devices=devices, explore=explore))


def main() -> None:
    """Entry point of the ``fleet-sim`` console script."""
    try:
        app()
    except BrokenPipeError:  # piped into head
        sys.exit(0)

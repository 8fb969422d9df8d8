"""``fleet-server``: run and administer the fleet server."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from fleet_server import __version__
from fleet_server.config import ConfigError, Settings, load_settings
from fleet_server.domain.roles import Role
from fleet_server.identity.cli import ca_app
from fleet_server.keys_cli import keys_app
from fleet_server.safety_cli import safety_app
from fleet_server.updates.publish_cli import updates_app
from protocol import SCHEMA_VERSION

app = typer.Typer(
    name="fleet-server",
    help=(
        "Edgefleet fleet server: device registry, telemetry ingest, presence, alarms and the "
        "REST API. Configuration: ./fleet-server.toml (or --config / $FLEET_CONFIG) and "
        "FLEET_<SECTION>_<KEY> environment variables, e.g. FLEET_DATABASE_URL."
    ),
    no_args_is_help=True,
    add_completion=False,
)
token_app = typer.Typer(help="Create API tokens locally (bootstrap; normally use the API).")
app.add_typer(token_app, name="token")

log = logging.getLogger("fleet_server")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        _fail(str(exc), 2)


def _secure_start(settings: Settings) -> None:
    """Refuse insecure production settings (exit 2, naming each key); in demo, refuse to
    listen beyond loopback and warn loudly about what any local client can do."""
    from fleet_server.security_mode import demo_problems, demo_warning, production_problems

    if settings.security.mode == "demo":
        problems = demo_problems(settings)
        if problems:
            lines = "\n".join(f"  {p}" for p in problems)
            _fail(
                "refusing to start: demo mode has no authentication, so it binds to "
                f"loopback only:\n{lines}",
                2,
            )
        typer.secho(demo_warning(settings), fg=typer.colors.YELLOW, err=True)
        return
    problems = production_problems(settings)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        _fail(
            "refusing to start in production mode with insecure settings:\n"
            f'{lines}\n(set [security] mode = "demo" only for a local demo)',
            2,
        )


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _open(settings: Settings) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from fleet_server.runtime import open_database

    try:
        return open_database(settings)
    except SQLAlchemyError as exc:
        _fail(
            f"cannot open the database {settings.database.url!r}: {exc.__class__.__name__}: {exc}"
        )


app.add_typer(keys_app, name="keys")
app.add_typer(updates_app, name="updates")
app.add_typer(ca_app, name="ca")
app.add_typer(safety_app, name="safety-key")


@app.callback()
def _root() -> None:
    """Keep sub-commands as sub-commands."""


@app.command()
def version() -> None:
    """Print the server and protocol versions."""
    typer.echo(f"fleet-server {__version__} (protocol {SCHEMA_VERSION})")


@app.command()
def init(
    config: ConfigOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="revoke existing admin tokens and create a new one")
    ] = False,
    root_keys: Annotated[
        list[Path] | None,
        typer.Option(
            "--root-keys",
            help="offline root key directory (from `keys create-root`) to sign the TUF "
            "repository's root; repeat to combine. Without it a DEVELOPMENT root is made.",
        ),
    ] = None,
    json_out: JsonOpt = False,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help='write ./fleet-server.toml with [security] mode = "demo" (insecure, local '
            "only) when no configuration file exists",
        ),
    ] = False,
) -> None:
    """Create or migrate the database, set up the TUF update repository ([updates]
    repo_dir/keys_dir) if there is none, and print a one-time admin token."""
    from fleet_server.services import tokens
    from fleet_server.services.audit import SYSTEM
    from fleet_server.services.clock import system_clock

    if demo:
        _write_demo_config(config)
    settings = _settings(config)
    tuf = _init_tuf(settings, root_keys or [], quiet=json_out)  # refuses before the database
    _engine, sessions = _open(settings)
    now = system_clock()
    with sessions() as session:
        admins = tokens.live_admins(session)
        if admins and not force:
            _fail(
                f"the database already has {len(admins)} admin token(s); "
                "use --force to revoke them and create a new one"
            )
        for old in admins:
            tokens.revoke_token(session, old, actor=SYSTEM, now=now)
        _token, secret = tokens.create_token(session, "admin", Role.ADMIN, actor=SYSTEM, now=now)
        session.commit()
        console_password = _first_admin_user(session, now, force=force)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "database": settings.database.url,
                    "tuf_repository": str(tuf.repo_dir),
                    "tuf_setup": tuf.outcome,
                    "tuf_dev_root": str(tuf.dev_root_dir) if tuf.dev_root_dir else None,
                    "admin_token": secret,
                    "console_user": "admin" if console_password else None,
                    "console_password": console_password,
                }
            )
        )
        return
    typer.echo(f"database ready: {settings.database.url}")
    typer.echo("admin token (shown once, store it now):")
    typer.echo(secret)
    if console_password:
        typer.echo("console user 'admin' password (shown once; sign in at /console):")
        typer.echo(console_password)


def _first_admin_user(session: Any, now: float, *, force: bool) -> str | None:
    """Create the console's first user, ``admin``, with a random password (returned, shown
    once) when no admin user exists; ``--force`` gives ``admin`` a new password. None when
    an admin user is already there."""
    from fleet_server.services import users
    from fleet_server.services.audit import SYSTEM

    existing = users.find_user(session, "admin")
    if existing is not None:
        if not force:
            return None
        password = users.new_password()
        users.update_user(
            session, "admin", actor=SYSTEM, now=now, password=password, disabled=False
        )
        return password
    _view, password = users.create_user(session, "admin", Role.ADMIN, actor=SYSTEM, now=now)
    return password


def _init_tuf(settings: Settings, root_keys: list[Path], *, quiet: bool) -> Any:
    from fleet_server.updates.bootstrap import DevRootRefusedError, ensure_repository
    from fleet_server.updates.cli_common import user_errors

    u = settings.updates
    production = settings.security.mode == "production"
    try:
        with user_errors():
            setup = ensure_repository(
                u.repo_dir, u.keys_dir, root_keys, allow_dev_root=not production
            )
    except DevRootRefusedError as exc:
        _fail(str(exc), 2)
    if setup.outcome == "created-dev":
        typer.secho(
            "WARNING: no --root-keys given, so the TUF repository was created with a "
            f"DEVELOPMENT root (one key, threshold 1) stored ONLINE in {setup.dev_root_dir}.\n"
            "WARNING: whoever reads that directory can sign updates for every device. Do not "
            "ship devices trusting this root; create offline root keys (fleet-server keys "
            "create-root) and rotate to them (fleet-server keys rotate-root), or start over "
            "with --root-keys.",
            fg=typer.colors.YELLOW,
            bold=True,
            err=True,
        )
    elif not quiet:
        typer.echo(f"TUF repository {setup.outcome}: {setup.repo_dir}")
    return setup


def _write_demo_config(config: Path | None) -> None:
    """Make demo mode explicit for this directory (never overwrites a file)."""
    from fleet_server.config import DEFAULT_CONFIG_PATH
    from fleet_server.security_mode import DEMO_WARNING

    path = config or DEFAULT_CONFIG_PATH
    if path.exists():
        _fail(f'{path} exists; set [security] mode = "demo" in it yourself', 2)
    path.write_text(
        "# Written by 'fleet-server init --demo'. Demo mode is insecure: no TLS, an\n"
        "# unauthenticated embedded broker. Never expose it. See SECURITY.md.\n"
        '[security]\nmode = "demo"\n'
    )
    typer.secho(DEMO_WARNING, fg=typer.colors.YELLOW, err=True)


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Apply pending database migrations (also done by every other command)."""
    from fleet_server.migrations import current_revision

    settings = _settings(config)
    engine, _ = _open(settings)
    typer.echo(f"database at revision {current_revision(engine)}")


@token_app.command("create")
def token_create(
    role: Annotated[Role, typer.Option("--role", help="viewer, technician, operator or admin")],
    name: Annotated[str, typer.Option("--name", help="who or what uses it")],
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    ttl_days: Annotated[
        float | None,
        typer.Option("--ttl-days", help="expire after this many days (default: never)"),
    ] = None,
) -> None:
    """Create an API token directly in the database (printed once)."""
    from fleet_server.services import tokens
    from fleet_server.services.audit import SYSTEM
    from fleet_server.services.clock import system_clock

    if not name.strip() or len(name) > 128:
        _fail("--name must be 1-128 characters")
    if ttl_days is not None and not 0 < ttl_days <= tokens.MAX_TTL_DAYS:
        _fail(f"--ttl-days must be in (0, {tokens.MAX_TTL_DAYS}]")
    settings = _settings(config)
    _engine, sessions = _open(settings)
    with sessions() as session:
        token, secret = tokens.create_token(
            session, name.strip(), role, actor=SYSTEM, now=system_clock(), ttl_days=ttl_days
        )
        session.commit()
    if json_out:
        out = {"id": token.id, "name": token.name, "role": token.role, "secret": secret}
        typer.echo(json.dumps({**out, "expires_at": token.expires_at}))
    else:
        typer.echo(secret)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@app.command()
def ingest(
    config: ConfigOpt = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="serve /metrics on 127.0.0.1:PORT")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run only the ingest: MQTT (starts the embedded broker when no [mqtt] url is set), or a
    JetStream pull consumer when [nats] servers are set (run as many as needed)."""
    from fleet_server.runtime import broker_target, build_ingest
    from fleet_server.services.metrics import IngestMetrics

    _logging(verbose)
    settings = _settings(config)
    _secure_start(settings)
    _engine, sessions = _open(settings)
    try:
        target = broker_target(settings, start_embedded=True)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    metrics = IngestMetrics()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
    worker = build_ingest(settings, sessions, target, metrics)
    stop = threading.Event()
    _stop_on_signals(stop)
    threading.Thread(target=lambda: (stop.wait(), worker.stop()), daemon=True).start()
    worker.connect(timeout=10)
    log.info("ingest running (batch size %d)", settings.ingest.batch_size)
    worker.run()
    if target.embedded is not None:
        target.embedded.stop()
    log.info("ingest stopped")


@app.command()
def jobs(
    config: ConfigOpt = None,
    once: Annotated[bool, typer.Option("--once", help="run every job once and exit")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run only the background jobs (presence sweep, command expiry, retention, deployment
    timeouts, TUF re-signing, recall remedy check and progress snapshots, webhook
    deliveries)."""
    from fleet_server.services.clock import system_clock
    from fleet_server.services.jobs import (
        Scheduler,
        run_command_expiry,
        run_presence_sweep,
        run_recall_remedy_check,
        run_recall_snapshots,
        run_retention_job,
    )
    from fleet_server.services.update_jobs import TufResignTask, run_execution_expiry
    from fleet_server.services.webhook_delivery import WebhookDeliveryJob

    _logging()
    settings = _settings(config)
    _engine, sessions = _open(settings)
    if once:
        now = system_clock()
        offline = run_presence_sweep(sessions, settings, now)
        expired = run_command_expiry(sessions, settings, now)
        kept = run_retention_job(sessions, settings, now)
        timed_out = run_execution_expiry(sessions, settings, now)
        resigned = TufResignTask()(sessions, settings, now)
        remedied = run_recall_remedy_check(sessions, settings, now)
        snapshots = run_recall_snapshots(sessions, settings, now)
        sent = WebhookDeliveryJob()(sessions, settings, now)
        out = {
            "marked_offline": offline,
            "commands_expired": expired,
            "executions_timed_out": timed_out,
            "tuf_resigned": resigned.resigned if resigned else [],
            "retention": {
                "cutoff": kept.cutoff,
                "hours_written": kept.hours_written,
                "samples_deleted": kept.samples_deleted,
            },
            "recall_devices_remedied": remedied,
            "recall_snapshots": snapshots,
            "webhooks_delivered": sent.delivered if sent else 0,
        }
        typer.echo(json.dumps(out) if json_out else "\n".join(f"{k}: {v}" for k, v in out.items()))
        return
    scheduler = Scheduler(sessions, settings)
    stop = threading.Event()
    _stop_on_signals(stop)
    scheduler.start()
    stop.wait()
    scheduler.stop()


def _ssl_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options: the API certificate, and client certificates verified
    against ``tls.api_client_ca`` when offered (optional: operators use tokens)."""
    import ssl

    t = settings.tls
    if t.api_cert is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(t.api_cert),
        "ssl_keyfile": str(t.api_key) if t.api_key else None,
    }
    if t.api_client_ca is not None:
        options["ssl_ca_certs"] = str(t.api_client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_OPTIONAL
    return options


class _Server:
    """uvicorn with our own SIGINT/SIGTERM handling.

    uvicorn re-raises a captured signal once it has shut down, which would kill the
    process before the ingest flush below runs; here a signal only asks it to exit.
    """

    def __init__(self, settings: Settings, app_obj: Any) -> None:
        import uvicorn

        from fleet_server.api.limits import limit_options

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.server = Quiet(
            uvicorn.Config(
                app_obj,
                host=settings.api.host,
                port=settings.api.port,
                log_level="info",
                log_config=None,
                lifespan="off",
                **_ssl_options(settings),
                **limit_options(settings),
            )
        )

    def run(self) -> None:
        stop = threading.Event()
        _stop_on_signals(stop)

        def watch() -> None:
            stop.wait()
            self.server.should_exit = True

        threading.Thread(target=watch, daemon=True).start()
        self.server.run()


def _serve(settings: Settings, app_obj: Any) -> None:
    _Server(settings, app_obj).run()


@app.command()
def api(config: ConfigOpt = None) -> None:
    """Run only the REST API (commands go to [mqtt] url, or the embedded broker's port)."""
    from fleet_server.api import create_app
    from fleet_server.runtime import broker_target, build_publisher

    _logging()
    settings = _settings(config)
    _secure_start(settings)
    _engine, sessions = _open(settings)
    publisher = build_publisher(settings, broker_target(settings, start_embedded=False))
    try:
        _serve(settings, create_app(settings, sessions=sessions, publisher=publisher))
    finally:
        publisher.close()


@app.command()
def run(
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run everything in one process: API, MQTT ingest, background jobs (and the embedded
    broker when no [mqtt] url is set). Stops cleanly on SIGINT/SIGTERM."""
    from fleet_server.api import create_app
    from fleet_server.rollouts.engine import RolloutTickJob
    from fleet_server.runtime import broker_target, build_ingest, build_publisher
    from fleet_server.services.jobs import Scheduler
    from fleet_server.services.metrics import IngestMetrics

    _logging(verbose)
    settings = _settings(config)
    _secure_start(settings)
    _engine, sessions = _open(settings)
    try:
        target = broker_target(settings, start_embedded=True)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    metrics = IngestMetrics()
    worker = build_ingest(settings, sessions, target, metrics)
    worker.connect(timeout=10)
    ingest_thread = threading.Thread(target=worker.run, name="ingest")
    ingest_thread.start()
    publisher = build_publisher(settings, target)
    scheduler = Scheduler(sessions, settings)
    scheduler.add_job("rollouts", settings.rollouts.tick_interval_s, RolloutTickJob(publisher))
    scheduler.start()
    try:
        _serve(
            settings, create_app(settings, sessions=sessions, publisher=publisher, metrics=metrics)
        )
    finally:
        log.info("shutting down: flushing ingest")
        worker.stop()
        ingest_thread.join(timeout=60)
        scheduler.stop()
        publisher.close()
        if target.embedded is not None:
            target.embedded.stop()
        log.info("stopped")


def main() -> None:
    """Entry point of the ``fleet-server`` console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)

"""Operations commands: the embedded ``db`` and ``redis``, ``serve``, ``openapi``, ``airflow``,
``retrain`` and ``demo``."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from fraud_lib import retrain_params, unique_keys
from fraud_lib.cli.base import _engine, _settings, check_directory, cli, say
from fraud_lib.config import Settings
from fraud_lib.errors import ConfigError, FraudError
from fraud_lib.redact import redact


# ------------------------------------------------------------------------------ database
@cli.group()
def db() -> None:
    """The local (embedded) Postgres server that holds predictions, labels and decisions."""


def _embedded(settings: Settings) -> Any:
    from fraud_lib import pgserver

    if not settings.embedded_postgres:
        raise FraudError("FRAUD_DATABASE_URL is set: the database is external, not managed here")
    return pgserver.embedded_from_settings(settings)


@db.command("start")
@click.pass_context
def db_start(ctx: click.Context) -> None:
    """Start the embedded Postgres (initialises it on first use) and create the tables."""
    settings = _settings(ctx)
    server = _embedded(settings)
    say(f"starting Postgres in {settings.postgres_dir} on 127.0.0.1:{settings.pg_port}")
    server.ensure_running()
    _engine(settings)
    click.echo(f"running: {server.display_url} (pid {server.pid})")


@db.command("stop")
@click.pass_context
def db_stop(ctx: click.Context) -> None:
    """Stop the embedded Postgres cleanly."""
    server = _embedded(_settings(ctx))
    if not server.status()["running"]:
        click.echo("not running")
        return
    server.stop()
    click.echo("stopped")


@db.command("status")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Say whether the embedded Postgres runs, with its pid, port and data dir."""
    status = _embedded(_settings(ctx)).status()
    for key, value in status.items():
        click.echo(f"{key}: {redact(str(value))}")


# ------------------------------------------------------------------------------ redis
@cli.group("redis")
def redis_group() -> None:
    """The local (embedded) redis-server: shared online state and the Celery broker."""


def _embedded_redis(settings: Settings) -> Any:
    from fraud_lib import redisserver

    if settings.redis_url:
        raise FraudError("FRAUD_REDIS_URL is set: Redis is external, not managed here")
    return redisserver.embedded_from_settings(settings)


@redis_group.command("start")
@click.pass_context
def redis_start(ctx: click.Context) -> None:
    """Start the embedded redis-server on 127.0.0.1 (password in the state dir, mode 0600)."""
    server = _embedded_redis(_settings(ctx))
    say(f"starting redis-server in {server.dir} on 127.0.0.1:{server.port}")
    server.start()
    click.echo(f"running: {server.display_url} (pid {server.pid})")


@redis_group.command("stop")
@click.pass_context
def redis_stop(ctx: click.Context) -> None:
    """Stop the embedded redis-server by its pid."""
    click.echo("stopped" if _embedded_redis(_settings(ctx)).stop() else "not running")


@redis_group.command("status")
@click.pass_context
def redis_status(ctx: click.Context) -> None:
    """Say whether the embedded redis-server runs, with its pid, port and directory."""
    for key, value in _embedded_redis(_settings(ctx)).status().items():
        click.echo(f"{key}: {redact(str(value))}")


# ------------------------------------------------------------------------------ serving
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=2,
    show_default=True,
    envvar="FRAUD_WORKERS",
    type=click.IntRange(1),
    help="gunicorn worker processes, one per core (env FRAUD_WORKERS).",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Run the scoring service under gunicorn (this process becomes the gunicorn master).

    Starts the embedded Postgres first when no FRAUD_DATABASE_URL is set, and the embedded
    redis-server (online feature state) when no FRAUD_REDIS_URL is set; the workers never
    start them themselves. Stop with Ctrl-C or SIGTERM: workers finish their requests and ship
    their prediction logs before exiting.
    """
    import os

    settings = _settings(ctx)
    if settings.embedded_postgres:
        from fraud_lib import pgserver

        say(f"starting the embedded Postgres on 127.0.0.1:{settings.pg_port}")
        pgserver.database_url(settings)
    if not settings.redis_url:  # the online feature state of behavioral champions
        from fraud_lib import redisserver

        try:
            redisserver.redis_url(settings)
            say(f"embedded redis-server on 127.0.0.1:{settings.redis_port}")
        except FraudError as exc:  # not installed, or could not start: ULB scoring needs none
            say(f"no redis-server ({exc}); a behavioral champion will answer 503")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    argv = [
        sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf",
        "-b", f"{host}:{port}", "-w", str(workers), "serving.wsgi:app",
    ]  # fmt: skip
    say(f"serving on http://{host}:{port} with {workers} workers: {' '.join(argv[1:])}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@cli.command("openapi")
@click.option(
    "--schema",
    "schema_path",
    default="",
    help="The model's schema file (JSON or YAML); default: ULB.",
)
@click.option(
    "--out",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Where to write the document ('-': standard output).",
)
def openapi_cmd(schema_path: str, out: str) -> None:
    """Write the OpenAPI 3.1 document of the scoring API for a schema and the default limits.

    A running service serves the document of its own model and limits at /openapi.json;
    `make openapi` rewrites the checked-in docs/openapi.json with this command.
    """
    from fraud_lib.schema import FeatureSchema
    from serving.openapi import build_document, encode

    limits = Settings.from_env({})
    body = encode(build_document(FeatureSchema.load(schema_path), limits.max_batch))
    if out == "-":
        sys.stdout.buffer.write(body)
        return
    try:
        Path(out).write_bytes(body)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}; pass a writable --out") from None
    say(f"wrote {out}")


# ------------------------------------------------------------------------------ airflow
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _host(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An IP address or a host name, refused before Airflow starts rather than after."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(value))
    if _HOSTNAME.fullmatch(value):
        return value
    raise click.BadParameter(f"{value!r} is not an IP address or host name, e.g. 127.0.0.1")


@cli.command("airflow")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="FRAUD_AIRFLOW_HOST",
    callback=_host,
    help="Address the Airflow UI / API server listens on (env FRAUD_AIRFLOW_HOST).",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    envvar="FRAUD_AIRFLOW_PORT",
    type=click.IntRange(1, 65535),
    help="Port of the Airflow UI / API server (env FRAUD_AIRFLOW_PORT).",
)
@click.option(
    "--dags-folder",
    type=click.Path(),
    help="DAG folder (default: AIRFLOW__CORE__DAGS_FOLDER, else the project's dags/).",
)
@click.pass_context
def airflow_cmd(ctx: click.Context, host: str, port: int, dags_folder: str | None) -> None:
    """Start a local Airflow 3 (`airflow standalone`: API server + UI, scheduler, DAG processor,
    triggerer) on the project's DAGs. Ctrl-C or SIGTERM stops all of it."""
    import os

    from fraud_lib import airflow_local

    check_directory(dags_folder, "--dags-folder")
    env = airflow_local.airflow_env(_settings(ctx), dags_folder)
    exe = airflow_local.airflow_exe()
    # standalone starts its components as `airflow ...` from PATH: put this environment's first.
    env["PATH"] = os.pathsep.join([str(Path(exe).parent), env.get("PATH", "")])
    env["AIRFLOW__API__HOST"] = host  # standalone's API server listens on 0.0.0.0 otherwise
    env["AIRFLOW__API__PORT"] = str(port)
    # Task processes reach the API server here (Airflow's default assumes port 8080).
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    local = f"[{local}]" if ":" in local else local
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://{local}:{port}/execution/")
    home = airflow_local.ensure_db(env, say)
    password_file = home / "simple_auth_manager_passwords.json.generated"
    say(f"AIRFLOW_HOME={home}; DAGs from {env['AIRFLOW__CORE__DAGS_FOLDER']}")
    click.echo(
        f"Airflow UI: http://{local}:{port} (listening on {host}; ready after ~20 s)\n"
        f"login: admin, password in {password_file} (Airflow writes it at its first start)\n"
        "trigger fraud_retrain with Params: DAGs -> fraud_retrain -> Trigger -> edit the form; "
        f"drift reports land in {env['FRAUD_REPORTS_DIR']}"
    )
    code = airflow_local.run_standalone(env, say)
    if code != 0:
        raise FraudError(f"airflow standalone exited with code {code}")


@cli.command("retrain")
@click.option(
    "--conf",
    "conf_json",
    default="{}",
    show_default=True,
    help='fraud_retrain Params as JSON, e.g. \'{"model_type": "lr", "dry_run": true}\'.',
)
@click.option(
    "--date",
    "logical_date",
    help="Logical date (ISO 8601) whose data interval ends the window (default: now).",
)
@click.option(
    "--dags-folder",
    type=click.Path(),
    help="DAG folder (default: AIRFLOW__CORE__DAGS_FOLDER, else the project's dags/).",
)
@click.pass_context
def retrain(
    ctx: click.Context, conf_json: str, logical_date: str | None, dags_folder: str | None
) -> None:
    """Run the fraud_retrain DAG once, in this terminal (`airflow dags test`; no scheduler).

    The run summary (metrics side by side, decision, report path) is in the promote task's log.
    """
    from fraud_lib import airflow_local

    try:
        conf = unique_keys.loads(conf_json, "--conf")
    except json.JSONDecodeError as exc:
        raise FraudError(f"--conf is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise FraudError('--conf must be a JSON object, e.g. \'{"model_type": "lr"}\'')
    retrain_params.validate_conf(conf)
    check_directory(dags_folder, "--dags-folder")
    settings = _settings(ctx)
    env = airflow_local.airflow_env(settings, dags_folder)
    airflow_local.dags_test("fraud_retrain", conf, env, say, logical_date=logical_date)
    say(f"reports in {settings.reports_dir}; decision history: fraud models")


# ------------------------------------------------------------------------------ demo
@cli.command()
@click.option(
    "--reset",
    is_flag=True,
    help="Start over: drop the models, logged rows, windows and reports of an earlier demo.",
)
@click.option(
    "--kind",
    type=click.Choice(["ulb", "raw"]),
    default="ulb",
    show_default=True,
    help="ulb: ULB-layout transactions (V1..V28). raw: raw transactions (fraud generate --kind "
    "raw) with behavioral features from the online state, compared with a raw amount + "
    "calendar baseline.",
)
@click.option(
    "--rows-per-day",
    default=None,
    type=click.IntRange(300, 200_000),
    help="Synthetic transactions per day (history and replayed weeks) [default: 6000 for ulb, "
    "2000 for raw].",
)
@click.option(
    "--history-days",
    default=None,
    type=click.IntRange(7, 365),
    help="Days of history the first champion is trained on [default: 28 for ulb, 21 for raw].",
)
@click.option("--seed", default=7, show_default=True, type=int)
@click.pass_context
def demo(
    ctx: click.Context,
    reset: bool,
    kind: str,
    rows_per_day: int | None,
    history_days: int,
    seed: int,
) -> None:
    """The whole loop with real components: first champion, the gunicorn service scoring two
    replayed weeks into Postgres, delayed labels, fraud_retrain and the drift monitor through
    Airflow, a promotion after a new fraud pattern, and the running service hot-reloading it.

    With --kind raw: raw transactions, a behavioral champion (raw_schema.yaml) vs a baseline on
    the raw amount and calendar features (same test split: average precision, recall at the
    1% alert budget, frauds caught by one and not the other per fraud kind), the service
    computing the features online (embedded redis-server), and fraud_retrain rebuilding them
    from the logged raw fields.

    Takes ~2 minutes on 2 cores. The state stays for exploring (MLflow UI, Airflow UI,
    `fraud models`); `make clean` removes it. `--reset` only runs on the embedded Postgres and
    the local MLflow store (it empties them).
    """
    import signal

    from fraud_lib import demo as demo_lib

    # SIGTERM unwinds like Ctrl-C, so the demo stops the scoring service it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    demo_lib.demo_env_ok()
    settings = _settings(ctx)
    if kind == "raw":
        from fraud_lib import demo_raw

        raw_options = demo_raw.RawDemoOptions(seed=seed)
        if history_days:
            raw_options.history_days = history_days
        if rows_per_day:
            raw_options.rows_per_day = rows_per_day
        raw_report = demo_raw.run_raw_demo(settings, raw_options, say, reset=reset)
        demo_raw.print_raw_summary(raw_report, click.echo)
        return
    if rows_per_day is not None and rows_per_day < 1000:
        raise click.BadParameter("at least 1000 for --kind ulb", param_hint="--rows-per-day")
    options = demo_lib.DemoOptions(rows_per_day=rows_per_day or 6000,
                                   history_days=history_days or 28,
                                   seed=seed)  # fmt: skip
    report = demo_lib.run_demo(settings, options, say, reset=reset)
    demo_lib.print_summary(report, settings, click.echo)

"""The ``fraud`` console script: a thin shell over fraud_lib.

Every command reads :class:`Settings` from the environment; expected failures print one line
``error: ...`` and exit 1, never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import click

from fraud_lib.config import Settings
from fraud_lib.errors import FraudError

log = logging.getLogger("fraud_lib.cli")

METRIC_ROWS = (
    "average_precision",
    "roc_auc",
    "precision",
    "recall",
    "f1",
    "recall_at_precision_90",
    "precision_at_k",
    "expected_cost",
    "threshold",
)


def say(message: str) -> None:
    """Progress output for people, on stderr so stdout stays machine-readable."""
    click.echo(f">> {message}", err=True)


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "-" if value is None else str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
        for i, c in enumerate(columns)
    ]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


class FraudGroup(click.Group):
    """A click group that turns expected errors into one clean line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FraudError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=FraudGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """fraudloop: keep a card-fraud model honest in production.

    Configuration comes from FRAUD_* environment variables (see the README table);
    with none set, everything runs locally under ./.fraudloop (embedded Postgres,
    SQLite MLflow store).
    """
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    ctx.obj = {"settings": Settings.from_env()}


def dump_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as pretty JSON (NaN becomes null), creating parent directories."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(payload, default=str).replace("NaN", "null"))
    p.write_text(json.dumps(clean, indent=2) + "\n")


# ------------------------------------------------------------------------------ data + models
@cli.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output file: .csv, .csv.gz or .parquet.",
)
@click.option(
    "--days",
    default=28,
    show_default=True,
    type=click.IntRange(1),
    help="Days of history to generate.",
)
@click.option("--rows-per-day", default=10_000, show_default=True, type=click.IntRange(10))
@click.option(
    "--rows",
    "total_rows",
    type=click.IntRange(10),
    help="Exact total row count (overrides --rows-per-day), e.g. 284807.",
)
@click.option(
    "--fraud-rate",
    default=0.002,
    show_default=True,
    type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
)
@click.option(
    "--scenario",
    default="none",
    show_default=True,
    help="Drift scenario: none, covariate_shift, new_pattern, fraud_rate, amount_inflation.",
)
@click.option(
    "--drift-day",
    type=click.IntRange(0),
    help="Day on which the scenario switches on (default: the middle).",
)
@click.option(
    "--start-day",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="First day index, to continue an earlier history.",
)
@click.option("--label-delay-days", default=3.0, show_default=True, type=click.FloatRange(0))
@click.option("--seed", default=0, show_default=True, type=int)
def generate(
    out: str,
    days: int,
    rows_per_day: int,
    total_rows: int | None,
    fraud_rate: float,
    scenario: str,
    drift_day: int | None,
    start_day: int,
    label_delay_days: float,
    seed: int,
) -> None:
    """Generate synthetic transactions with the ULB creditcard.csv schema."""
    from fraud_lib import data

    say(f"generating {days} day(s) of transactions (scenario={scenario}, seed={seed})")
    df = data.generate(
        days,
        rows_per_day=rows_per_day,
        total_rows=total_rows,
        fraud_rate=fraud_rate,
        seed=seed,
        scenario=scenario,
        drift_start_day=drift_day,
        start_day=start_day,
        label_delay_days=label_delay_days,
    )
    data.save_transactions(df, out)
    say(f"wrote {len(df):,} rows ({int(df['Class'].sum()):,} frauds) to {out}")


def _load(path: str, schema: Any) -> Any:
    from fraud_lib import data

    say(f"loading {path}")
    df = data.load_transactions(path, schema)
    say(f"loaded {len(df):,} rows, {int(df[schema.label].sum()):,} frauds")
    return df


@cli.command()
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labeled transactions (.csv or .parquet), e.g. creditcard.csv.",
)
@click.option(
    "--schema",
    "schema_path",
    type=click.Path(dir_okay=False),
    help="JSON/YAML schema for non-ULB tables (keys time, label, features, ...).",
)
@click.option(
    "--model",
    "model_type",
    default="hgb",
    show_default=True,
    type=click.Choice(["hgb", "lr", "rf"]),
    help="Model family.",
)
@click.option(
    "--resample",
    default="none",
    show_default=True,
    type=click.Choice(["none", "smote", "undersample"]),
    help="imbalanced-learn resampling of the training rows only.",
)
@click.option(
    "--test-fraction",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.01, 0.5),
    help="Newest share of rows held out for testing.",
)
@click.option(
    "--val-fraction",
    default=0.15,
    show_default=True,
    type=click.FloatRange(0.01, 0.5),
    help="Share before the test slice used for early stopping and the threshold.",
)
@click.option(
    "--threshold-rule",
    type=click.Choice(["f1", "cost", "precision"]),
    help="Threshold selection rule (default: FRAUD_THRESHOLD_RULE or f1).",
)
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Register the model in MLflow with alias 'challenger'.",
)
@click.option("--metrics-json", type=click.Path(dir_okay=False), help="Write metrics here.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.pass_context
def train(
    ctx: click.Context,
    data_path: str,
    schema_path: str | None,
    model_type: str,
    resample: str,
    test_fraction: float,
    val_fraction: float,
    threshold_rule: str | None,
    register: bool,
    metrics_json: str | None,
    seed: int,
) -> None:
    """Train a model on a time-ordered split and print its test metrics."""
    from fraud_lib import registry
    from fraud_lib.schema import FeatureSchema
    from fraud_lib.train import train_model

    settings = _settings(ctx)
    schema = FeatureSchema.load(schema_path or settings.schema_path)
    df = _load(data_path, schema)
    result = train_model(
        df,
        schema,
        model_type=model_type,
        resample=resample,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        threshold_rule=threshold_rule or settings.threshold_rule,
        target_precision=settings.target_precision,
        cost_false_negative=settings.cost_false_negative,
        cost_false_positive=settings.cost_false_positive,
        seed=seed,
        progress=say,
    )
    m = result.metrics
    print_table([{"metric": k, "value": m[k]} for k in METRIC_ROWS], ["metric", "value"])
    click.echo(
        f"n_train={result.n_train:,} n_val={result.n_val:,} n_test={result.n_test:,} "
        f"train_seconds={result.train_seconds:.1f}"
    )
    payload: dict[str, Any] = {
        k: m[k] for k in (*METRIC_ROWS, "n_train", "n_test", "train_seconds")
    }
    payload.update(
        n_train=result.n_train,
        n_test=result.n_test,
        n_val=result.n_val,
        model=model_type,
        resample=resample,
        data=str(data_path),
    )
    if register:
        say("logging the model to MLflow and registering it as 'challenger'")
        ref = registry.log_model(
            result, settings, data_ref=str(data_path), run_name=f"train-{model_type}-{resample}"
        )
        assert ref is not None
        payload.update(model_name=ref.name, version=ref.version, run_id=ref.run_id)
        click.echo(
            f"registered {ref.name} version {ref.version} (alias challenger); "
            "next: fraud promote --data <labeled data after the training period>"
        )
    if metrics_json:
        dump_json(metrics_json, payload)
        say(f"metrics written to {metrics_json}")


def _engine(settings: Settings) -> Any:
    from fraud_lib import store

    return store.connect_store(settings)


@cli.command()
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labeled transactions; only rows after the challenger's training period "
    "are used, so pass the file you trained on or newer data.",
)
@click.option("--version", "version", help="Challenger version (default: alias challenger).")
@click.option(
    "--min-improvement",
    type=float,
    help="Required gain in average precision (default FRAUD_PROMOTE_MIN_IMPROVEMENT).",
)
@click.option("--force", is_flag=True, help="Promote even if the gate says no.")
@click.option("--dry-run", is_flag=True, help="Decide and record, but do not move the alias.")
@click.pass_context
def promote(
    ctx: click.Context,
    data_path: str,
    version: str | None,
    min_improvement: float | None,
    force: bool,
    dry_run: bool,
) -> None:
    """Compare challenger and champion on the same held-out window; promote if better."""
    from fraud_lib import registry

    settings = _settings(ctx)
    challenger = version or registry.alias_version(settings, registry.CHALLENGER)
    if challenger is None:
        raise FraudError("no challenger: run fraud train --data ... first")
    loaded = registry.load_version(settings, challenger)
    df = _load(data_path, loaded.schema)
    fit_end = float(loaded.meta["time_range"]["fit_end"])
    window = df[df[loaded.schema.time] > fit_end]
    if window.empty:
        raise FraudError(
            f"{data_path} has no transactions after the challenger's training "
            f"period (time > {fit_end:g}); pass newer labeled data"
        )
    say(f"evaluating version {challenger} against the champion on {len(window):,} held-out rows")
    decision = registry.promote_if_better(
        settings,
        _engine(settings),
        window,
        challenger,
        min_improvement=min_improvement,
        force=force,
        dry_run=dry_run,
    )
    rows = [{"model": f"challenger v{decision.challenger_version}", **decision.challenger_metrics}]
    if decision.champion_metrics:
        rows.append(
            {"model": f"champion v{decision.champion_version}", **decision.champion_metrics}
        )
    print_table(
        rows, ["model", "average_precision", "roc_auc", "precision", "recall", "expected_cost"]
    )
    click.echo(f"decision: {decision.event} - {decision.reason}")


@cli.command()
@click.option("--to", "to_version", help="Version to restore (default: the previous champion).")
@click.option("--reason", default="manual rollback", show_default=True)
@click.pass_context
def rollback(ctx: click.Context, to_version: str | None, reason: str) -> None:
    """Move the champion alias back to the previous champion."""
    from fraud_lib import registry

    settings = _settings(ctx)
    old, new = registry.rollback(settings, _engine(settings), to_version=to_version, reason=reason)
    click.echo(f"champion moved from version {old} back to {new}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--events",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="How many decision-history rows to show.",
)
@click.pass_context
def models(ctx: click.Context, as_json: bool, events: int) -> None:
    """Registered versions with their aliases, and the promotion decision history."""
    from fraud_lib import registry, store

    settings = _settings(ctx)
    versions = registry.list_versions(settings)
    history = store.model_events(_engine(settings), settings.model_name, limit=events)
    if as_json:
        click.echo(json.dumps({"versions": versions, "events": history}, default=str, indent=2))
        return
    if not versions:
        click.echo(f"no versions of {settings.model_name} yet; run fraud train --data ...")
        return
    for v in versions:
        v["aliases"] = ",".join(v["aliases"]) or "-"
    print_table(
        versions,
        [
            "version",
            "aliases",
            "created",
            "model_type",
            "resample",
            "average_precision",
            "threshold",
            "decision",
        ],
    )
    if history:
        click.echo("")
        for e in history:
            e["challenger_metric"] = e.get("challenger_metric")
        print_table(
            history,
            [
                "created_at",
                "event",
                "version",
                "previous_version",
                "challenger_metric",
                "champion_metric",
                "reason",
            ],
        )


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings (secrets masked)."""
    for key, value in _settings(ctx).describe().items():
        click.echo(f"{key} = {value}")


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
    url = server.ensure_running()
    _engine(settings)
    click.echo(f"running: {url} (pid {server.pid})")


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
        click.echo(f"{key}: {value}")


# ------------------------------------------------------------------------------ labels
@cli.group()
def labels() -> None:
    """Labels (chargebacks, analyst reviews) that arrive after scoring."""


@labels.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--source", default="import", show_default=True, help="Recorded with each label.")
@click.pass_context
def labels_import(ctx: click.Context, path: str, source: str) -> None:
    """Upsert labels from a CSV with columns transaction_id,label[,labeled_at]."""
    from fraud_lib import data, store

    rows = data.load_labels(path)
    for row in rows:
        row["source"] = source
    say(f"upserting {len(rows):,} labels")
    result = store.upsert_labels(_engine(_settings(ctx)), rows)
    click.echo(
        f"inserted {result['inserted']:,}, updated {result['updated']:,}, "
        f"unknown transaction ids {len(result['unknown_ids']):,}"
    )


# ------------------------------------------------------------------------------ serving
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="gunicorn worker processes (one per core).",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Run the scoring service under gunicorn (this process becomes the gunicorn master).

    Starts the embedded Postgres first when no FRAUD_DATABASE_URL is set; the workers never
    start it themselves. Stop with Ctrl-C or SIGTERM: workers finish their requests and ship
    their prediction logs before exiting.
    """
    import os

    settings = _settings(ctx)
    if settings.embedded_postgres:
        from fraud_lib import pgserver

        say(f"starting the embedded Postgres on 127.0.0.1:{settings.pg_port}")
        pgserver.database_url(settings)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    argv = [
        sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf",
        "-b", f"{host}:{port}", "-w", str(workers), "serving.wsgi:app",
    ]  # fmt: skip
    say(f"serving on http://{host}:{port} with {workers} workers: {' '.join(argv[1:])}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


# ------------------------------------------------------------------------------ airflow
@cli.command("airflow")
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port of the Airflow UI / API server.",
)
@click.option(
    "--dags-folder",
    type=click.Path(file_okay=False),
    help="DAG folder (default: AIRFLOW__CORE__DAGS_FOLDER, else the project's dags/).",
)
@click.pass_context
def airflow_cmd(ctx: click.Context, port: int, dags_folder: str | None) -> None:
    """Start a local Airflow 3 (`airflow standalone`: API server + UI, scheduler, DAG processor,
    triggerer) on the project's DAGs. Ctrl-C stops it."""
    import os
    import subprocess

    from fraud_lib import airflow_local

    env = airflow_local.airflow_env(_settings(ctx), dags_folder)
    exe = airflow_local.airflow_exe()
    # standalone starts its components as `airflow ...` from PATH: put this environment's first.
    env["PATH"] = os.pathsep.join([str(Path(exe).parent), env.get("PATH", "")])
    env["AIRFLOW__API__PORT"] = str(port)
    # Task processes reach the API server here (Airflow's default assumes port 8080).
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://localhost:{port}/execution/")
    home = airflow_local.ensure_db(env, say)
    password_file = home / "simple_auth_manager_passwords.json.generated"
    say(f"AIRFLOW_HOME={home}; DAGs from {env['AIRFLOW__CORE__DAGS_FOLDER']}")
    click.echo(
        f"Airflow UI: http://127.0.0.1:{port} (ready after ~40 s)\n"
        f"login: admin, password in {password_file} (written on the first start)\n"
        "trigger fraud_retrain with Params: DAGs -> fraud_retrain -> Trigger -> edit the form; "
        f"drift reports land in {env['FRAUD_REPORTS_DIR']}"
    )
    proc = subprocess.Popen([exe, "standalone"], env=env)
    try:
        proc.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to airflow too; let it shut down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=30)
        raise
    if proc.returncode not in (0, -2):
        raise FraudError(f"airflow standalone exited with code {proc.returncode}")


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
    type=click.Path(file_okay=False),
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
        conf = json.loads(conf_json)
    except json.JSONDecodeError as exc:
        raise FraudError(f"--conf is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise FraudError('--conf must be a JSON object, e.g. \'{"model_type": "lr"}\'')
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
    "--rows-per-day",
    default=6000,
    show_default=True,
    type=click.IntRange(1000, 200_000),
    help="Synthetic transactions per day (history and replayed weeks).",
)
@click.option(
    "--history-days",
    default=28,
    show_default=True,
    type=click.IntRange(7, 365),
    help="Days of history the first champion is trained on.",
)
@click.option("--seed", default=7, show_default=True, type=int)
@click.pass_context
def demo(ctx: click.Context, reset: bool, rows_per_day: int, history_days: int, seed: int) -> None:
    """The whole loop with real components: first champion, the gunicorn service scoring two
    replayed weeks into Postgres, delayed labels, fraud_retrain and the drift monitor through
    Airflow, a promotion after a new fraud pattern, and the running service hot-reloading it.

    Takes ~5-8 minutes on 2 cores. The state stays for exploring (MLflow UI, Airflow UI,
    `fraud models`); `make clean` removes it.
    """
    from fraud_lib import demo as demo_lib

    demo_lib.demo_env_ok()
    settings = _settings(ctx)
    options = demo_lib.DemoOptions(rows_per_day=rows_per_day, history_days=history_days, seed=seed)
    report = demo_lib.run_demo(settings, options, say, reset=reset)
    demo_lib.print_summary(report, settings, click.echo)


def main() -> None:
    """Entry point of the ``fraud`` console script."""
    cli(prog_name="fraud")

"""Model commands: ``train``, ``promote``, ``rollback``, ``models`` and ``config``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fraud_lib.cli.base import (
    _engine,
    _settings,
    check_output_file,
    cli,
    dump_json,
    print_table,
    say,
)
from fraud_lib.config import THRESHOLD_RULES
from fraud_lib.errors import FraudError
from fraud_lib.retrain_params import MODEL_TYPES, RESAMPLERS

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


def _load(path: str, schema: Any) -> Any:
    from fraud_lib import data

    say(f"loading {path}")
    if schema.behavior is None:
        df = data.load_transactions(path, schema)
    else:
        from fraud_lib.features.raw_table import load_raw_transactions

        df = load_raw_transactions(path, schema)
        say(f"computed {len(schema.behavior.output_columns)} behavioral features from the history")
    say(f"loaded {len(df):,} rows, {int(df[schema.label].sum()):,} frauds")
    return df


@cli.command()
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(),
    help="Labeled transactions (.csv or .parquet), e.g. creditcard.csv.",
)
@click.option(
    "--schema",
    "schema_path",
    type=click.Path(),
    help="JSON/YAML schema for non-ULB tables (keys time, label, features, ...).",
)
@click.option(
    "--model",
    "model_type",
    default="hgb",
    show_default=True,
    type=click.Choice(list(MODEL_TYPES)),
    help="Model family.",
)
@click.option(
    "--resample",
    default="none",
    show_default=True,
    type=click.Choice(list(RESAMPLERS)),
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
    type=click.Choice(THRESHOLD_RULES),
    help="Threshold selection rule (default: FRAUD_THRESHOLD_RULE or f1).",
)
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Register the model in MLflow with alias 'challenger'.",
)
@click.option("--metrics-json", type=click.Path(), help="Write metrics here.")
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

    if metrics_json:
        check_output_file(metrics_json)
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
        if ref is None:
            raise FraudError("the model was trained but not registered in MLflow")
        payload.update(model_name=ref.name, version=ref.version, run_id=ref.run_id)
        click.echo(
            f"registered {ref.name} version {ref.version} (alias challenger); "
            "next: fraud promote --data <labeled data after the training period>"
        )
    if metrics_json:
        dump_json(metrics_json, payload)
        say(f"metrics written to {metrics_json}")


@cli.command()
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(),
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
    from fraud_lib import data, promotion, registry

    data.check_readable(Path(data_path))  # before the registry: a wrong path fails fast
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
    decision = promotion.promote_if_better(
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
    from fraud_lib import promotion

    settings = _settings(ctx)
    old, new = promotion.rollback(settings, _engine(settings), to_version=to_version, reason=reason)
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

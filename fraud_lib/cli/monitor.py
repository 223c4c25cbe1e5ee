"""Monitoring commands: ``fraud monitor performance`` (realized performance per cohort)."""

from __future__ import annotations

import json
from typing import Any

import click

from fraud_lib.cli.base import _engine, _settings, cli, say
from fraud_lib.config import PERFORMANCE_METRICS
from fraud_lib.errors import ConfigError


@cli.group()
def monitor() -> None:
    """Watch the served model: realized performance as labels mature."""


def _number(name: str, raw: str | None, kind: type) -> Any:
    """``raw`` as ``kind`` (None stays None); ConfigError naming the option otherwise."""
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"--{name} must be {what}; got {raw!r}") from None


@monitor.command("performance")
@click.option(
    "--as-of",
    metavar="TIME",
    help="Measure as of this ISO-8601 time, UTC if no zone (default: now).",
)
@click.option(
    "--label-window-days",
    metavar="DAYS",
    help="Days until a cohort is mature (FRAUD_LABEL_WINDOW_DAYS).",
)
@click.option(
    "--lookback-days",
    metavar="DAYS",
    help="Scoring days measured (FRAUD_PERFORMANCE_LOOKBACK_DAYS).",
)
@click.option(
    "--eval-days", metavar="DAYS", help="Mature cohorts averaged (FRAUD_PERFORMANCE_EVAL_DAYS)."
)
@click.option(
    "--metric",
    metavar="NAME",
    help=f"Deciding metric: {', '.join(PERFORMANCE_METRICS)} (FRAUD_PERFORMANCE_METRIC).",
)
@click.option(
    "--tolerance",
    metavar="POINTS",
    help="Drop in metric points that counts (FRAUD_PERFORMANCE_TOLERANCE).",
)
@click.option(
    "--k",
    metavar="N",
    help="Analyst capacity per day for card precision at k (FRAUD_ANALYST_CAPACITY).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option("--no-report", is_flag=True, help="Skip the Evidently report and the MLflow run.")
@click.pass_context
def performance_cmd(
    ctx: click.Context,
    as_of: str | None,
    label_window_days: str | None,
    lookback_days: str | None,
    eval_days: str | None,
    metric: str | None,
    tolerance: str | None,
    k: str | None,
    as_json: bool,
    no_report: bool,
) -> None:
    """Realized performance per scoring day and model version: AP, ROC AUC, precision /
    recall / F1 at the served threshold, alert rate, card precision at k, expected cost.

    Cohorts younger than the label window are provisional (label coverage shown); the
    champion's mature cohorts are compared with what it promised. Runs what the
    fraud_performance_monitor DAG runs (stores the cohort table, writes the report) but never
    starts fraud_retrain itself.
    """
    from datetime import UTC, datetime

    from fraud_lib.drift import json_safe
    from fraud_lib.monitoring import performance

    settings = performance.with_options(
        _settings(ctx),
        label_window_days=_number("label-window-days", label_window_days, int),
        lookback_days=_number("lookback-days", lookback_days, int),
        eval_days=_number("eval-days", eval_days, int),
        metric=metric,
        tolerance=_number("tolerance", tolerance, float),
        k=_number("k", k, int),
    )
    when = performance.parse_as_of(as_of) if as_of else datetime.now(UTC)
    say(f"measuring realized performance as of {when:%Y-%m-%d %H:%M} UTC")
    result = performance.performance_monitor(
        settings, _engine(settings), as_of=when, report=not no_report, progress=say
    )
    if as_json:
        click.echo(json.dumps(json_safe(result.as_dict()), indent=2, allow_nan=False))
        return
    click.echo(performance.format_cohorts(result))
    if result.html_path or result.json_path:
        say(f"report: {result.html_path or result.json_path}")
    if result.drop_detected:
        say("the fraud_performance_monitor DAG would start fraud_retrain now")

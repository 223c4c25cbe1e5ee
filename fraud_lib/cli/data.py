"""Data commands: ``generate`` (synthetic transactions) and ``labels import``."""

from __future__ import annotations

import click

from fraud_lib.cli.base import _engine, _settings, cli, say

MAX_ROWS = 100_000_000  # what one generated file may hold (~25 GB of ULB rows in memory)


@cli.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(),
    help="Output file: .csv, .csv.gz or .parquet.",
)
@click.option(
    "--days",
    default=28,
    show_default=True,
    type=click.IntRange(1, 3650),
    help="Days of history to generate.",
)
@click.option(
    "--rows-per-day", default=10_000, show_default=True, type=click.IntRange(10, MAX_ROWS)
)
@click.option(
    "--rows",
    "total_rows",
    type=click.IntRange(10, MAX_ROWS),
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
@click.option("--label-delay-days", default=3.0, show_default=True, type=click.FloatRange(0, 365))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option(
    "--kind",
    default="ulb",
    show_default=True,
    type=click.Choice(["ulb", "raw"]),
    help="ulb: the creditcard.csv layout (V1..V28); raw: customer/terminal transactions for "
    "behavioral features (schema: fraud_lib/features/raw_schema.yaml).",
)
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
    kind: str,
) -> None:
    """Generate synthetic transactions (ULB creditcard.csv schema, or raw with --kind raw)."""
    from fraud_lib import data
    from fraud_lib.features.raw_data import generate_raw

    if total_rows is None and days * rows_per_day > MAX_ROWS:
        raise click.BadParameter(
            f"--days x --rows-per-day = {days * rows_per_day:,} rows; at most {MAX_ROWS:,}",
            param_hint="--rows-per-day",
        )
    say(f"generating {days} day(s) of {kind} transactions (scenario={scenario}, seed={seed})")
    df = (generate_raw if kind == "raw" else data.generate)(
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
    frauds = int(df["is_fraud" if kind == "raw" else "Class"].sum())
    say(f"wrote {len(df):,} rows ({frauds:,} frauds) to {out}")


@cli.group()
def labels() -> None:
    """Labels (chargebacks, analyst reviews) that arrive after scoring."""


@labels.command("import")
@click.argument("path", type=click.Path())
@click.option("--source", default="import", show_default=True, help="Recorded with each label.")
@click.pass_context
def labels_import(ctx: click.Context, path: str, source: str) -> None:
    """Upsert labels from a CSV (UTF-8) or parquet file with columns
    transaction_id,label[,labeled_at] (ISO 8601, e.g. 2024-05-01T12:00:00Z; no zone = UTC)."""
    from fraud_lib import label_files, store

    settings = _settings(ctx)
    rows = label_files.load_labels(path, settings.timestamp_bounds)
    for row in rows:
        row["source"] = source
    say(f"upserting {len(rows):,} labels")
    result = store.upsert_labels(_engine(settings), rows, bounds=settings.timestamp_bounds)
    click.echo(
        f"inserted {result['inserted']:,}, updated {result['updated']:,}, "
        f"unknown transaction ids {len(result['unknown_ids']):,}"
    )

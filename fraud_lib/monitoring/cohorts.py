"""Cohorts of the prediction log: per scoring day (UTC) and served model version, the
realized metrics with the labels known at the run's as-of time, read with one COPY, and the
``performance_cohorts`` table where each run's cohort table is kept.

See :mod:`fraud_lib.monitoring.performance` for what the numbers mean and how they decide.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from fraud_lib import store, tables
from fraud_lib.config import PERFORMANCE_METRICS, Settings
from fraud_lib.errors import ConfigError
from fraud_lib.evaluate import compute_metrics, precision_at_k

DAY = timedelta(days=1)
EPOCH = date(1970, 1, 1)


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is None, NaN or infinite."""
    return float(value) if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------------ read
_READ = (
    "COPY (SELECT (p.scored_at AT TIME ZONE 'UTC')::date - DATE '1970-01-01', "
    "COALESCE(p.model_version, ''), p.score, p.threshold, l.label{entity} "
    "FROM predictions p LEFT JOIN labels l "
    "ON l.transaction_id = p.transaction_id AND l.labeled_at <= {as_of} "
    "WHERE p.scored_at >= {start} AND p.scored_at < {as_of} "
    "AND COALESCE(p.model_name, {model}) = {model}) TO STDOUT (FORMAT csv)"
)
_COLUMNS = ["day", "model_version", "score", "threshold", "label"]


def read_scored(
    bind: Engine,
    *,
    start: datetime,
    as_of: datetime,
    model_name: str,
    entity_key: str = "",
) -> pd.DataFrame:
    """Predictions of ``model_name`` (or of no logged name) scored in ``[start, as_of)`` with
    the label known by ``as_of`` (NaN if none): columns day (days since 1970-01-01, UTC), model_version ('' if not logged), score,
    threshold, label, and ``entity`` (the features' ``entity_key`` value) when given.

    COPY in CSV parsed by pandas: ~6x faster than fetching 1M rows as Python tuples.
    """
    entity = sql.SQL(", p.features ->> {}").format(sql.Literal(entity_key))
    query = sql.SQL(_READ).format(
        entity=entity if entity_key else sql.SQL(""),
        as_of=sql.Literal(as_of),
        start=sql.Literal(start),
        model=sql.Literal(model_name),
    )
    buffer = io.BytesIO()
    with store.begin(bind) as conn:
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute("SET LOCAL jit = off")
            cur.execute("SET LOCAL work_mem = '64MB'")
            with cur.copy(query) as copy:
                for chunk in copy:
                    buffer.write(chunk)
    buffer.seek(0)
    names = [*_COLUMNS, *(["entity"] if entity_key else [])]
    if not buffer.getbuffer().nbytes:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in names})
    return pd.read_csv(
        buffer,
        header=None,
        names=names,
        dtype={"day": "int32", "model_version": str, "entity": str},
        keep_default_na=False,
        na_values={"threshold": [""], "label": [""], "entity": [""]},
    )


# ------------------------------------------------------------------------------ metrics
@dataclass
class Cohort:
    """Realized performance of one model version on one scoring day (None: not defined)."""

    cohort_day: str
    model_version: str
    mature: bool
    n: int
    labeled: int
    frauds: int
    label_coverage: float
    threshold: float | None
    alert_rate: float | None
    average_precision: float | None
    roc_auc: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    card_precision_at_k: float | None
    k: int
    expected_cost: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cohort(group: pd.DataFrame, day: date, version: str, mature: bool,
            k: int, costs: dict[str, float]) -> Cohort:  # fmt: skip
    known = group["label"].to_numpy(dtype=float)
    y = np.nan_to_num(known, nan=0.0).astype(int)
    scores = group["score"].to_numpy(dtype=float)
    thresholds = group["threshold"].dropna()
    threshold = float(thresholds.median()) if len(thresholds) else math.inf
    m = compute_metrics(y, scores, threshold, top_k=k, **costs)
    served = math.isfinite(threshold)
    card, k_used = m["precision_at_k"], int(m["k"])
    if "entity" in group:
        per_entity = pd.DataFrame({"e": group["entity"].to_numpy(), "y": y, "s": scores})
        per_entity = per_entity.dropna(subset=["e"]).groupby("e", sort=False).max()
        card = precision_at_k(per_entity["y"], per_entity["s"], k) if len(per_entity) else None
        k_used = min(k, len(per_entity))
    n = len(group)
    return Cohort(
        cohort_day=day.isoformat(),
        model_version=version,
        mature=mature,
        n=n,
        labeled=int(np.isfinite(known).sum()),
        frauds=int(y.sum()),
        label_coverage=float(np.isfinite(known).sum() / n),
        threshold=threshold if served else None,
        alert_rate=(m["tp"] + m["fp"]) / n if served else None,
        average_precision=finite(m["average_precision"]),
        roc_auc=finite(m["roc_auc"]),
        precision=m["precision"] if served else None,
        recall=m["recall"] if served else None,
        f1=m["f1"] if served else None,
        card_precision_at_k=finite(card),
        k=k_used,
        expected_cost=m["expected_cost"] if served else None,
    )


def matures_at(cohort_day: date, label_window_days: int) -> datetime:
    """When a cohort becomes mature: its day's end plus the label window."""
    start = datetime(cohort_day.year, cohort_day.month, cohort_day.day, tzinfo=UTC)
    return start + DAY * (1 + label_window_days)


def cohort_table(frame: pd.DataFrame, settings: Settings, as_of: datetime) -> list[Cohort]:
    """One :class:`Cohort` per (day, model version) of ``frame`` (from :func:`read_scored`),
    oldest day first."""
    costs = {
        "cost_false_negative": settings.cost_false_negative,
        "cost_false_positive": settings.cost_false_positive,
    }
    out = []
    for (day_number, version), group in frame.groupby(["day", "model_version"], sort=True):
        day = EPOCH + timedelta(days=int(day_number))
        mature = as_of >= matures_at(day, settings.label_window_days)
        out.append(_cohort(group, day, str(version), mature, settings.analyst_capacity, costs))
    return out


# ------------------------------------------------------------------------------ storage
def save_cohorts(bind: Engine, as_of: datetime, cohorts: list[Cohort]) -> int:
    """Upsert one run's cohort table into ``performance_cohorts``; rows written."""
    if not cohorts:
        return 0
    table = tables.performance_cohorts
    rows = [{**c.as_dict(), "as_of": as_of, "cohort_day": date.fromisoformat(c.cohort_day)}
            for c in cohorts]  # fmt: skip
    stmt = insert(table).values(rows)
    keys = {"as_of", "cohort_day", "model_version"}
    update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    update["written_at"] = sa.func.now()
    with store.begin(bind) as conn:
        conn.execute(stmt.on_conflict_do_update(index_elements=sorted(keys), set_=update))
    return len(rows)


def stored_history(bind: Engine, version: str, metric: str, before: datetime) -> dict[str, Any]:
    """Mature cohorts of ``version`` stored by runs with an as-of before ``before``: cohort
    day -> ``metric`` as the latest such run measured it."""
    if metric not in PERFORMANCE_METRICS:
        raise ConfigError(f"unknown metric {metric!r}; use one of {PERFORMANCE_METRICS}")
    t = tables.performance_cohorts
    query = (
        sa.select(t.c.cohort_day, t.c[metric])
        .where(t.c.model_version == version, t.c.mature, t.c.as_of < before)
        .distinct(t.c.cohort_day)
        .order_by(t.c.cohort_day, t.c.as_of.desc())
    )
    with store.begin(bind) as conn:
        return {d.isoformat(): v for d, v in conn.execute(query)}


def stored_cohorts(bind: Engine, as_of: datetime) -> list[dict[str, Any]]:
    """The cohort table a run with this as-of stored (oldest day first)."""
    t = tables.performance_cohorts
    names = [f.name for f in fields(Cohort)]
    query = sa.select(*(t.c[n] for n in names)).where(t.c.as_of == as_of)
    with store.begin(bind) as conn:
        rows = [dict(r) for r in conn.execute(query.order_by(t.c.cohort_day, t.c.model_version))
                .mappings()]  # fmt: skip
    return [{**r, "cohort_day": r["cohort_day"].isoformat()} for r in rows]

"""Realized performance of the served model per scoring day (cohort), as its labels mature.

**Cohorts.** A cohort is one UTC scoring day of one served model version: every logged
prediction scored that day by that version (a transaction scored twice counts twice, as it was
served twice). A run looks at the days in ``[day(as_of) - lookback_days, as_of)``.

**Label maturity.** A label counts only if ``labeled_at <= as_of`` (the run's as-of time, the
DAG's data interval end), so a re-run of the same interval sees the same labels. A cohort is
*mature* once ``label_window_days`` have passed after its day ended; then an unlabeled
transaction counts as legitimate. Younger cohorts are *provisional*: their metrics use the
labels known so far, unlabeled as legitimate too, and their ``label_coverage`` (labeled /
predictions) says how far the labels got. Only mature cohorts decide.

**Metrics per cohort** (:func:`fraud_lib.evaluate.compute_metrics`): average precision, ROC
AUC, precision / recall / F1 and expected cost at the served threshold (the threshold logged
with the predictions), alert rate (share at or above it), and card precision at k: the share
of frauds among the day's ``k`` highest scores, ``k`` = the analysts' daily capacity; with an
entity key (a key of the logged features, e.g. a card id) it ranks entities by their highest
score that day, an entity being fraudulent if any of its transactions is.

**The decision** (:func:`decide`): the champion's latest ``eval_days`` mature cohorts, the mean
of their daily ``metric``, are compared with what the champion promised: its held-out metric
logged in MLflow (none for card precision at k, whose k differs) and the mean over its first
``eval_days`` mature cohorts (this run's plus those stored by earlier runs; only once the two
spans do not overlap). Falling below either by more than ``tolerance`` (metric points) is a
drop: the DAG then emits the ``fraudloop_performance`` asset, which starts ``fraud_retrain``.

Cohort metrics are computed in one pass over ``(day, version, score, threshold, label)`` read
with COPY (the features JSON is not read unless an entity key is set); each run's table is
upserted into ``performance_cohorts`` keyed on (as_of, cohort_day, model_version): both in
:mod:`fraud_lib.monitoring.cohorts`. The report (Evidently HTML + JSON, MLflow run) is
:mod:`fraud_lib.monitoring.performance_report`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from fraud_lib import assets
from fraud_lib.config import PERFORMANCE_METRICS, Settings
from fraud_lib.errors import ConfigError, FraudError
from fraud_lib.monitoring.cohorts import (
    DAY,
    Cohort,
    cohort_table,
    finite,
    read_scored,
    save_cohorts,
    stored_history,
)

log = logging.getLogger(__name__)

ASSET = assets.PERFORMANCE
# Cohort metric -> the metric logged with a model version in MLflow it is compared with.
PROMISED = {m: m for m in PERFORMANCE_METRICS if m != "card_precision_at_k"}
# Option name -> the Settings field it overrides (CLI options and DAG Params use these names).
OPTIONS = {
    "label_window_days": "label_window_days",
    "lookback_days": "performance_lookback_days",
    "eval_days": "performance_eval_days",
    "metric": "performance_metric",
    "tolerance": "performance_tolerance",
    "k": "analyst_capacity",
}


class NoPredictions(FraudError):
    """No prediction was scored in the run's lookback: nothing to measure."""


def with_options(settings: Settings, **options: Any) -> Settings:
    """``settings`` with the monitor options of :data:`OPTIONS` that are not None, validated
    (raises :class:`ConfigError` naming the first bad value)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown performance option(s) {unknown}; use {sorted(OPTIONS)}")
    changes = {OPTIONS[k]: v for k, v in options.items() if v is not None}
    updated = replace(settings, **changes)
    updated.validate()
    return updated


def as_utc(value: datetime) -> datetime:
    """``value`` with a zone (naive = UTC), in UTC."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def parse_as_of(text: str) -> datetime:
    """An ISO-8601 date or timestamp (naive = UTC) as an aware datetime; ConfigError if not."""
    try:
        return as_utc(datetime.fromisoformat(text.strip()))
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(
            f"--as-of {text!r} is not an ISO-8601 date or timestamp, e.g. 2025-03-01 or "
            "2025-03-01T00:00:00Z"
        ) from None


# ------------------------------------------------------------------------------ decision
@dataclass
class PerformanceDecision:
    """The champion's recent mature performance against what it promised."""

    metric: str
    tolerance: float
    eval_days: int
    champion_version: str | None
    recent: float | None = None
    recent_days: list[str] = field(default_factory=list)
    references: dict[str, float | None] = field(default_factory=dict)
    first_mature_days: list[str] = field(default_factory=list)
    drop_detected: bool = False
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(known)) if known else None


def decide(
    cohorts: list[Cohort],
    *,
    champion: str | None,
    metric: str,
    tolerance: float,
    eval_days: int,
    promised: float | None,
    history: dict[str, float | None] | None = None,
) -> PerformanceDecision:
    """Compare the champion's latest ``eval_days`` mature cohorts (mean daily ``metric``) with
    ``promised`` (its held-out metric) and with its first ``eval_days`` mature cohorts (from
    ``history``, cohort day -> metric stored by earlier runs, and ``cohorts``)."""
    decision = PerformanceDecision(metric, tolerance, eval_days, champion)
    if champion is None:
        decision.notes.append("no champion yet: nothing to compare")
        return decision
    mature = {c.cohort_day: getattr(c, metric) for c in cohorts
              if c.model_version == champion and c.mature}  # fmt: skip
    if len(mature) < eval_days:
        decision.notes.append(
            f"champion v{champion} has {len(mature)} mature cohort(s) in the lookback; "
            f"{eval_days} are needed to decide"
        )
        return decision
    decision.recent_days = sorted(mature)[-eval_days:]
    decision.recent = _mean([mature[d] for d in decision.recent_days])
    every = {**(history or {}), **mature}
    first = sorted(every)[:eval_days]
    decision.references["validation"] = promised
    if first[-1] < decision.recent_days[0]:
        decision.first_mature_days = first
        decision.references["first_mature"] = _mean([every[d] for d in first])
    else:
        decision.references["first_mature"] = None
        decision.notes.append(
            f"champion v{champion} has {len(every)} mature cohorts; its first and latest "
            f"{eval_days} overlap, so only its validation metric is compared"
        )
    if decision.recent is None:
        decision.notes.append(f"no {metric} in the recent cohorts (no frauds labeled)")
        return decision
    for name, reference in decision.references.items():
        if reference is not None and decision.recent < reference - tolerance:
            decision.reasons.append(
                f"{metric} {decision.recent:.4f} over cohorts {decision.recent_days[0]}.."
                f"{decision.recent_days[-1]} is below the champion's {name.replace('_', ' ')} "
                f"{reference:.4f} by {reference - decision.recent:.4f} (> tolerance {tolerance:g})"
            )
    decision.drop_detected = bool(decision.reasons)
    return decision


# ------------------------------------------------------------------------------ a run
@dataclass
class PerformanceResult:
    """What one monitor run measured and decided; ``as_dict()`` is its JSON summary."""

    as_of: str
    start: str
    options: dict[str, Any]
    rows: int
    cohorts: list[dict[str, Any]]
    decision: dict[str, Any]
    asset: str = ASSET
    html_path: str | None = None
    json_path: str | None = None
    mlflow_run_id: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def drop_detected(self) -> bool:
        """True when the DAG should emit :data:`ASSET` (and start fraud_retrain)."""
        return bool(self.decision["drop_detected"])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _promised(settings: Settings, version: str | None, metric: str) -> float | None:
    """The champion's held-out ``metric`` logged with its MLflow run (None if not logged)."""
    from fraud_lib import registry

    if version is None or metric not in PROMISED:
        return None
    c = registry.client(settings)
    run_id = c.get_model_version(settings.model_name, version).run_id
    return finite(c.get_run(run_id).data.metrics.get(PROMISED[metric]))


def performance_monitor(
    settings: Settings,
    engine: Engine,
    *,
    as_of: datetime,
    report: bool = True,
    progress: Callable[[str], None] = log.info,
) -> PerformanceResult:
    """Measure the cohorts of ``[day(as_of) - lookback, as_of)``, store them, decide, and
    (``report``) write the Evidently report and the MLflow run. Raises
    :class:`NoPredictions` when nothing was scored in the lookback."""
    from fraud_lib import registry

    started = time.perf_counter()
    as_of = as_utc(as_of)
    try:
        start = as_of.replace(hour=0, minute=0, second=0, microsecond=0)
        start -= DAY * settings.performance_lookback_days
    except OverflowError:
        raise ConfigError(f"as-of {as_of:%Y-%m-%d} minus the lookback is before year 1") from None
    frame = read_scored(engine, start=start, as_of=as_of, model_name=settings.model_name,
                        entity_key=settings.entity_key)  # fmt: skip
    seconds = {"read": time.perf_counter() - started}
    if frame.empty:
        raise NoPredictions(f"no predictions scored in [{start:%Y-%m-%d}, {as_of:%Y-%m-%d %H:%M})")
    progress(f"read {len(frame):,} predictions scored {start:%Y-%m-%d}..{as_of:%Y-%m-%d %H:%M}")
    cohorts = cohort_table(frame, settings, as_of)
    seconds["metrics"] = time.perf_counter() - started - seconds["read"]
    champion = registry.alias_version(settings, registry.CHAMPION)
    metric = settings.performance_metric
    decision = decide(
        cohorts,
        champion=champion,
        metric=metric,
        tolerance=settings.performance_tolerance,
        eval_days=settings.performance_eval_days,
        promised=_promised(settings, champion, metric),
        history=stored_history(engine, champion, metric, as_of) if champion else None,
    )
    save_cohorts(engine, as_of, cohorts)
    result = PerformanceResult(
        as_of=as_of.isoformat(),
        start=start.isoformat(),
        options={name: getattr(settings, f) for name, f in OPTIONS.items()}
        | {"entity_key": settings.entity_key},
        rows=len(frame),
        cohorts=[c.as_dict() for c in cohorts],
        decision=decision.as_dict(),
    )
    if report:
        from fraud_lib.monitoring import dashboard
        from fraud_lib.monitoring.performance_report import write_report, write_summary

        mark = time.perf_counter()
        details = write_report(settings, result, frame)
        seconds["report"] = time.perf_counter() - mark
        dashboard.add_performance(
            settings, [{**c.as_dict(), "volume": c.n, "provisional": not c.mature} for c in cohorts]
        )
    seconds["total"] = time.perf_counter() - started
    result.seconds = {k: round(v, 3) for k, v in seconds.items()}
    if report:  # last: the JSON holds the timings (it was written before them, with {})
        write_summary(settings, result, details)
    progress(
        f"{len(cohorts)} cohorts ({sum(c.mature for c in cohorts)} mature); "
        f"{'DROP' if decision.drop_detected else 'no drop'} in {metric}"
    )
    return result


# ------------------------------------------------------------------------------ text
_TABLE = (
    ("cohort_day", "day"), ("model_version", "version"), ("status", "status"), ("n", "n"),
    ("label_coverage", "labeled"), ("frauds", "frauds"), ("average_precision", "AP"),
    ("roc_auc", "AUC"), ("precision", "prec"), ("recall", "recall"), ("f1", "F1"),
    ("alert_rate", "alerts"), ("card_precision_at_k", "P@k"), ("expected_cost", "cost"),
)  # fmt: skip


def _cell(key: str, row: dict[str, Any]) -> str:
    if key == "status":
        return "mature" if row["mature"] else "provisional"
    value = row.get(key)
    if value is None:
        return "-"
    if key in ("label_coverage", "alert_rate"):
        return f"{100 * value:.1f}%"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_cohorts(result: PerformanceResult) -> str:
    """The cohort table and the decision as text, for the task log and the CLI."""
    cells = [[head for _, head in _TABLE]]
    cells += [[_cell(key, row) for key, _ in _TABLE] for row in result.cohorts]
    widths = [max(len(r[i]) for r in cells) for i in range(len(_TABLE))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    d, k = result.decision, result.options["k"]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"as of {result.as_of}: {result.rows:,} predictions; mature = "
        f"{result.options['label_window_days']} days after the day; P@k: k = {k}"
    )
    refs = ", ".join(f"{n} {'-' if v is None else f'{v:.4f}'}" for n, v in d["references"].items())
    recent = "-" if d["recent"] is None else f"{d['recent']:.4f}"
    lines.append(
        f"champion v{d['champion_version']}: {d['metric']} {recent} over its last "
        f"{d['eval_days']} mature cohorts; promised: {refs or '-'}"
    )
    verdict = "DROP: " + "; ".join(d["reasons"]) if d["drop_detected"] else "no drop"
    lines.append(f"{verdict} (tolerance {d['tolerance']:g})" + "".join(
        f"\nnote: {n}" for n in d["notes"]))  # fmt: skip
    return "\n".join(lines)

"""The retraining cycle as plain functions: what the Airflow tasks and the CLI call.

Steps (one Airflow task each): :func:`fraud_lib.window.ingest_window` -> :func:`check_drift` ->
:func:`train_challenger` -> :func:`evaluate` -> :func:`promote` -> :func:`notify_serving`;
:func:`drift_monitor` is the daily check. Inputs and outputs are small (window references,
``runs:/`` URIs, versions, metrics), so they travel through XCom; the window itself travels
through the MLflow artifact store (:mod:`fraud_lib.window_store`), never as a local path. The first step, the run's labeled window and its
event-time split, is in :mod:`fraud_lib.window`; the run's MLflow record and its human summary
are in :mod:`fraud_lib.cycle_report`.

**Re-running the same interval** (same ``run_key``: interval end + window length): the window
is rewritten with the same rows (see :mod:`fraud_lib.window`); the drift report is rewritten
identically (seeded sampling); no new model version is registered if one was already trained
on the same window content with the same settings (tag ``fraudloop.train_key``; the
``challenger`` alias is set on it again); and the recorded decision for that version and run is
replayed instead of being taken again, so no second ``model_events`` row and no second alias
move. A dry run records an event every time. A run on a window the champion itself was trained
on (e.g. a drift event with no new traffic since) reuses the champion's version: there is no
new challenger, and the decision is recorded as ``skipped``, never as a rejection.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from fraud_lib import logged, promotion, registry, store
from fraud_lib.config import Settings
from fraud_lib.drift import drift_report
from fraud_lib.errors import DataError, FraudError
from fraud_lib.memory import releases_memory
from fraud_lib.monitoring import dashboard, events
from fraud_lib.schema import FeatureSchema
from fraud_lib.window import split_window, window_digest
from fraud_lib.window_store import WindowRef, load_window

log = logging.getLogger(__name__)

TRAIN_KEY_TAG = registry.TAG + "train_key"
SUMMARY_METRICS = ("average_precision", "roc_auc", "precision", "recall", "f1", "expected_cost")


class SkipRun(FraudError):
    """Nothing to do for this run (too few labels, no champion, ...); the message says why."""


# ------------------------------------------------------------------------------ drift
def _drift_vs_champion(
    settings: Settings,
    champion: str,
    current: pd.DataFrame,
    *,
    name: str,
    label: str | None,
    context: dict[str, str],
) -> dict[str, Any]:
    """Drift of ``current`` vs the champion's training reference. The score is the champion's
    own score on both sides (``current`` is re-scored, ~2 s for 300k rows): logged scores come
    from whichever model served then, and comparing another model's scores with the
    champion's reference would report a score shift right after every promotion."""
    loaded = registry.load_version(settings, champion)
    schema = loaded.schema
    missing = [c for c in schema.model_columns if c not in current.columns]
    if missing:
        raise DataError(f"the traffic lacks the champion's feature(s) {missing}")
    current = current.dropna(subset=schema.model_columns)
    if current.empty:
        raise SkipRun(f"no rows with every feature of champion v{champion} to check for drift")
    current = current.assign(score=loaded.score(current))
    basis = f"champion v{champion} training reference (scores: champion v{champion} on both sides)"
    summary = drift_report(
        registry.load_reference(settings, champion),
        current,
        list(schema.features),
        categorical=list(schema.categorical),
        out_dir=settings.reports_dir,
        name=name,
        sample_rows=settings.drift_sample_rows,
        score_column="score",
        label_column=label,
        drift_share_threshold=settings.drift_share_threshold,
        score_shift_threshold=settings.score_shift_threshold,
        context={**context, "champion": f"v{champion}", "reference": basis},
    ).as_dict()
    summary.update(reference_basis=basis, champion_version=champion)
    return summary


@releases_memory
def check_drift(
    settings: Settings,
    window_ref: WindowRef,
    run_key: str,
    *,
    context: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evidently drift of the window vs the champion's training reference (HTML + JSON in
    ``reports_dir``). Without a champion the window's older half (by event time) is the
    reference, with the logged scores. ``context`` (e.g. the DAG run) heads the HTML report."""
    context = {"window": f"{run_key} ({window_ref.uri})", **(context or {})}
    schema = FeatureSchema.load(settings.schema_path)
    window = load_window(settings, window_ref, schema)
    name = f"fraud_retrain__{run_key}"
    champion = registry.alias_version(settings, registry.CHAMPION)
    if champion is not None:
        summary = _drift_vs_champion(
            settings, champion, window, name=name, label=schema.label, context=context
        )
        return {**summary, "run_key": run_key}
    later = window[schema.time] > float(window[schema.time].median())
    if later.all() or not later.any():
        raise SkipRun("no champion and a window too short in time to split for a drift check")
    basis = "no champion yet: older half of the window (by event time) vs newer half"
    summary = drift_report(
        window[~later],
        window[later],
        list(schema.features),
        categorical=list(schema.categorical),
        out_dir=settings.reports_dir,
        name=name,
        sample_rows=settings.drift_sample_rows,
        label_column=schema.label,
        drift_share_threshold=settings.drift_share_threshold,
        score_shift_threshold=settings.score_shift_threshold,
        context={**context, "champion": "none yet", "reference": basis},
    ).as_dict()
    return {**summary, "reference_basis": basis, "champion_version": None, "run_key": run_key}


def drift_monitor(
    settings: Settings,
    engine: Engine,
    *,
    interval_end: datetime,
    days: float,
    run_key: str,
    context: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Recent logged predictions (no labels needed) vs the champion's reference; ``context``
    (e.g. the DAG run) heads the HTML report."""
    champion = registry.alias_version(settings, registry.CHAMPION)
    if champion is None:
        raise SkipRun("no champion yet: nothing to compare recent traffic with")
    start = interval_end - timedelta(days=days)
    recent = logged.recent_predictions(engine, start=start, end=interval_end)
    if recent.empty:
        raise SkipRun(
            f"no predictions scored in [{start:%Y-%m-%d %H:%M}, {interval_end:%Y-%m-%d %H:%M})"
        )
    name = f"fraud_drift_monitor__{run_key}"
    window = (
        f"{len(recent):,} predictions scored in "
        f"[{start:%Y-%m-%d %H:%M}, {interval_end:%Y-%m-%d %H:%M}) UTC"
    )
    summary = _drift_vs_champion(
        settings,
        champion,
        recent,
        name=name,
        label=None,
        context={**(context or {}), "window": window},
    )
    events.alert_drift(settings, summary)
    dashboard.add_drift(settings, summary, timestamp=interval_end, run_key=run_key)
    return {**summary, "start": start.isoformat(), "end": interval_end.isoformat()}


# ------------------------------------------------------------------------------ training
def _train_key(digest: str, **fields: Any) -> str:
    text = json.dumps({"window": digest, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _existing_version(settings: Settings, train_key: str) -> Any | None:
    """The version already trained with ``train_key``: by its version tag, or by its run's tag
    (a retry after a crash between registering the version and tagging it)."""
    c = registry.client(settings)
    versions = c.search_model_versions(f"name='{settings.model_name}'")
    for mv in versions:
        if mv.tags.get(TRAIN_KEY_TAG) == train_key:
            return mv
    runs = c.search_runs(
        [registry.ensure_experiment(settings)],
        filter_string=f"tags.`{TRAIN_KEY_TAG}` = '{train_key}'",
    )
    run_ids = {r.info.run_id for r in runs}
    for mv in versions:
        if mv.run_id in run_ids:
            c.set_model_version_tag(settings.model_name, mv.version, TRAIN_KEY_TAG, train_key)
            return mv
    return None


@releases_memory
def train_challenger(
    settings: Settings,
    window_ref: WindowRef,
    *,
    eval_days: float,
    model_type: str,
    resample: str,
    run_key: str = "",
) -> dict[str, Any]:
    """Train on the window minus its evaluation slice; register with alias ``challenger``.

    Reuses (does not re-register) a version trained on the same window with the same options.
    """
    from fraud_lib.train import train_model

    schema = FeatureSchema.load(settings.schema_path)
    window = load_window(settings, window_ref, schema)
    digest = window_digest(window)
    train_part, eval_part, cutoff = split_window(window, schema, eval_days)
    eval_frauds, n_eval = int(eval_part[schema.label].sum()), len(eval_part)
    del window, eval_part  # only the training part is needed from here on
    if eval_frauds == 0 or train_part.empty:
        raise SkipRun(
            f"the evaluation slice (last {eval_days:g} days of event time: {n_eval:,} "
            f"rows, {eval_frauds} frauds) or the training part ({len(train_part):,} rows) is "
            "empty of frauds; use a longer window or wait for more labels"
        )
    key = _train_key(
        digest,
        eval_days=eval_days,
        model_type=model_type,
        resample=resample,
        threshold_rule=settings.threshold_rule,
        schema=schema.to_dict(),
    )
    facts = {
        "model_type": model_type,
        "resample": resample,
        "n_train": len(train_part),
        "n_eval": n_eval,
        "eval_frauds": eval_frauds,
        "eval_cutoff_time": cutoff,
        "train_key": key,
    }
    existing = _existing_version(settings, key)
    c = registry.client(settings)
    if existing is not None:
        c.set_registered_model_alias(settings.model_name, registry.CHALLENGER, existing.version)
        metrics = c.get_run(existing.run_id).data.metrics
        if str(existing.version) == registry.alias_version(settings, registry.CHAMPION):
            log.info(
                "no new challenger: the model trained on this window is the champion v%s",
                existing.version,
            )
        else:
            log.info("re-run: version %s was already trained on this window", existing.version)
        return {
            "version": str(existing.version),
            "run_id": existing.run_id,
            "reused": True,
            "metrics": {k: metrics.get(k) for k in (*SUMMARY_METRICS, "threshold")},
            "train_seconds": metrics.get("train_seconds"),
            **facts,
        }
    try:
        result = train_model(
            train_part,
            schema,
            model_type=model_type,
            resample=resample,
            test_fraction=0.0,
            threshold_rule=settings.threshold_rule,
            target_precision=settings.target_precision,
            cost_false_negative=settings.cost_false_negative,
            cost_false_positive=settings.cost_false_positive,
            progress=log.info,
        )
    except DataError as exc:
        raise SkipRun(f"cannot train on this window: {exc}") from exc
    ref = registry.log_model(
        result,
        settings,
        run_name=f"challenger-{run_key}" if run_key else None,
        tags={registry.RUN_KEY_TAG: run_key, TRAIN_KEY_TAG: key},
        data_ref=window_ref.uri,
    )
    if ref is None:
        raise FraudError("the challenger was trained but not registered in MLflow")
    c.set_model_version_tag(settings.model_name, ref.version, TRAIN_KEY_TAG, key)
    c.set_model_version_tag(settings.model_name, ref.version, registry.RUN_KEY_TAG, run_key)
    return {
        "version": ref.version,
        "run_id": ref.run_id,
        "reused": False,
        "metrics": {k: result.metrics.get(k) for k in (*SUMMARY_METRICS, "threshold")},
        "train_seconds": result.train_seconds,
        **facts,
    }


# ------------------------------------------------------------------------------ gate
@releases_memory
def evaluate(
    settings: Settings,
    window_ref: WindowRef,
    challenger_version: str,
    *,
    eval_days: float,
    min_improvement: float | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Champion and challenger on the window's evaluation slice; the decision, nothing moved.

    The challenger never saw the slice (enforced by
    :func:`fraud_lib.promotion.evaluate_challenger`). The champion may have, when a window is
    re-evaluated with other options; ``details.champion_overlap_rows`` then counts the slice
    rows at or before the champion's ``fit_end`` (its metrics are optimistic).
    """
    schema = FeatureSchema.load(settings.schema_path)
    _, eval_part, _ = split_window(load_window(settings, window_ref, schema), schema, eval_days)
    decision = promotion.evaluate_challenger(
        settings, eval_part, challenger_version, min_improvement=min_improvement, force=force
    ).as_dict()
    champion = decision["champion_version"]
    if champion is not None and champion != decision["challenger_version"]:
        tags = registry.client(settings).get_model_version(settings.model_name, champion).tags
        fit_end = float(tags.get(registry.TAG + "fit_end", "-inf"))
        overlap = int((eval_part[schema.time] <= fit_end).sum())
        if overlap:
            decision["details"]["champion_overlap_rows"] = overlap
    return decision


def _recorded(
    engine: Engine, settings: Settings, decision: dict[str, Any], run_key: str
) -> dict[str, Any] | None:
    """The decision already taken for this version in this run with the same options."""
    events = store.model_events(engine, settings.model_name, limit=1000, run_id=run_key,
                                version=str(decision["challenger_version"]))  # fmt: skip
    for event in events:
        details = event.get("details") or {}
        if (
            event["event"] in ("promoted", "rejected", "skipped")
            and details.get("details", {}).get("force") == decision["details"].get("force")
            and details.get("details", {}).get("min_improvement")
            == decision["details"].get("min_improvement")
        ):
            return details
    return None


def promote(
    settings: Settings,
    engine: Engine,
    decision: dict[str, Any],
    *,
    dry_run: bool = False,
    run_key: str = "",
) -> dict[str, Any]:
    """Apply an :func:`evaluate` decision (alias move compare-and-set + audit row); a decision
    already recorded for the same run is returned with ``replayed=True`` instead."""
    if not dry_run and run_key:
        previous = _recorded(engine, settings, decision, run_key)
        if previous is not None:
            log.info("re-run of %s: replaying the recorded decision", run_key)
            return {**previous, "replayed": True}
    fields = {k: v for k, v in decision.items() if k in promotion.Decision.__dataclass_fields__}
    applied = promotion.apply_decision(
        settings, engine, promotion.Decision(**fields), dry_run=dry_run, run_id=run_key or None
    )
    return {**applied.as_dict(), "replayed": False}


def notify_serving(settings: Settings, timeout: float = 5.0) -> bool:
    """POST ``/admin/reload`` to the scoring service; any failure is a warning, never an error
    (workers poll the alias anyway)."""
    import requests

    url = settings.scoring_url.rstrip("/") + "/admin/reload"
    headers = {"Authorization": f"Bearer {settings.admin_token}"} if settings.admin_token else {}
    try:
        response = requests.post(url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        log.warning("reload hint to %s failed (workers will poll the alias): %s", url, exc)
        return False
    if not response.ok:
        log.warning(
            "reload hint to %s answered %s: %s", url, response.status_code, response.text[:200]
        )
        return False
    log.info("reload hint sent to %s", url)
    return True

"""The promotion gate: compare a challenger with the champion on one labeled window, record
the decision, move ``champion`` only if the challenger is better; and rollback.

Alias moves are compare-and-set under a Postgres advisory lock, because MLflow itself has no
conditional alias update. Every decision is a row of ``model_events`` and tags on the version.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from fraud_lib import store
from fraud_lib.config import Settings
from fraud_lib.errors import NoChampionError, PromotionConflict, RegistryError
from fraud_lib.evaluate import PRIMARY_METRIC, compute_metrics
from fraud_lib.monitoring import dashboard, events
from fraud_lib.registry import (
    CHALLENGER,
    CHAMPION,
    TAG,
    LoadedModel,
    alias_version,
    clean_metrics,
    client,
    load_version,
)

log = logging.getLogger(__name__)

_MAX_VERSION = 2**31 - 1  # MLflow stores versions as 32-bit integers


@dataclass
class Decision:
    """The outcome of comparing a challenger with the champion on one labeled window."""

    promote: bool
    reason: str
    challenger_version: str
    champion_version: str | None
    metric: str
    challenger_metrics: dict[str, float | None]
    champion_metrics: dict[str, float | None] | None
    n_eval: int
    n_eval_fraud: int
    event: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for XCom, logs and the CLI)."""
        return asdict(self)


def _window_metrics(loaded: LoadedModel, eval_df: pd.DataFrame, settings: Settings) -> dict:
    y = eval_df[loaded.schema.label].to_numpy()
    return clean_metrics(
        compute_metrics(
            y,
            loaded.score(eval_df),
            loaded.threshold,
            cost_false_negative=settings.cost_false_negative,
            cost_false_positive=settings.cost_false_positive,
        )
    )


def evaluate_challenger(
    settings: Settings,
    eval_df: pd.DataFrame,
    challenger_version: str | None = None,
    *,
    min_improvement: float | None = None,
    force: bool = False,
) -> Decision:
    """Score challenger and champion on the same labeled window and decide (nothing is moved).

    Rows the challenger trained or validated on (time <= its ``fit_end``) are refused: the
    window must be held out for both models.
    """
    challenger_version = challenger_version or alias_version(settings, CHALLENGER)
    if challenger_version is None:
        raise RegistryError("no challenger: train one first (fraud train --data ...)")
    margin = settings.promote_min_improvement if min_improvement is None else min_improvement
    challenger = load_version(settings, challenger_version)
    schema = challenger.schema
    eval_df = schema.validate_frame(eval_df)
    fit_end = float(challenger.meta.get("time_range", {}).get("fit_end", -math.inf))
    if (eval_df[schema.time] <= fit_end).any():
        raise RegistryError(
            f"the evaluation window overlaps the challenger's training data (time <= {fit_end:g}); "
            "evaluate on later transactions only"
        )
    champion_version = alias_version(settings, CHAMPION)
    ch_metrics = _window_metrics(challenger, eval_df, settings)
    champion = champ_metrics = None
    if champion_version is not None and champion_version != challenger_version:
        champion = load_version(settings, champion_version)
        champ_metrics = _window_metrics(champion, eval_df, settings)
    n_fraud = int(eval_df[schema.label].sum())
    metric = PRIMARY_METRIC
    promote, reason = _gate(
        settings, challenger, champion_version, ch_metrics, champ_metrics, n_fraud, margin, force
    )
    if promote and champion is not None and champion.schema != schema and not force:
        promote, reason = False, "input schema differs from the champion's; use force to accept"
    return Decision(
        promote=promote,
        reason=reason,
        challenger_version=str(challenger_version),
        champion_version=champion_version,
        metric=metric,
        challenger_metrics=ch_metrics,
        champion_metrics=champ_metrics,
        n_eval=len(eval_df),
        n_eval_fraud=n_fraud,
        details={"min_improvement": margin, "force": force},
    )


def _gate(
    settings: Settings,
    challenger: LoadedModel,
    champion_version: str | None,
    ch: dict,
    champ: dict | None,
    n_fraud: int,
    margin: float,
    force: bool,
) -> tuple[bool, str]:
    if champion_version == challenger.version:
        return False, f"no new challenger: version {challenger.version} is already the champion"
    if force:
        return True, "forced promotion (guards and margin skipped)"
    if n_fraud == 0:
        return False, "the evaluation window has no frauds, so the models cannot be compared"
    if not 0 < challenger.threshold <= 1:
        return False, f"invalid threshold {challenger.threshold}"
    ap, auc = ch[PRIMARY_METRIC], ch["roc_auc"]
    if ap is None or ap < settings.min_average_precision:
        return False, (
            f"challenger average_precision {ap} is below the floor {settings.min_average_precision}"
        )
    if auc is None or auc < settings.min_roc_auc:
        return False, f"challenger roc_auc {auc} is below the floor {settings.min_roc_auc}"
    if champ is None:
        return True, f"first champion: average_precision {ap:.4f} passes the floors"
    old = champ[PRIMARY_METRIC] or 0.0
    if ap >= old + margin:
        return True, f"average_precision {ap:.4f} beats champion {old:.4f} by >= {margin}"
    return False, (
        f"average_precision {ap:.4f} does not beat champion {old:.4f} "
        f"by the required margin {margin}"
    )


def _record(
    conn: Connection,
    settings: Settings,
    decision: Decision,
    event: str,
    run_id: str | None,
    *,
    tag_version: bool = True,
) -> None:
    """A ``model_events`` row and, with ``tag_version``, the decision tags on the version."""
    ch, champ = decision.challenger_metrics, decision.champion_metrics or {}
    store.record_model_event(
        conn,
        model_name=settings.model_name,
        event=event,
        version=decision.challenger_version,
        previous_version=decision.champion_version,
        metric_name=decision.metric,
        challenger_metric=ch.get(decision.metric),
        champion_metric=champ.get(decision.metric),
        reason=decision.reason,
        details=json.loads(json.dumps(decision.as_dict(), default=str)),
        run_id=run_id,
    )
    if not tag_version:
        return
    c = client(settings)
    v = decision.challenger_version
    c.set_model_version_tag(settings.model_name, v, TAG + "decision", event)
    c.set_model_version_tag(settings.model_name, v, TAG + "reason", decision.reason[:4000])
    c.set_model_version_tag(
        settings.model_name,
        v,
        TAG + "decided_at",
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def _lock(conn: Connection, name: str) -> None:
    """Serialise alias moves of model ``name`` until ``conn``'s transaction ends."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": "fraudloop:" + name})


def apply_decision(
    settings: Settings,
    engine: Engine,
    decision: Decision,
    *,
    dry_run: bool = False,
    run_id: str | None = None,
) -> Decision:
    """Record the decision and, if it promotes, move ``champion`` compare-and-set.

    A "challenger" that already is the champion (a retraining run on a window the champion was
    trained on) is no decision at all: it is recorded as ``skipped``, dry run or not, and the
    champion's version tags are left alone.

    Raises :class:`PromotionConflict` (after recording a ``conflict`` event) when the champion
    is no longer the version that was evaluated.
    """
    if decision.challenger_version == decision.champion_version:
        decision.promote, decision.event = False, "skipped"
        with engine.begin() as conn:
            _record(conn, settings, decision, "skipped", run_id, tag_version=False)
        log.info("skipped: %s", decision.reason)
        return decision
    if dry_run:
        decision.event = "dry_run"
        with engine.begin() as conn:
            _record(conn, settings, decision, "dry_run", run_id)
        return decision
    with engine.begin() as conn:
        _lock(conn, settings.model_name)
        current = alias_version(settings, CHAMPION)
        if decision.promote and current != decision.champion_version:
            decision.promote = False
            decision.event = "conflict"
            decision.reason = (
                f"champion moved from {decision.champion_version} to {current} "
                "after evaluation; re-run the evaluation"
            )
            _record(conn, settings, decision, "conflict", run_id)
        elif decision.promote:
            c = client(settings)
            c.set_registered_model_alias(settings.model_name, CHAMPION, decision.challenger_version)
            if decision.champion_version:
                c.set_model_version_tag(
                    settings.model_name,
                    decision.challenger_version,
                    TAG + "previous_champion",
                    decision.champion_version,
                )
            decision.event = "promoted"
            _record(conn, settings, decision, "promoted", run_id)
        else:
            decision.event = "rejected"
            _record(conn, settings, decision, "rejected", run_id)
    if decision.event == "conflict":
        raise PromotionConflict(decision.reason)
    log.info("%s version %s: %s", decision.event, decision.challenger_version, decision.reason)
    events.alert_decision(settings, decision, run_id)
    dashboard.add_decision(settings, decision, run_id)
    return decision


def promote_if_better(
    settings: Settings,
    engine: Engine,
    eval_df: pd.DataFrame,
    challenger_version: str | None = None,
    *,
    min_improvement: float | None = None,
    force: bool = False,
    dry_run: bool = False,
    run_id: str | None = None,
) -> Decision:
    """Evaluate challenger vs champion on ``eval_df`` and promote only if the gate passes."""
    decision = evaluate_challenger(
        settings, eval_df, challenger_version, min_improvement=min_improvement, force=force
    )
    return apply_decision(settings, engine, decision, dry_run=dry_run, run_id=run_id)


def _version_number(text: str) -> str:
    """``text`` as a registry version number, or :class:`RegistryError` saying what one is."""
    value = text.strip()
    if value.isascii() and value.isdigit() and len(value) < 11 and 0 < int(value) <= _MAX_VERSION:
        return str(int(value))
    raise RegistryError(f"a version is a whole number from 1 to {_MAX_VERSION}, got {text[:40]!r}")


def rollback(
    settings: Settings,
    engine: Engine,
    *,
    to_version: str | None = None,
    reason: str = "manual rollback",
) -> tuple[str, str]:
    """Move ``champion`` back to the previous champion (or ``to_version``); returns (from, to)."""
    c = client(settings)
    with engine.begin() as conn:
        _lock(conn, settings.model_name)
        current = alias_version(settings, CHAMPION)
        if current is None:
            raise NoChampionError("there is no champion to roll back from")
        target = None if to_version is None else _version_number(to_version)
        if target is None:
            tags = c.get_model_version(settings.model_name, current).tags
            target = tags.get(TAG + "previous_champion")
            if not target:
                raise RegistryError(
                    f"version {current} has no recorded previous champion; "
                    "pass --to VERSION to choose one"
                )
        if str(target) == current:
            raise RegistryError(f"version {current} is already the champion; nothing to roll back")
        try:
            c.get_model_version(settings.model_name, target)
        except MlflowException:
            raise RegistryError(
                f"version {target} of {settings.model_name} does not exist"
            ) from None
        c.set_registered_model_alias(settings.model_name, CHAMPION, target)
        c.set_model_version_tag(settings.model_name, current, TAG + "decision", "rolled_back")
        store.record_model_event(
            conn,
            model_name=settings.model_name,
            event="rolled_back",
            version=str(target),
            previous_version=current,
            reason=reason,
            details={"from": current, "to": target},
        )
    log.info("rolled back champion from %s to %s", current, target)
    events.alert_rollback(settings, current, str(target), reason)
    dashboard.add_rollback(settings, current, str(target))
    return current, str(target)

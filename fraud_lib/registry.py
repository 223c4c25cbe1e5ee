"""MLflow registry: log and register models, aliases, the promotion gate, history and rollback.

Aliases only (``champion``, ``challenger``); the deprecated stages API is never used. The schema,
threshold and metrics travel inside the model (MLmodel ``metadata``), so a loaded model is
self-describing. Alias moves are compare-and-set under a Postgres advisory lock, because MLflow
itself has no conditional alias update.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.tracking import MlflowClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from fraud_lib import store
from fraud_lib.config import Settings
from fraud_lib.errors import NoChampionError, PromotionConflict, RegistryError
from fraud_lib.evaluate import PRIMARY_METRIC, compute_metrics
from fraud_lib.features import model_frame, predict_scores
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import TrainResult

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG = "fraudloop."


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def client(settings: Settings) -> MlflowClient:
    """An MLflow client for the configured tracking store (also sets the global tracking URI)."""
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def ensure_experiment(settings: Settings) -> str:
    """Experiment id, creating the experiment with the configured artifact root if missing."""
    c = client(settings)
    exp = c.get_experiment_by_name(settings.experiment_name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if "://" not in settings.mlflow_tracking_uri or settings.mlflow_tracking_uri.startswith(
        "sqlite:"
    ):
        settings.mlflow_artifact_dir.mkdir(parents=True, exist_ok=True)
        location = settings.mlflow_artifact_dir.as_uri()
    return c.create_experiment(settings.experiment_name, artifact_location=location)


@dataclass(frozen=True)
class ModelRef:
    """A registered model version."""

    name: str
    version: str
    run_id: str


@dataclass
class LoadedModel:
    """A model version loaded for scoring, with the facts logged beside it."""

    name: str
    version: str
    model: Any
    schema: FeatureSchema
    threshold: float
    meta: dict[str, Any]

    def score(self, df: pd.DataFrame) -> Any:
        """Fraud probabilities for the rows of ``df``."""
        return predict_scores(self.model, df, self.schema)


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    pkgs = ["scikit-learn", "imbalanced-learn", "pandas", "numpy", "cloudpickle", "scipy"]
    return [f"{p}=={version(p)}" for p in pkgs]


def log_model(
    result: TrainResult,
    settings: Settings,
    *,
    register: bool = True,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    data_ref: str = "",
) -> ModelRef | None:
    """Log a trained model to a new MLflow run; register it as a version with alias challenger.

    Returns the registered version, or ``None`` with ``register=False``.
    """
    experiment_id = ensure_experiment(settings)
    meta = {
        "schema": result.schema.to_dict(),
        "threshold": result.threshold,
        "threshold_rule": result.threshold_rule,
        "model_type": result.model_type,
        "resample": result.resample,
        "metrics": _clean(result.metrics),
        "time_range": result.time_range,
        "data_ref": data_ref,
    }
    X_example = model_frame(result.reference.head(5), result.schema)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({"fraudloop.kind": "train", **(tags or {})})
        mlflow.log_params(
            {
                **result.params,
                "threshold_rule": result.threshold_rule,
                "n_train": result.n_train,
                "n_val": result.n_val,
                "n_test": result.n_test,
                "data_ref": data_ref or "-",
            }
        )
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if not math.isnan(v)})
        mlflow.log_metrics(
            {f"val_{k}": v for k, v in result.val_metrics.items() if not math.isnan(v)}
        )
        mlflow.log_metric("threshold", result.threshold)
        mlflow.log_dict(meta, "fraud_meta.json")
        with tempfile.TemporaryDirectory() as tmp:
            ref_path = Path(tmp) / "reference.parquet"
            result.reference.to_parquet(ref_path, index=False)
            mlflow.log_artifact(str(ref_path), artifact_path="reference")
        info = mlflow.sklearn.log_model(
            result.model,
            name="model",
            signature=infer_signature(
                X_example, predict_scores(result.model, X_example, result.schema)
            ),
            input_example=X_example,
            serialization_format="cloudpickle",
            pip_requirements=_pip_requirements(),
            metadata={"fraudloop": meta},
        )
        run_id = run.info.run_id
    if not register:
        return None
    c = client(settings)
    mv = mlflow.register_model(info.model_uri, settings.model_name, await_registration_for=0)
    version = str(mv.version)
    for key, value in {
        "run_id": run_id,
        "model_type": result.model_type,
        "resample": result.resample,
        "threshold": f"{result.threshold:.6g}",
        PRIMARY_METRIC: f"{result.metrics.get(PRIMARY_METRIC, math.nan):.6g}",
        "fit_end": f"{result.time_range.get('fit_end', math.nan):.6g}",
    }.items():
        c.set_model_version_tag(settings.model_name, version, TAG + key, value)
    c.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    log.info("registered %s version %s (run %s)", settings.model_name, version, run_id)
    return ModelRef(settings.model_name, version, run_id)


def alias_version(settings: Settings, alias: str = CHAMPION) -> str | None:
    """Version holding ``alias``, or ``None`` when the alias or the model does not exist."""
    try:
        return str(client(settings).get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def load_version(settings: Settings, version: str) -> LoadedModel:
    """Download and load one model version with its schema and threshold."""
    uri = f"models:/{settings.model_name}/{version}"
    try:
        client(settings)
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except MlflowException as exc:
        raise RegistryError(f"model {uri} could not be loaded: {exc.message}") from None
    meta = (Model.load(local).metadata or {}).get("fraudloop")
    if not meta:
        raise RegistryError(f"model {uri} was not logged by fraudloop (no fraudloop metadata)")
    model = mlflow.sklearn.load_model(local)
    return LoadedModel(
        name=settings.model_name,
        version=str(version),
        model=model,
        schema=FeatureSchema.from_dict(meta["schema"]),
        threshold=float(meta["threshold"]),
        meta=meta,
    )


def load_champion(settings: Settings) -> LoadedModel:
    """Load the version that holds the ``champion`` alias."""
    version = alias_version(settings, CHAMPION)
    if version is None:
        raise NoChampionError(
            f"no version of {settings.model_name!r} holds the alias 'champion' yet; "
            "train and promote one (fraud train --data ... && fraud promote --data ...)"
        )
    return load_version(settings, version)


def load_reference(settings: Settings, version: str) -> pd.DataFrame:
    """The training-data reference sample logged with a model version."""
    c = client(settings)
    run_id = c.get_model_version(settings.model_name, version).run_id
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="reference/reference.parquet"
    )
    return pd.read_parquet(path)


# ------------------------------------------------------------------ promotion gate
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
    return _clean(
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
    champ_metrics = None
    if champion_version is not None and champion_version != challenger_version:
        champion = load_version(settings, champion_version)
        champ_metrics = _window_metrics(champion, eval_df, settings)
    n_fraud = int(eval_df[schema.label].sum())
    metric = PRIMARY_METRIC
    promote, reason = _gate(
        settings, challenger, champion_version, ch_metrics, champ_metrics, n_fraud, margin, force
    )
    if champion_version is not None and champion_version != challenger_version and promote:
        champ_schema = load_version(settings, champion_version).schema
        if champ_schema != schema and not force:
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
        return False, f"version {challenger.version} is already the champion"
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
    engine: Engine,
    conn: Any,
    settings: Settings,
    decision: Decision,
    event: str,
    run_id: str | None,
) -> None:
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


def _lock(conn: Any, name: str) -> None:
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

    Raises :class:`PromotionConflict` (after recording a ``conflict`` event) when the champion
    is no longer the version that was evaluated.
    """
    if dry_run:
        decision.event = "dry_run"
        with engine.begin() as conn:
            _record(engine, conn, settings, decision, "dry_run", run_id)
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
            _record(engine, conn, settings, decision, "conflict", run_id)
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
            _record(engine, conn, settings, decision, "promoted", run_id)
        else:
            decision.event = "rejected"
            _record(engine, conn, settings, decision, "rejected", run_id)
    if decision.event == "conflict":
        raise PromotionConflict(decision.reason)
    log.info("%s version %s: %s", decision.event, decision.challenger_version, decision.reason)
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
        target = to_version
        if target is None:
            tags = c.get_model_version(settings.model_name, current).tags
            target = tags.get(TAG + "previous_champion")
            if not target:
                raise RegistryError(
                    f"version {current} has no recorded previous champion; "
                    "pass --to VERSION to choose one"
                )
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
    return current, str(target)


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every registered version, newest first, with aliases and fraudloop tags."""
    c = client(settings)
    try:
        aliases = c.get_registered_model(settings.model_name).aliases
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for mv in c.search_model_versions(f"name='{settings.model_name}'"):
        tags = {k.removeprefix(TAG): v for k, v in mv.tags.items() if k.startswith(TAG)}
        rows.append(
            {
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "created": time.strftime(
                    "%Y-%m-%d %H:%M", time.gmtime(mv.creation_timestamp / 1000)
                ),
                **tags,
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)

"""MLflow registry: log, register and load models, read aliases, list versions.

Aliases only (``champion``, ``challenger``); the deprecated stages API is never used. The schema,
threshold and metrics travel inside the model (MLmodel ``metadata``), so a loaded model is
self-describing. Moving ``champion`` (the gate, rollback) is :mod:`fraud_lib.promotion`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.utils import logging_utils

from fraud_lib.config import Settings
from fraud_lib.errors import NoChampionError, RegistryError
from fraud_lib.evaluate import PRIMARY_METRIC
from fraud_lib.features import model_frame, predict_scores
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import TrainResult

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG = "fraudloop."
RUN_KEY_TAG = TAG + "run_key"
KIND_TAG = TAG + "kind"


def clean_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """``metrics`` with NaN as None (JSON and Postgres friendly)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def log_mlflow_through_logging() -> None:
    """Make MLflow's console output ordinary log records, for processes that keep logs (an
    Airflow task): no artifact-download progress bar, MLflow's loggers propagate to the root
    logger at their own level instead of writing to stderr, and its ``eprint`` notices
    ("Successfully registered model ...", said again by :func:`log_model`) are dropped.

    An Airflow task log shows every stderr line at ERROR level, so without this a successful
    task logs red ``Downloading artifacts: 0%|...`` lines. Call it from entry points only.
    """
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    stream = logging_utils.MLFLOW_LOGGING_STREAM
    for name in ("mlflow", "sqlalchemy.engine", "alembic", "huey"):  # the loggers MLflow sets up
        logger = logging.getLogger(name)
        kept = [h for h in logger.handlers if getattr(h, "stream", None) is not stream]
        if len(kept) < len(logger.handlers):
            logger.handlers, logger.propagate = kept, True
    logging_utils.disable_logging()


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


def runs_uri(run_id: str, artifact_path: str) -> str:
    """The ``runs:/`` URI of an artifact: it names the artifact wherever the store is."""
    return f"runs:/{run_id}/{artifact_path}"


def keyed_run(settings: Settings, key: str, kind: str = "retrain") -> str:
    """Id of the MLflow run of this ``kind`` for the DAG run key ``key``: found by its tags, or
    created on first use, so every task of a DAG run (and every retry) logs to the same run."""
    experiment_id = ensure_experiment(settings)
    c = client(settings)
    found = c.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}' and tags.`{KIND_TAG}` = '{kind}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    tags = {RUN_KEY_TAG: key, KIND_TAG: kind}
    return c.create_run(experiment_id, tags=tags, run_name=f"{kind}-{key}").info.run_id


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


def _log_model_files(result: TrainResult, settings: Settings, meta: dict[str, Any]) -> None:
    """Log the files a scoring worker loads the model from (``model_files/``: the compiled tree
    arrays and the pipeline's canary scores, :mod:`serving.model_files`) to the active run, so
    that a worker downloads them instead of loading the pipeline in a child process. A model
    the canary or the compiled trees refuse logs none: the worker's child then decides."""
    from serving.model_files.export import ARTIFACT_DIR, write_files

    loaded = LoadedModel(settings.model_name, "", result.model, result.schema,
                         result.threshold, meta)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        facts = write_files(loaded, Path(tmp))
        if facts["status"] not in ("files", "in_process"):
            log.warning("no model files logged: %s", facts.get("message", facts["status"]))
            return
        mlflow.log_artifacts(tmp, artifact_path=ARTIFACT_DIR)


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
        "metrics": clean_metrics(result.metrics),
        "time_range": result.time_range,
        "data_ref": data_ref,
    }
    X_example = model_frame(result.reference.head(5), result.schema)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({KIND_TAG: "train", **(tags or {})})
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
        _log_model_files(result, settings, meta)
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

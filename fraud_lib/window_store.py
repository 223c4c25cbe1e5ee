"""Hand-off of a retraining run's window between its tasks, through the MLflow artifact store.

A task on one worker saves the window; the next tasks may run on other workers, with no disk in
common. So the window never travels as a local path: :func:`save_window` logs it as a parquet
artifact of the DAG run's own MLflow run (:func:`fraud_lib.registry.keyed_run`: one run per run
key, so a retry logs to the same run and overwrites the same artifact), and returns a small
:class:`WindowRef` (run id, artifact path, row count, sha256 of the parquet bytes) that fits in
XCom. :func:`load_window` downloads it through the tracking server (``mlflow server
--serve-artifacts``: the client needs no access to the artifact disk) or from the embedded
store's directory, and refuses bytes whose sha256 differs from the reference.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from fraud_lib import registry
from fraud_lib.config import Settings
from fraud_lib.errors import DataError
from fraud_lib.schema import FeatureSchema

log = logging.getLogger(__name__)

WINDOW_DIR = "window"


class WindowIntegrityError(DataError):
    """The stored window is not the one the reference describes (changed or truncated bytes)."""


@dataclass(frozen=True)
class WindowRef:
    """Where a saved window is and what it must hash to; small enough for XCom."""

    run_id: str
    artifact_path: str
    rows: int
    sha256: str

    @property
    def uri(self) -> str:
        """The window as an MLflow artifact URI (``runs:/<run id>/window/<key>.parquet``)."""
        return registry.runs_uri(self.run_id, self.artifact_path)

    def as_dict(self) -> dict[str, Any]:
        """The XCom form (plus the URI, for people reading it)."""
        return {**asdict(self), "uri": self.uri}

    @classmethod
    def from_dict(cls, value: Any) -> WindowRef:
        """A reference from its XCom form; a :class:`DataError` names a missing or bad field."""
        if not isinstance(value, dict):
            raise DataError(f"a window reference is a mapping, got {type(value).__name__}")
        kinds = {"run_id": str, "artifact_path": str, "rows": int, "sha256": str}
        for f in fields(cls):
            if not isinstance(value.get(f.name), kinds[f.name]):
                raise DataError(
                    f"window reference field {f.name!r} is missing or not a "
                    f"{kinds[f.name].__name__}",
                    fields={f.name: "missing or wrong type"},
                )
        return cls(**{f.name: value[f.name] for f in fields(cls)})


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def save_window(settings: Settings, df: pd.DataFrame, run_key: str) -> WindowRef:
    """Log ``df`` as ``window/{run_key}.parquet`` of the run key's MLflow run; its reference."""
    run_id = registry.keyed_run(settings, run_key)
    with tempfile.TemporaryDirectory(prefix="fraudloop-window-") as tmp:
        path = Path(tmp) / f"{run_key}.parquet"
        df.to_parquet(path, index=False)
        digest = _sha256(path)
        registry.client(settings).log_artifact(run_id, str(path), artifact_path=WINDOW_DIR)
    ref = WindowRef(run_id, f"{WINDOW_DIR}/{path.name}", len(df), digest)
    log.info("window %s: %d rows saved to %s", run_key, len(df), ref.uri)
    return ref


def load_window(
    settings: Settings, ref: WindowRef, schema: FeatureSchema | None = None
) -> pd.DataFrame:
    """The window ``ref`` points at, after checking its sha256 and row count (and, given a
    ``schema``, its columns: :meth:`FeatureSchema.validate_frame`)."""
    import mlflow

    registry.client(settings)
    with tempfile.TemporaryDirectory(prefix="fraudloop-window-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=ref.run_id,
                artifact_path=ref.artifact_path,
                dst_path=tmp,
                tracking_uri=settings.mlflow_tracking_uri,
            )
        )
        digest = _sha256(local)
        if digest != ref.sha256:
            raise WindowIntegrityError(
                f"window {ref.uri} has sha256 {digest[:12]}..., the reference says "
                f"{ref.sha256[:12]}...: the artifact was changed after it was saved; re-run "
                "ingest_labeled (clear it and its downstream tasks) to save it again",
                fields={"sha256": "mismatch"},
            )
        df = pd.read_parquet(local)
    if len(df) != ref.rows:
        raise WindowIntegrityError(
            f"window {ref.uri} has {len(df):,} rows, the reference says {ref.rows:,}",
            fields={"rows": "mismatch"},
        )
    return df if schema is None else schema.validate_frame(df, copy=False)

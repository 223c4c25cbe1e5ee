"""The worker's side: download the files logged with a version (or, for a version logged
before they existed, run the export child), read them, check the kernel on the canary."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fraud_lib.config import Settings
from fraud_lib.errors import RegistryError
from fraud_lib.schema import FeatureSchema
from serving.model_files.artifacts import fetch_logged_files
from serving.model_files.export import MODEL_JSON, TREES_NPZ, file_digest
from serving.scoring import CanaryError, ServedModel, canary_matrix, check_predictor, prepare
from serving.trees import CompiledTrees

log = logging.getLogger(__name__)

EXPORT_TIMEOUT_SECONDS = 300  # a download and a load of the pipeline; a hung child is refused


@dataclass
class ModelFiles:
    """A version read from the export child's files: what :class:`ServedModel` needs of a
    loaded model (``model`` is None: there is no pipeline object in this process)."""

    name: str
    version: str
    schema: FeatureSchema
    threshold: float
    meta: dict[str, Any]
    compiled: CompiledTrees | None = None
    reference: np.ndarray | None = None
    canary_error: str | None = None
    in_process: Settings | None = None  # a predictor other than the trees: load it in process
    model: Any = field(default=None, repr=False)

    def serve(self) -> ServedModel:
        """The served model, once the kernel reproduces the pipeline's canary scores (one row
        at a time and as a batch, as :func:`serving.scoring.prepare` checks in process). A
        version the trees do not serve is loaded through MLflow here, after the caller has
        compared its schema: a version refused for its schema never imports MLflow."""
        if self.in_process is not None:
            from fraud_lib import registry

            return prepare(registry.load_version(self.in_process, self.version))
        if self.canary_error is not None:
            raise CanaryError(self.canary_error)
        assert self.compiled is not None and self.reference is not None
        if not check_predictor(self.compiled, canary_matrix(self.schema), self.reference):
            raise CanaryError(
                "the compiled trees read from the model files differ from the pipeline's "
                "scores on the canary batch"
            )
        return ServedModel(self, predictor="compiled-trees", compiled=self.compiled)  # type: ignore[arg-type]


def _run_export(settings: Settings, version: str, out: Path) -> dict[str, Any]:
    """Run the export child for ``version`` into ``out``; its ``model.json``. The child reads
    the worker's environment with the registry settings of ``settings`` on top."""
    root = str(Path(__file__).resolve().parents[2])  # the serving package's, first on the path
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "FRAUD_MLFLOW_ARTIFACTS": str(settings.mlflow_artifact_dir),
        "FRAUD_MODEL_NAME": settings.model_name,
    }
    argv = [sys.executable, "-m", "serving.model_files.export", version, str(out)]
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=EXPORT_TIMEOUT_SECONDS, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RegistryError(f"loading took more than {EXPORT_TIMEOUT_SECONDS} s") from None
    result = out / MODEL_JSON
    if done.returncode != 0 or not result.exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RegistryError(f"the model export process failed (exit {done.returncode}): {tail}")
    return json.loads(result.read_text())


def _export_dir(settings: Settings, version: str) -> Path:
    """Where the files of ``version`` are kept for every worker of this state directory:
    ``state_dir/model_files/<hash of the tracking URI and model name>/v<version>``."""
    key = f"{settings.mlflow_tracking_uri}\0{settings.model_name}".encode()
    return (
        Path(settings.state_dir)
        / "model_files"
        / hashlib.sha256(key).hexdigest()[:16]
        / f"v{version}"
    )


def _exported(settings: Settings, version: str) -> tuple[dict[str, Any], Path]:
    """``model.json`` of ``version`` and the directory of its files: downloaded from the
    version's run (or exported by the child for a version logged without them) by the first
    worker that asks; the others wait on its lock, then read its files (a rollback to a
    version served before reads them again). A version that failed to load is not kept: a
    retry runs the child again."""
    target = _export_dir(settings, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"v{version}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / MODEL_JSON).exists():
            return json.loads((target / MODEL_JSON).read_text()), target
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
        try:
            if fetch_logged_files(settings, version, tmp):
                facts = _logged_facts(tmp, version)
                facts |= {"name": settings.model_name, "version": version}
                (tmp / MODEL_JSON).write_text(json.dumps(facts))
            else:
                facts = _run_export(settings, version, tmp)
            if facts["status"] != "load_failed":
                tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return facts, target


def _logged_facts(where: Path, version: str) -> dict[str, Any]:
    """The downloaded ``model.json`` of ``version``; RegistryError when it is not JSON."""
    try:
        return json.loads((where / MODEL_JSON).read_text())
    except ValueError as exc:
        log.error("version %s refused: its logged %s is unreadable (%s)", version, MODEL_JSON, exc)
        raise RegistryError(f"the logged {MODEL_JSON} of version {version} is unreadable") from None


def load_version(settings: Settings, version: str) -> Any:
    """Load ``version`` for serving as :class:`ModelFiles`: the compiled trees, or the facts of
    a version they do not serve, which its ``serve()`` loads in process (MLflow, scikit-learn
    and pandas are then imported into this worker). Raises on a version that cannot be
    loaded."""
    if not version.isdigit():
        raise RegistryError(f"version {version!r} is not a registry version number")
    facts, where = _exported(settings, version)
    status = facts["status"]
    if status == "load_failed":
        raise RegistryError(facts["message"])
    files = ModelFiles(name=facts["name"], version=str(facts["version"]),
                       schema=FeatureSchema.from_dict(facts["schema"]),
                       threshold=float(facts["threshold"]), meta=facts["meta"],
                       canary_error=facts.get("message"))  # fmt: skip
    if status == "in_process":
        log.info("version %s uses the %s predictor: loaded in the worker if its schema fits",
                 version, facts.get("predictor"))  # fmt: skip
        files.in_process = settings
    if status == "files":
        files.compiled = _read_trees(where, facts)
        files.reference = np.asarray(facts["reference"], dtype=float)
    return files


def _read_trees(where: Path, facts: dict[str, Any]) -> CompiledTrees:
    """The compiled trees of ``where/trees.npz``, once its digest is the one ``model.json``
    names. A missing, truncated or altered file is refused (RegistryError: the worker keeps its
    model) and dropped from the cache, so that ``/admin/reload`` fetches it again."""
    version = facts["version"]
    path = where / TREES_NPZ
    try:
        expected = facts.get("trees_sha256")
        if expected is not None and file_digest(path) != expected:
            raise ValueError(f"its SHA-256 is not the {expected[:12]}... logged with it")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in CompiledTrees.ARRAYS}
        return CompiledTrees(arrays, facts["baseline"], facts["n_features"])
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.error("version %s refused: its trees file %s is unreadable (%s)", version, path,
                  reason)  # fmt: skip
        shutil.rmtree(where, ignore_errors=True)
        raise RegistryError(
            f"the trees file of version {version} is unreadable: {reason}"
        ) from None


def prepare_any(loaded: Any) -> ServedModel:
    """:meth:`ModelFiles.serve` or :func:`serving.scoring.prepare` (a model loaded in process)."""
    if isinstance(loaded, ModelFiles):
        return loaded.serve()
    return prepare(loaded)

"""Download the model files logged with a version (``model_files/`` in its MLflow run, written
by :func:`fraud_lib.registry.log_model`) without the MLflow client, so that loading a version
needs no child process:

- ``sqlite:`` and ``postgresql:`` tracking stores: the run's ``artifact_uri`` read from MLflow's
  ``model_versions`` and ``runs`` tables; a local (``file:``) artifact store is a file copy;
- ``http(s):`` tracking servers: the version's run from ``GET /api/2.0/mlflow/model-versions/
  get``, the files from the server's ``GET /get-artifact`` (any artifact store it serves).

A version logged before the files existed, another store or another artifact scheme is
``False``: the worker then runs the export child (:mod:`.reader`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
import sqlalchemy as sa

from fraud_lib.config import Settings
from fraud_lib.errors import RegistryError
from fraud_lib.redact import redact
from serving.model_files.alias import read_only_engine, rest_get
from serving.model_files.export import ARTIFACT_DIR, MODEL_JSON, TREES_NPZ

log = logging.getLogger(__name__)

VERSION_PATH = "/api/2.0/mlflow/model-versions/get"
ARTIFACT_PATH = "/get-artifact"
RUN_QUERY = sa.text(
    "SELECT r.artifact_uri FROM model_versions mv JOIN runs r ON r.run_uuid = mv.run_id "
    "WHERE mv.name = :name AND mv.version = :version"
)


def fetch_logged_files(settings: Settings, version: str, out: Path) -> bool:
    """Copy the logged ``model.json`` (and ``trees.npz`` when it names one) of ``version`` to
    ``out``; False when the version has none this worker can read without MLflow."""
    uri = settings.mlflow_tracking_uri
    scheme = uri.partition(":")[0].lower()
    try:
        if scheme in ("http", "https"):
            return _fetch_rest(uri, settings.model_name, version, out)
        if scheme == "sqlite" or scheme.startswith("postgresql"):
            return _fetch_sql(uri, settings.model_name, version, out)
    except (requests.RequestException, sa.exc.DBAPIError) as exc:
        raise RegistryError(
            f"cannot read the registry at {redact(uri)}: {type(exc).__name__}"
        ) from None
    return False


def _fetch_sql(uri: str, name: str, version: str, out: Path) -> bool:
    engine = read_only_engine(uri)
    if engine is None:
        return False
    try:
        with engine.connect() as conn:
            root = conn.execute(RUN_QUERY, {"name": name, "version": int(version)}).scalar()
    finally:
        engine.dispose()
    local = _local_dir(root)
    if local is None or not (local / ARTIFACT_DIR / MODEL_JSON).is_file():
        return False
    names = [MODEL_JSON] + ([TREES_NPZ] if (local / ARTIFACT_DIR / TREES_NPZ).is_file() else [])
    for filename in names:
        shutil.copyfile(local / ARTIFACT_DIR / filename, out / filename)
    log.info("version %s: model files copied from its run's artifacts", version)
    return True


def _local_dir(artifact_uri: str | None) -> Path | None:
    """The directory of a local artifact URI (``file:`` or a plain path), else None."""
    if not artifact_uri:
        return None
    parts = urlsplit(artifact_uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" or (len(parts.scheme) == 1 and ":" in artifact_uri):  # a bare path
        return Path(artifact_uri)
    return None


def _fetch_rest(uri: str, name: str, version: str, out: Path) -> bool:
    resp = rest_get(uri, VERSION_PATH, {"name": name, "version": version})
    if resp.status_code != 200:
        return False  # the export child reports why the version cannot be read
    run_id = resp.json()["model_version"].get("run_id")
    if not run_id:
        return False
    for filename in (MODEL_JSON, TREES_NPZ):
        got = rest_get(uri, ARTIFACT_PATH, {"run_uuid": run_id,
                                            "path": f"{ARTIFACT_DIR}/{filename}"})  # fmt: skip
        if got.status_code != 200:
            if filename == MODEL_JSON:
                return False
            break  # a model.json of an in-process version names no trees file
        (out / filename).write_bytes(got.content)
    log.info("version %s: model files downloaded from the MLflow server", version)
    return True

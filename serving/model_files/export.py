"""A model version as files: ``model.json`` (the facts and the pipeline's canary scores) and,
for the compiled trees, ``trees.npz`` (the flat arrays).

:func:`write_files` writes them from a loaded pipeline; :func:`fraud_lib.registry.log_model`
calls it so that they are logged as artifacts of the run (``model_files/``) and a worker only
downloads them. For a version logged before, the worker runs this module as a child
interpreter, ``python -m serving.model_files.export VERSION DIR`` (settings from the
environment, as the worker's). ``model.json`` holds:

- ``{"status": "load_failed", "message": ...}`` when the version cannot be loaded;
- else the version's facts (``schema``, ``threshold``, ``meta``, and from the child ``name``
  and ``version``) with ``status`` ``canary_failed`` (and ``message``), ``in_process`` (a
  predictor other than the compiled trees: the worker loads the version itself), or
  ``files``: then ``trees.npz`` holds the tree arrays, ``trees_sha256`` its digest and
  ``reference`` the pipeline's scores of the canary records.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MODEL_JSON = "model.json"
TREES_NPZ = "trees.npz"
ARTIFACT_DIR = "model_files"  # the artifact path of the files in the model's MLflow run


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_files(loaded: Any, out: Path) -> dict[str, Any]:
    """Check ``loaded`` (a :class:`fraud_lib.registry.LoadedModel`) on the canary batch and
    write its files to ``out``; returns what ``model.json`` holds (also written)."""
    from fraud_lib.schema import records_to_frame
    from serving.scoring import CanaryError, canary_records, prepare

    facts: dict[str, Any] = {"schema": loaded.schema.to_dict(), "threshold": loaded.threshold,
                             "meta": loaded.meta}  # fmt: skip
    try:
        served = prepare(loaded)
    except CanaryError as exc:
        facts |= {"status": "canary_failed", "message": str(exc)}
    except Exception as exc:
        facts |= {"status": "canary_failed", "message": f"{type(exc).__name__}: {exc}"}
    else:
        if served.compiled is None:
            facts |= {"status": "in_process", "predictor": served.predictor}
        else:
            frame = records_to_frame(loaded.schema, canary_records(loaded.schema))
            reference = np.asarray(loaded.model.predict_proba(frame)[:, 1], dtype=float)
            np.savez(out / TREES_NPZ, **served.compiled.arrays())
            facts |= {"status": "files", "reference": reference.tolist(),
                      "baseline": served.compiled.baseline,
                      "n_features": served.compiled.n_features,
                      "trees_sha256": file_digest(out / TREES_NPZ)}  # fmt: skip
    (out / MODEL_JSON).write_text(json.dumps(facts))
    return facts


def export(version: str, out: Path) -> dict[str, Any]:
    """Load ``version`` through MLflow and write its files to ``out``; what ``model.json``
    holds."""
    from fraud_lib import registry
    from fraud_lib.config import Settings

    try:
        loaded = registry.load_version(Settings.from_env(), version)
    except Exception as exc:
        facts = {"status": "load_failed", "message": str(exc)}
        (out / MODEL_JSON).write_text(json.dumps(facts))
        return facts
    facts = {"name": loaded.name, "version": loaded.version, **write_files(loaded, out)}
    (out / MODEL_JSON).write_text(json.dumps(facts))
    return facts


def main(argv: list[str]) -> int:
    """Entry point of the child: ``VERSION DIR``; 0 when ``model.json`` was written."""
    export(argv[0], Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

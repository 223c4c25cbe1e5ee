"""The child that turns a model version into files: ``python -m serving.model_files.export
VERSION DIR`` (settings from the environment, as the worker's). It writes ``DIR/model.json``:

- ``{"status": "load_failed", "message": ...}`` when the version cannot be loaded;
- else the version's facts (``name``, ``version``, ``schema``, ``threshold``, ``meta``) with
  ``status`` ``canary_failed`` (and ``message``), ``in_process`` (a predictor other than the
  compiled trees: the worker loads the version itself), or ``files``: then ``DIR/trees.npz``
  holds the tree arrays and ``reference`` the pipeline's scores of the canary records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def export(version: str, out: Path) -> dict[str, Any]:
    """Load ``version``, check it and write its files to ``out``; returns what ``model.json``
    holds."""
    from fraud_lib import registry
    from fraud_lib.config import Settings
    from fraud_lib.schema import records_to_frame
    from serving.scoring import CanaryError, canary_records, prepare

    try:
        loaded = registry.load_version(Settings.from_env(), version)
    except Exception as exc:
        return {"status": "load_failed", "message": str(exc)}
    facts: dict[str, Any] = {"name": loaded.name, "version": loaded.version,
                             "schema": loaded.schema.to_dict(), "threshold": loaded.threshold,
                             "meta": loaded.meta}  # fmt: skip
    try:
        served = prepare(loaded)
    except CanaryError as exc:
        return {**facts, "status": "canary_failed", "message": str(exc)}
    except Exception as exc:
        return {**facts, "status": "canary_failed", "message": f"{type(exc).__name__}: {exc}"}
    if served.compiled is None:
        return {**facts, "status": "in_process", "predictor": served.predictor}
    frame = records_to_frame(loaded.schema, canary_records(loaded.schema))
    reference = np.asarray(loaded.model.predict_proba(frame)[:, 1], dtype=float)
    np.savez(out / "trees.npz", **served.compiled.arrays())
    return {**facts, "status": "files", "reference": reference.tolist(),
            "baseline": served.compiled.baseline, "n_features": served.compiled.n_features}  # fmt: skip


def main(argv: list[str]) -> int:
    """Entry point of the child: ``VERSION DIR``; 0 when ``model.json`` was written."""
    version, out = argv[0], Path(argv[1])
    result = export(version, out)
    (out / "model.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

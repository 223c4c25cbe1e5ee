"""Features: everything that turns a transaction into the columns a model consumes.

This package owns
* the feature definitions (:mod:`.spec`): typed, frozen objects parsed from the schema file's
  ``behavior:`` block (entities, calendar, windowed aggregates, time since previous, label risk);
* the offline, point-in-time correct builder (:mod:`.offline`) that computes them from a history
  of events and labels, vectorised; the online computer (next) implements the same rules;
* the raw-transaction generator (:mod:`.raw_data`) and the raw table loader (:mod:`.raw_table`);
* the model-side column transforms (:mod:`.preprocess`), shared by training and scoring.
"""

import importlib
from typing import Any

__all__ = ["build_preprocessor", "model_frame", "predict_scores"]


def __getattr__(name: str) -> Any:
    """The model-side transforms, imported on first use: they need scikit-learn and pandas,
    which a scoring worker serving compiled trees never imports (issue 17, memory)."""
    if name in __all__:
        return getattr(importlib.import_module("fraud_lib.features.preprocess"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

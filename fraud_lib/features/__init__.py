"""Features: everything that turns a transaction into the columns a model consumes.

This package owns
* the feature definitions (:mod:`.spec`): typed, frozen objects parsed from the schema file's
  ``behavior:`` block (entities, calendar, windowed aggregates, time since previous, label risk);
* the offline, point-in-time correct builder (:mod:`.offline`) that computes them from a history
  of events and labels, vectorised; the online computer (next) implements the same rules;
* the raw-transaction generator (:mod:`.raw_data`) and the raw table loader (:mod:`.raw_table`);
* the model-side column transforms (:mod:`.preprocess`), shared by training and scoring.
"""

from fraud_lib.features.preprocess import build_preprocessor, model_frame, predict_scores

__all__ = ["build_preprocessor", "model_frame", "predict_scores"]

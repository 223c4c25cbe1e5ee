"""A model that passes MLflow logging (5-row input example) but raises on a real batch."""

from __future__ import annotations

from typing import Any


class ExplodingModel:
    """Wraps a fitted pipeline; ``predict_proba`` raises for more than five rows."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict_proba(self, X: Any) -> Any:
        if len(X) > 5:
            raise RuntimeError("exploding model: refuses batches of more than 5 rows")
        return self.model.predict_proba(X)

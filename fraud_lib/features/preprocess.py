"""Feature transforms shared by training and scoring, so both see the same columns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

if TYPE_CHECKING:  # fraud_lib.schema imports this package for the behavior specification
    from fraud_lib.schema import FeatureSchema


def build_preprocessor(schema: FeatureSchema, model_type: str) -> ColumnTransformer:
    """Column transform for a model type.

    Linear models get standardised numerics and one-hot categoricals; tree models get raw
    numerics and ordinal-encoded categoricals (unknown categories map to -1).
    """
    numeric = list(schema.features)
    categorical = list(schema.categorical)
    if model_type == "lr":
        transformers: list[tuple[str, Any, list[str]]] = [("num", StandardScaler(), numeric)]
        if categorical:
            transformers.append(
                ("cat", OneHotEncoder(handle_unknown="ignore", min_frequency=20), categorical)
            )
    else:
        transformers = [("num", "passthrough", numeric)]
        if categorical:
            enc = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
            transformers.append(("cat", enc, categorical))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)


def model_frame(df: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The columns the model consumes, in schema order."""
    return df.loc[:, schema.model_columns]


def predict_scores(model: Any, df: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """Fraud probability for each row of ``df`` (the positive-class column of predict_proba)."""
    return np.asarray(model.predict_proba(model_frame(df, schema))[:, 1], dtype=float)

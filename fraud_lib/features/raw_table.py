"""Raw transaction tables in: read, compute the behavioral features, validate for training.

``fraud train --data raw.parquet --schema raw_schema.yaml`` goes through
:func:`load_raw_transactions`: the file's rows are the history, so every row's features come
from the rows before it (and labels known at its time), exactly as :func:`build_features`
defines them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fraud_lib.data import _read_table
from fraud_lib.errors import ConfigError
from fraud_lib.features.offline import build_features, epoch_seconds
from fraud_lib.schema import FeatureSchema

logger = logging.getLogger(__name__)

RAW_SCHEMA_PATH = Path(__file__).with_name("raw_schema.yaml")
RAW_BASELINE_SCHEMA_PATH = Path(__file__).with_name("raw_baseline_schema.yaml")


def enrich(
    schema: FeatureSchema,
    raw: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    *,
    require_label: bool = True,
) -> pd.DataFrame:
    """``raw`` with its time as epoch seconds plus every computed column, validated.

    The result is sorted by time (stable) with a fresh index, ready for ``train_model``.
    """
    spec = schema.behavior
    if spec is None:
        raise ConfigError("this schema has no 'behavior' block; there is nothing to compute")
    computed = build_features(spec, raw, labels)
    out = raw.drop(columns=[c for c in computed.columns if c in raw.columns])
    out[spec.time] = epoch_seconds(raw[spec.time], spec.time)
    out = pd.concat([out, computed], axis=1)
    out = schema.validate_frame(out, require_label=require_label)
    return out.sort_values(spec.time, kind="stable").reset_index(drop=True)


def load_raw_transactions(
    path: str | Path, schema: FeatureSchema, *, require_label: bool = True
) -> pd.DataFrame:
    """Read a CSV or parquet table of raw transactions and :func:`enrich` it.

    Raises :class:`~fraud_lib.errors.DataError` when the file is missing, unreadable or does
    not hold the columns the schema's behavior block reads.
    """
    spec = schema.behavior
    if spec is None:
        raise ConfigError("load_raw_transactions needs a schema with a 'behavior' block")
    text = [c for c in (spec.id, *spec.categorical, *spec.entity_columns.values()) if c]
    df = enrich(schema, _read_table(Path(path), text), require_label=require_label)
    logger.info("loaded %d raw transactions from %s with %d computed features",
                len(df), path, len(spec.output_columns))  # fmt: skip
    return df

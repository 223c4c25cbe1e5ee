"""The behavioral features of a retraining window, recomputed point-in-time from the log.

A behavioral champion logs, for every prediction, the raw fields it was given and the
features the online state computed (``predictions.features``). A retraining window does not
train on those logged features: :func:`recompute` rebuilds them with the offline builder
(:func:`fraud_lib.features.offline.build_features`, the definition of every feature) over the
logged raw history and the labels table. Why:

* the offline builder is the definition and the online state an implementation of it; a gap
  in the online state (a Redis flush or restart before its rebuild, keys that expired) would
  otherwise be learned by every later model;
* label-risk features then count every label known by its event time (``labeled_at <= t``),
  including labels that reached the service late (a batch import), which is what the next
  model will see once those labels are in the online state;
* on the same history the two agree to float rounding (the parity test), so nothing is lost:
  the window's ``features`` facts report how far the logged values were from the rebuilt
  ones (``logged_max_rel_diff``, ``logged_rows_differing``), a free parity check of the
  service on real traffic.

The history read is every transaction logged before the interval end whose event time is at
most the feature horizon (times :data:`~fraud_lib.features.online_store.IDLE_TTL_FACTOR` when
the spec has a time since previous, as long as the online state keeps an idle entity's last
event) before the window's first event, and only labels known by the interval end, so a
re-run of the same interval rebuilds the same values.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from fraud_lib import logged
from fraud_lib.errors import ConfigError
from fraud_lib.features.offline import build_features
from fraud_lib.features.online_store import IDLE_TTL_FACTOR, horizon_seconds
from fraud_lib.features.spec import BehaviorSpec
from fraud_lib.schema import FeatureSchema

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-9  # relative difference the parity test allows between online and offline
ID = "transaction_id"


def lookback_seconds(spec: BehaviorSpec) -> float:
    """How much event time before the window's first event the rebuild reads."""
    factor = IDLE_TTL_FACTOR if spec.time_since else 1
    return factor * horizon_seconds(spec)


def _events(spec: BehaviorSpec, raw: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The logged raw fields as a raw table for the builder; rows lacking one are dropped
    (logged by a model without this spec) and counted."""
    complete = raw.notna().all(axis=1)
    events = raw.loc[complete]
    table = {
        spec.id or ID: events[ID].astype(str),
        spec.time: events["event_time"].astype(np.float64),
    }
    table |= {c: events[c].astype(str) for c in [*spec.entity_columns.values(), *spec.categorical]}
    table |= {c: pd.to_numeric(events[c]).astype(np.float64) for c in spec.numeric}
    return pd.DataFrame(table), int((~complete).sum())


def _parity(logged_values: pd.DataFrame, rebuilt: pd.DataFrame) -> dict[str, Any]:
    """How far the logged feature values are from the rebuilt ones (logged values only)."""
    a = logged_values.to_numpy(np.float64)
    b = rebuilt.to_numpy(np.float64)
    seen = np.isfinite(a) & np.isfinite(b)
    rel = np.where(seen, np.abs(a - b) / np.maximum(np.abs(b), 1.0), 0.0)
    differing = (rel > PARITY_TOLERANCE).any(axis=0)
    return {
        "logged_columns_differing": [
            c for c, d in zip(rebuilt.columns, differing, strict=True) if d
        ],
        "logged_rows_compared": int(seen.any(axis=1).sum()),
        "logged_max_rel_diff": float(rel.max()) if rel.size else 0.0,
        "logged_rows_differing": int((rel > PARITY_TOLERANCE).any(axis=1).sum()),
    }


def recompute(
    engine: Engine, schema: FeatureSchema, rows: pd.DataFrame, *, interval_end: datetime
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``rows`` (labeled predictions, store layout) with every computed feature rebuilt
    offline; and the facts of the rebuild (history size, parity with the logged values).

    Rows whose raw fields were not logged get NaN features (the window drops them)."""
    spec = schema.behavior
    if spec is None:
        raise ConfigError("the window's features are rebuilt only for a behavioral schema")
    times = rows["event_time"].astype(np.float64)
    raw_columns = [c for c in spec.raw_columns if c != spec.time]
    raw, labels = logged.raw_history(
        engine,
        raw_columns,
        event_start=float(times.min()) - lookback_seconds(spec),
        event_end=float(times.max()),
        scored_before=interval_end,
        labels_known_by=interval_end,
    )
    events, incomplete = _events(spec, raw)
    del raw
    if events.empty:
        computed = pd.DataFrame(columns=spec.output_columns, dtype=np.float64)
    else:
        computed = build_features(spec, events, labels)
        computed.index = events[spec.id or ID].to_numpy()
    rebuilt = computed.reindex(rows[ID].astype(str).to_numpy())
    rebuilt.index = rows.index
    out = spec.output_columns
    facts = {"source": "rebuilt offline from the logged raw fields", "history_events": len(events),
             "history_incomplete": incomplete, "labels": len(labels),
             "lookback_seconds": lookback_seconds(spec)}  # fmt: skip
    present = [c for c in out if c in rows.columns]
    facts |= _parity(rows[present], rebuilt[present])
    rows = rows.drop(columns=present).join(rebuilt)
    log.info("window features rebuilt from %d logged events: %s", len(events), facts)
    return rows, facts

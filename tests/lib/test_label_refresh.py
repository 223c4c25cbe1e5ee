"""The label cache's refresh on a real Postgres and a tiny hand-made terminal history.

Regression: every refresh reloaded every labeled event of the horizon (~3 s at 80,000 labels
under load), so label risk was staler than the stated lag and the parity test found delayed
label-risk cells differing outside it. A refresh now reads only the labels and prediction rows
written since the previous one and must leave the cache equal to a full load.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from fraud_lib import store
from fraud_lib.data import SECONDS_PER_DAY
from fraud_lib.features.online_labels import LabelCache, refresh_label_cache
from fraud_lib.features.raw_table import RAW_SCHEMA_PATH
from fraud_lib.schema import FeatureSchema
from tests.lib.test_online_state import log_predictions

SPEC = FeatureSchema.load(RAW_SCHEMA_PATH).behavior
DAY = SECONDS_PER_DAY
T0 = 1_700_000_000.0


def events(rows: list[tuple[str, float, int, float]]) -> pd.DataFrame:
    """Transactions of terminal T: (id, event time in days after T0, label, labeled_at in days)."""
    return pd.DataFrame(
        {
            "transaction_id": [r[0] for r in rows],
            "timestamp": [T0 + r[1] * DAY for r in rows],
            "customer_id": "c",
            "terminal_id": "T",
            "amount": 10.0,
            "is_fraud": [r[2] for r in rows],
            "labeled_at": [T0 + r[3] * DAY for r in rows],
        }
    )


def label(engine, tx: str, y: int, at_days: float) -> None:
    store.upsert_labels(engine, [{"transaction_id": tx, "label": y,
                                  "labeled_at": pd.Timestamp(T0 + at_days * DAY, unit="s", tz="UTC")}],
                        bounds=None)  # fmt: skip


def terminal_history(cache: LabelCache) -> list[tuple[float, float, float]]:
    """(event day, labeled_at day, label) of terminal T, sorted."""
    h = cache.history("terminal", np.array(["T"], dtype=object))
    rows = zip((h.t - T0) / DAY, (h.known - T0) / DAY, h.y, strict=True)
    return sorted((round(t, 6), round(k, 6), y) for t, k, y in rows)


def full_load(engine) -> LabelCache:
    fresh = LabelCache()
    refresh_label_cache(engine, SPEC, fresh)
    return fresh


@pytest.fixture()
def cache(pg_engine) -> LabelCache:
    """A cache loaded from a terminal with a fraud (day 0) and a legit (day 1) label, both
    written an hour before (past the refresh overlap)."""
    log_predictions(pg_engine, SPEC, events([("a", 0, 1, 0.5), ("b", 1, 0, 2)]))
    with pg_engine.begin() as conn:  # written an hour ago: past the refresh overlap
        conn.exec_driver_sql("UPDATE predictions SET written_at = written_at - interval '1 hour'")
        conn.exec_driver_sql("UPDATE labels SET updated_at = updated_at - interval '1 hour'")
    loaded = LabelCache()
    assert refresh_label_cache(pg_engine, SPEC, loaded) == 2
    assert terminal_history(loaded) == [(0, 0.5, 1), (1, 2, 0)]
    return loaded


def test_a_refresh_reads_only_what_changed_and_equals_a_full_load(pg_engine, cache):
    log_predictions(pg_engine, SPEC, events([("c", 3, 1, 4)]))
    assert refresh_label_cache(pg_engine, SPEC, cache) == 1  # not the whole horizon again
    assert terminal_history(cache) == [(0, 0.5, 1), (1, 2, 0), (3, 4, 1)]
    assert refresh_label_cache(pg_engine, SPEC, cache) <= 1  # re-read within the overlap: once
    assert terminal_history(cache) == terminal_history(full_load(pg_engine))


def test_a_changed_label_replaces_the_old_one(pg_engine, cache):
    label(pg_engine, "a", 0, 5)
    refresh_label_cache(pg_engine, SPEC, cache)
    assert terminal_history(cache) == [(0, 5, 0), (1, 2, 0)]
    assert terminal_history(cache) == terminal_history(full_load(pg_engine))


def test_a_label_that_arrives_before_its_prediction_row_counts_once_the_row_lands(pg_engine, cache):
    late = events([("d", 2, 1, 2.5)])
    label(pg_engine, "d", 1, 2.5)
    refresh_label_cache(pg_engine, SPEC, cache)
    assert terminal_history(cache) == [(0, 0.5, 1), (1, 2, 0)]  # no event to attach it to yet
    store.insert_predictions(pg_engine, [{"prediction_id": "p-d", "transaction_id": "d",
                                          "event_time": float(late["timestamp"][0]),
                                          "features": {"customer_id": "c", "terminal_id": "T",
                                                       "amount": 10.0}, "score": 0.5}])  # fmt: skip
    refresh_label_cache(pg_engine, SPEC, cache)
    assert terminal_history(cache) == [(0, 0.5, 1), (1, 2, 0), (2, 2.5, 1)]


def test_events_past_the_horizon_leave_the_cache(pg_engine, cache):
    # horizon: the 30-day window of the 7-day-delayed rate, 37 days before the newest event
    log_predictions(pg_engine, SPEC, events([("e", 37.5, 0, 38)]))
    refresh_label_cache(pg_engine, SPEC, cache)
    assert terminal_history(cache) == [(1, 2, 0), (37.5, 38, 0)]
    assert terminal_history(cache) == terminal_history(full_load(pg_engine))


def test_every_entity_reads_the_labels_of_one_snapshot(pg_engine):
    """Regression: each label-risk entity's query ran in its own snapshot, so a label changed
    between them reached one entity and not the other (and the cache's record of what it holds
    kept the difference until the next full reload). The change lands here between the two."""
    import yaml

    from fraud_lib.features.online_labels import fetch_labels

    schema = yaml.safe_load(RAW_SCHEMA_PATH.read_text())
    schema["behavior"]["label_risk"].append({"entity": "customer", "windows": ["30d"],
                                             "stats": ["frauds"]})  # fmt: skip
    spec = FeatureSchema.from_dict(schema).behavior
    log_predictions(pg_engine, spec, events([("a", 0, 1, 0.5)]))
    changed = []

    def change_between(conn, cursor, statement, *args) -> None:
        if "'terminal_id'" in statement and not changed:  # the second entity's query
            changed.append(True)
            label(pg_engine, "a", 0, 0.6)  # committed on another connection

    sa.event.listen(pg_engine, "before_cursor_execute", change_between)
    try:
        frame = fetch_labels(pg_engine, spec)
    finally:
        sa.event.remove(pg_engine, "before_cursor_execute", change_between)
    assert changed and sorted(frame["entity"]) == ["customer", "terminal"]
    assert frame["label"].tolist() == [1.0, 1.0]  # both as of the first query
    assert frame["labeled_at"].nunique() == 1

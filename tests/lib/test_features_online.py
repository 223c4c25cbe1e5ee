"""The online computer against hand-computed values and against the offline builder (code tests).

The hand-made histories go through :func:`fraud_lib.features.online.compute` (pure: histories in,
features out), one transaction at a time in arrival order; the generated ones go through
:class:`OnlineFeatures` on a real redis-server.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_lib.features.offline import build_features, epoch_seconds, labels_from_events
from fraud_lib.features.online import (
    Batch,
    History,
    LabelHistory,
    _event_order,
    compute,
    key_codes,
)
from fraud_lib.features.online_store import RecordLayout
from fraud_lib.features.spec import BehaviorSpec
from tests.lib.test_features_offline import STATS, events, spec_for

RISK = [{"entity": "terminal", "windows": ["1d"], "stats": ["frauds", "labeled", "rate"]}]


def replay(spec: BehaviorSpec, table: pd.DataFrame) -> pd.DataFrame:
    """Score ``table``'s rows one by one in its row order (arrival order), each seeing the rows
    that arrived before it; every label of the table is in the label cache."""
    layout = RecordLayout.for_spec(spec)
    t_all = epoch_seconds(table[spec.time], spec.time)
    lab = labels_from_events(spec, table, t_all) if spec.label_risk else None
    out = []
    for i in range(len(table)):
        row = table.iloc[[i]]
        batch = Batch.from_frame(spec, row, t_all[i : i + 1])
        before = table.iloc[:i]
        histories, labels = {}, {}
        for name, column in spec.entities:
            uniques, _ = key_codes(batch.keys[name])
            mine = (before[column].astype(str) == uniques[0]).to_numpy()
            seen = Batch.from_frame(spec, before[mine], t_all[:i][mine])
            records = layout.pack(seen.times, seen.ids, seen.values)
            histories[name] = History(np.zeros(len(records), np.int64), records)
            same = (table[column].astype(str) == uniques[0]).to_numpy()
            if lab is not None:
                labels[name] = LabelHistory(
                    np.zeros(int(same.sum()), np.int64), t_all[same],
                    lab["labeled_at"].to_numpy()[same], lab["label"].to_numpy()[same],
                )  # fmt: skip
        out.append(compute(spec, batch, histories, labels))
    return pd.concat(out, ignore_index=True).set_axis(table.index)


THREE = events([
    ("a", 0, "x", "T", 10.0, 0, 0), ("o", 1000, "other", "T", 500.0, 0, 0),
    ("b", 3600, "x", "T", 20.0, 0, 0), ("c", 7200, "x", "T", 60.0, 0, 0),
])  # fmt: skip


def customer_spec(include: bool) -> BehaviorSpec:
    return spec_for(
        aggregates=[{"entity": "customer", "column": "amount", "windows": ["1d"],
                     "stats": STATS, "include_current": include}],
        time_since_previous=["customer"], calendar=["hour", "night"],
    )  # fmt: skip


def col(out: pd.DataFrame, table: pd.DataFrame, name: str, ids: str) -> list[float]:
    return [float(out.loc[table["tx"] == i, name].iloc[0]) for i in ids]


def test_customer_with_three_transactions():
    out = replay(customer_spec(False), THREE)
    assert col(out, THREE, "customer__amount__count__1d", "abc") == [0, 1, 2]
    assert col(out, THREE, "customer__amount__sum__1d", "abc") == [0, 10, 30]
    assert col(out, THREE, "customer__amount__mean__1d", "abc") == [0, 10, 15]
    assert col(out, THREE, "customer__amount__std__1d", "abc") == [0, 0, 5]
    assert col(out, THREE, "customer__amount__max__1d", "abc") == [0, 10, 20]
    assert col(out, THREE, "customer__amount__ratio__1d", "abc") == [0, 2, 4]
    assert col(out, THREE, "customer__time_since_prev", "abc") == [-1, 3600, 3600]
    assert col(out, THREE, "calendar__hour", "abc") == [0, 1, 2]
    assert col(out, THREE, "calendar__night", "abc") == [1, 1, 1]


def test_customer_with_three_transactions_including_current():
    out = replay(customer_spec(True), THREE)
    assert col(out, THREE, "customer__amount__count__1d__incl", "abc") == [1, 2, 3]
    assert col(out, THREE, "customer__amount__mean__1d__incl", "abc") == [10, 15, 30]
    assert col(out, THREE, "customer__amount__max__1d__incl", "abc") == [10, 20, 60]
    assert col(out, THREE, "customer__amount__ratio__1d__incl", "abc") == [1, 20 / 15, 2]


def test_window_edge_excludes_an_event_exactly_one_window_old():
    table = events([("a", 0, "x", "T", 10.0, 0, 0), ("b", 86_400, "x", "T", 20.0, 0, 0)])
    out = replay(customer_spec(False), table)
    assert col(out, table, "customer__amount__count__1d", "ab") == [0, 0]
    assert col(out, table, "customer__time_since_prev", "ab") == [-1, 86_400]


def test_terminal_labels_arriving_before_and_after_the_scoring_moment():
    # a: fraud, label known at 100; b: legit, known at 10,000; scored at 200 and at 20,000
    table = events([
        ("a", 0, "x", "T", 1.0, 1, 100), ("b", 50, "y", "T", 1.0, 0, 10_000),
        ("c", 200, "z", "T", 1.0, 0, 99_999), ("d", 20_000, "w", "T", 1.0, 0, 99_999),
    ])  # fmt: skip
    spec = spec_for(label_risk=RISK)
    out = replay(spec, table)
    assert col(out, table, "terminal__risk__frauds__1d", "acd") == [0, 1, 1]
    assert col(out, table, "terminal__risk__labeled__1d", "acd") == [0, 1, 2]
    assert col(out, table, "terminal__risk__rate__1d", "acd") == [0, 1, 0.5]
    pd.testing.assert_frame_equal(out, build_features(spec, table))


def test_label_delay_counts_only_events_older_than_the_delay():
    table = events([("a", 0, "x", "T", 1.0, 1, 10), ("b", 3000, "y", "T", 1.0, 0, 99_999),
                    ("c", 4000, "z", "T", 1.0, 0, 99_999)])  # fmt: skip
    spec = spec_for(
        label_risk=[{"entity": "terminal", "windows": ["1d"], "stats": ["frauds"], "delay": "1h"}]
    )
    out = replay(spec, table)
    assert col(out, table, "terminal__risk__frauds__1d__delay1h", "abc") == [0, 0, 1]


def test_out_of_order_events_match_offline_once_everything_has_arrived():
    # c (t=7200) arrives first and sees nothing yet; a and b arrive late; d sees all three
    table = events([
        ("c", 7200, "x", "T", 60.0, 0, 0), ("a", 0, "x", "T", 10.0, 0, 0),
        ("b", 3600, "x", "T", 20.0, 0, 0), ("d", 9000, "x", "T", 30.0, 0, 0),
    ])  # fmt: skip
    spec = customer_spec(False)
    online, offline = replay(spec, table), build_features(spec, table)
    assert col(online, table, "customer__amount__count__1d", "cabd") == [0, 0, 1, 3]
    assert col(offline, table, "customer__amount__count__1d", "cabd") == [2, 0, 1, 3]
    late_or_after = table["tx"].isin(["a", "b", "d"])
    pd.testing.assert_frame_equal(online[late_or_after], offline[late_or_after])


def test_equal_times_never_see_each_other():
    table = events([("a", 100, "x", "T", 10.0, 0, 0), ("b", 100, "x", "T", 20.0, 0, 0)])
    out = replay(customer_spec(False), table)
    assert col(out, table, "customer__amount__count__1d", "ab") == [0, 0]
    assert col(out, table, "customer__time_since_prev", "ab") == [-1, -1]


@pytest.mark.parametrize("seed", range(40))
def test_event_order_is_the_full_sort_with_retried_copies_dropped(seed):
    # only the keys whose times are not increasing are sorted again: same result as sorting all
    rng = np.random.default_rng(seed)
    n, keys = int(rng.integers(1, 400)), int(rng.integers(1, 30))
    codes = rng.integers(0, keys, n)
    t = rng.integers(0, 60, n).astype(np.float64)
    ids = rng.integers(0, 4, n).astype(np.uint64)
    if seed % 2:  # mostly in order, as stored histories are
        by = np.lexsort((t, codes))
        codes, t, ids = codes[by], t[by], ids[by]
        t[rng.integers(0, n, 3)] -= 1.0
    full = np.lexsort((ids, t, codes))
    same = np.r_[False, (np.diff(codes[full]) == 0) & (np.diff(t[full]) == 0)
                 & (np.diff(ids[full].view(np.int64)) == 0)]  # fmt: skip
    assert np.array_equal(_event_order(codes, t, ids), full[~same])


@pytest.mark.parametrize("seed", range(20))
def test_few_windows_summed_one_by_one_equal_the_sparse_table_bit_for_bit(seed, monkeypatch):
    # single transactions take the compiled one-by-one loop; offline takes the table
    from fraud_lib.features import kernels

    rng = np.random.default_rng(seed)
    for _ in range(25):
        n = int(rng.integers(1, 2500))
        x = rng.standard_normal(n) * 10.0 ** int(rng.integers(-3, 6)) + 1e4 * (seed % 2)
        ranges = []
        for _ in range(int(rng.integers(1, 4))):
            lo = rng.integers(0, n, int(rng.integers(1, 6)))
            ranges.append((lo, np.minimum(n, lo + rng.integers(0, n + 1, len(lo)))))
        few = kernels.window_moments(x, ranges)
        with monkeypatch.context() as m:
            m.setattr(kernels, "SMALL_QUERIES", -1)
            table = kernels.window_moments(x, ranges)
        for a, b in zip(few, table, strict=True):
            for field in ("n", "s", "m2", "mx"):
                assert np.array_equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("seed", range(10))
def test_adding_the_current_event_compiled_equals_the_vectorised_add_bit_for_bit(seed):
    from fraud_lib.features.kernels import Moments

    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 500))
    x = rng.standard_normal(k) * 10.0 ** int(rng.integers(-3, 6)) + 1e4 * (seed % 2)
    n = rng.integers(0, 50, k).astype(np.float64)
    m = Moments(n, rng.standard_normal(k) * n * 100, rng.random(k) * n * 1e3,
                np.where(n > 0, rng.standard_normal(k) * 100, -np.inf))  # fmt: skip
    expected = Moments(m.n.copy(), m.s.copy(), m.m2.copy(), m.mx.copy())
    expected.add(slice(None), 1.0, x, np.zeros_like(x), x)
    got = m.with_current(x)
    for field in ("n", "s", "m2", "mx"):
        assert np.array_equal(getattr(got, field), getattr(expected, field)), field


@pytest.mark.parametrize("seed", range(30))
def test_few_rows_label_risk_by_one_scan_equals_the_sorted_count(seed, monkeypatch):
    # small batches count each row's labels in one compiled scan; large ones by sorted edges
    from fraud_lib.features import online

    rng = np.random.default_rng(seed)
    risks = [
        {"entity": "terminal", "windows": ["1h", "1d"], "stats": ["frauds", "labeled", "rate"]},
        {"entity": "terminal", "windows": ["1d"], "stats": ["frauds", "rate"], "delay": "1h"},
    ]
    spec = spec_for(label_risk=risks)
    n_rows, n_keys, n_labels = (
        int(rng.integers(1, 40)),
        int(rng.integers(1, 6)),
        int(rng.integers(0, 300)),
    )
    t = rng.integers(0, 200_000, n_labels).astype(np.float64)
    known = t + rng.choice([0.0, 1.0, 3600.0, 50_000.0, np.nan, np.inf], n_labels)
    labels = LabelHistory(
        rng.integers(0, n_keys, n_labels), t, known, rng.integers(0, 2, n_labels).astype(np.float64)
    )
    codes = rng.integers(0, n_keys, n_rows)
    times = np.r_[t, known[np.isfinite(known)], t + 3600.0, t + 86_400.0]
    times = rng.choice(times, n_rows) if len(times) else rng.uniform(0, 2e5, n_rows)
    batch = Batch(times=times, ids=np.zeros(n_rows, np.uint64), keys={}, values={})
    few = online._label_features(spec, "terminal", batch, codes, labels)
    with monkeypatch.context() as m:
        m.setattr(online, "SMALL_BATCH", -1)
        table = online._label_features(spec, "terminal", batch, codes, labels)
    assert few.keys() == table.keys()
    for name in few:
        assert np.array_equal(few[name], table[name]), name


def test_new_entity_gets_features_from_an_empty_history():
    spec = spec_for(
        aggregates=[{"entity": "customer", "column": "amount", "windows": ["7d"],
                     "stats": STATS, "include_current": False}],
        time_since_previous=["customer"], label_risk=RISK,
    )  # fmt: skip
    table = events([("a", 0, "new", "NEW", 42.0, 0, 0)])
    out = replay(spec, table)
    assert out.iloc[0].to_dict() == {c: (-1.0 if "time_since" in c else 0.0) for c in out.columns}


@pytest.fixture(scope="module")
def raw_sample() -> tuple[BehaviorSpec, pd.DataFrame]:
    from fraud_lib.features.raw_data import generate_raw
    from fraud_lib.features.raw_table import RAW_SCHEMA_PATH
    from fraud_lib.schema import FeatureSchema

    spec = FeatureSchema.load(RAW_SCHEMA_PATH).behavior
    raw = generate_raw(20, total_rows=4000, fraud_rate=0.02, seed=11)
    return spec, raw.sort_values("timestamp", kind="stable").reset_index(drop=True)


def assert_close(online: pd.DataFrame, offline: pd.DataFrame) -> float:
    """Every value equal within 1e-9 relative (absolute near 0); returns the max relative diff."""
    a, b = online.to_numpy(np.float64), offline.to_numpy(np.float64)
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1.0)
    assert rel.max() <= 1e-9, online.columns[int(np.argmax(rel.max(axis=0)))]
    return float(rel.max())


def test_online_equals_offline_on_generated_raw_transactions(raw_sample):
    spec, raw = raw_sample
    part = raw.iloc[:300]
    assert_close(replay(spec, part), build_features(spec, part))

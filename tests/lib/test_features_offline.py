"""The offline builder against hand-computed values on tiny hand-made histories (code tests)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fraud_lib.errors import DataError
from fraud_lib.features.offline import build_features
from fraud_lib.features.raw_data import EPOCH_DAY0, generate_raw
from fraud_lib.features.raw_table import RAW_SCHEMA_PATH, enrich
from fraud_lib.schema import FeatureSchema

T0 = EPOCH_DAY0  # a Monday, 00:00 UTC
STATS = ["count", "sum", "mean", "std", "max", "ratio"]


def spec_for(**behavior):
    """A behavior spec over columns tx, ts, cust, term, amount, y, lab."""
    block = {"entities": {"customer": "cust", "terminal": "term"}, "labeled_at": "lab", **behavior}
    return FeatureSchema.from_dict(
        {"time": "ts", "label": "y", "id": "tx", "features": ["amount"], "behavior": block}
    ).behavior


def events(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (tx, seconds after T0, customer, terminal, amount, label, labeled_at after T0)."""
    df = pd.DataFrame(rows, columns=["tx", "ts", "cust", "term", "amount", "y", "lab"])
    df["ts"] = df["ts"] + T0
    df["lab"] = df["lab"] + T0
    return df


def customer_spec(windows, include):
    return spec_for(
        aggregates=[{"entity": "customer", "column": "amount", "windows": windows,
                     "stats": STATS, "include_current": include}],
        time_since_previous=["customer"],
    )  # fmt: skip


THREE = events([
    ("a", 0, "x", "T", 10.0, 0, 0), ("o", 1000, "other", "T", 500.0, 0, 0),
    ("b", 3600, "x", "T", 20.0, 0, 0), ("c", 7200, "x", "T", 60.0, 0, 0),
])  # fmt: skip


def column(out: pd.DataFrame, name: str, ids=("a", "b", "c")) -> list[float]:
    return [float(out.loc[THREE["tx"] == i, name].iloc[0]) for i in ids]


def test_customer_with_three_transactions_excluding_current():
    out = build_features(customer_spec(["1d"], False), THREE)
    assert column(out, "customer__amount__count__1d") == [0, 1, 2]
    assert column(out, "customer__amount__sum__1d") == [0, 10, 30]
    assert column(out, "customer__amount__mean__1d") == [0, 10, 15]
    assert column(out, "customer__amount__std__1d") == [0, 0, 5]
    assert column(out, "customer__amount__max__1d") == [0, 10, 20]
    assert column(out, "customer__amount__ratio__1d") == [0, 2, 4]
    assert column(out, "customer__time_since_prev") == [-1, 3600, 3600]


def test_customer_with_three_transactions_including_current():
    out = build_features(customer_spec(["1d"], True), THREE)
    assert column(out, "customer__amount__count__1d__incl") == [1, 2, 3]
    assert column(out, "customer__amount__sum__1d__incl") == [10, 30, 90]
    assert column(out, "customer__amount__mean__1d__incl") == [10, 15, 30]
    std = column(out, "customer__amount__std__1d__incl")
    assert std[:2] == [0, 5] and std[2] == pytest.approx(math.sqrt(1400 / 3), rel=1e-12)
    assert column(out, "customer__amount__max__1d__incl") == [10, 20, 60]
    assert column(out, "customer__amount__ratio__1d__incl") == pytest.approx([1, 20 / 15, 2])


def test_window_edge_is_open_at_the_far_end():
    out = build_features(customer_spec(["1h", "90m"], False), THREE)
    # e counts when e.time + w > t: exactly one hour back is outside a 1h window
    assert column(out, "customer__amount__count__1h") == [0, 0, 0]
    assert column(out, "customer__amount__count__90m") == [0, 1, 1]
    assert column(out, "customer__amount__sum__90m") == [0, 10, 20]


def test_calendar_features():
    df = events(
        [("a", 3600, "x", "T", 1.0, 0, 0), ("b", 5 * 86400 + 12 * 3600 + 59, "x", "T", 1.0, 0, 0)]
    )
    out = build_features(spec_for(calendar=["hour", "day_of_week", "weekend", "night"]), df)
    assert out.to_numpy().tolist() == [[1, 0, 0, 1], [12, 5, 1, 0]]


# A terminal: three labeled events, then two scoring moments (q1 at 2000 s, q2 at 3750 s).
TERMINAL = events([
    ("e1", 0, "u1", "T", 5.0, 1, 1000),      # fraud, label known before q1
    ("e2", 100, "u2", "T", 5.0, 1, 5000),    # fraud, label arrives after q2
    ("e3", 200, "u3", "T", 5.0, 0, 300),     # legit, known early
    ("e4", 300, "u4", "T", 5.0, 1, 3750),    # fraud, known exactly at q2
    ("q1", 2000, "u5", "T", 5.0, 0, 1e9),
    ("q2", 3750, "u6", "T", 5.0, 0, 1e9),
    ("zz", 3000, "u7", "other", 5.0, 1, 0),  # another terminal: never counts for T
])  # fmt: skip


def risk(out, name, ids=("q1", "q2")):
    return [float(out.loc[TERMINAL["tx"] == i, name].iloc[0]) for i in ids]


def test_label_risk_counts_only_labels_known_at_the_scoring_moment():
    spec = spec_for(label_risk=[{"entity": "terminal", "windows": ["1d"],
                                 "stats": ["frauds", "labeled", "rate"]}])  # fmt: skip
    out = build_features(spec, TERMINAL)
    assert risk(out, "terminal__risk__frauds__1d") == [1, 2]  # q2: e1 and e4 (labeled_at == t)
    assert risk(out, "terminal__risk__labeled__1d") == [2, 3]
    assert risk(out, "terminal__risk__rate__1d") == pytest.approx([0.5, 2 / 3])
    assert risk(out, "terminal__risk__frauds__1d", ("e1",)) == [0]  # never its own label


def test_label_risk_with_a_delay_counts_only_old_enough_transactions():
    spec = spec_for(label_risk=[{"entity": "terminal", "windows": ["1d"], "delay": "1h",
                                 "stats": ["frauds", "labeled"]}])  # fmt: skip
    out = build_features(spec, TERMINAL)
    # q2 at 3750: e1 (0 + 3600 < 3750, known), e2 (3700 < 3750, not known); e3, e4 too recent
    assert risk(out, "terminal__risk__frauds__1d__delay1h") == [0, 1]
    assert risk(out, "terminal__risk__labeled__1d__delay1h") == [0, 1]


def test_label_risk_window_expires():
    df = events([("old", 0, "u", "T", 1.0, 1, 10), ("new", 86400 + 1, "v", "T", 1.0, 0, 0)])
    spec = spec_for(
        label_risk=[{"entity": "terminal", "windows": ["1d", "2d"], "stats": ["frauds"]}]
    )
    out = build_features(spec, df)
    assert out["terminal__risk__frauds__1d"].tolist() == [0, 0]
    assert out["terminal__risk__frauds__2d"].tolist() == [0, 1]


def test_labels_table_gives_the_same_risk_as_label_columns():
    spec = spec_for(label_risk=[{"entity": "terminal", "windows": ["1d"], "stats": ["rate"]}])
    labels = pd.DataFrame({
        "transaction_id": TERMINAL["tx"],
        "label": TERMINAL["y"],
        "labeled_at": pd.to_datetime(TERMINAL["lab"], unit="s", utc=True).dt.strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"),
    })  # fmt: skip
    pd.testing.assert_frame_equal(
        build_features(spec, TERMINAL, labels), build_features(spec, TERMINAL)
    )
    unlabeled = build_features(spec, TERMINAL, labels.iloc[:0])
    assert (unlabeled["terminal__risk__rate__1d"] == 0).all()


def test_equal_timestamps_never_see_each_other():
    df = events([
        ("c", 50, "x", "T", 2.0, 1, 60), ("a", 100, "x", "T", 10.0, 1, 100),
        ("b", 100, "x", "T", 30.0, 0, 100), ("d", 200, "x", "T", 1.0, 0, 0),
    ])  # fmt: skip
    spec = spec_for(
        aggregates=[{"entity": "customer", "column": "amount", "windows": ["1d"],
                     "stats": ["count", "mean"], "include_current": inc} for inc in (False, True)],
        time_since_previous=["customer"],
        label_risk=[{"entity": "customer", "windows": ["1d"], "stats": ["frauds"]}],
    )  # fmt: skip
    out = build_features(spec, df).set_index(df["tx"])
    assert out["customer__amount__count__1d"].tolist() == [0, 1, 1, 3]
    assert out["customer__amount__mean__1d__incl"].tolist() == [2, 6, 16, 43 / 4]
    assert out["customer__time_since_prev"].tolist() == [-1, 50, 50, 100]
    # a's label is known at 100, but a is not earlier than b: only c's counts for b
    assert out["customer__risk__frauds__1d"].tolist() == [0, 1, 1, 2]


def test_new_entity_gets_defined_values():
    df = events([("a", 10, "fresh", "new", 42.0, 0, 20)])
    spec = FeatureSchema.load(RAW_SCHEMA_PATH).behavior
    df = df.rename(columns={"tx": "transaction_id", "ts": "timestamp", "cust": "customer_id",
                            "term": "terminal_id", "y": "is_fraud", "lab": "labeled_at"})  # fmt: skip
    out = build_features(spec, df).iloc[0]
    assert np.isfinite(out.to_numpy()).all()
    assert out["customer__amount__count__1d__incl"] == 1
    assert out["customer__amount__mean__30d__incl"] == 42
    assert out["customer__amount__std__30d"] == 0 and out["customer__amount__ratio__30d"] == 0
    assert out["customer__time_since_prev"] == -1
    assert out["terminal__risk__rate__30d__delay7d"] == 0


def test_shuffled_input_gives_identical_output():
    raw = generate_raw(4, rows_per_day=400, fraud_rate=0.05, seed=5)
    spec = FeatureSchema.load(RAW_SCHEMA_PATH).behavior
    expected = build_features(spec, raw)
    shuffled = raw.sample(frac=1.0, random_state=1)
    got = build_features(spec, shuffled)
    pd.testing.assert_frame_equal(got.loc[expected.index], expected, check_exact=True)


def brute_force(df: pd.DataFrame, window: float, include: bool) -> pd.DataFrame:
    """The definition, one row at a time (what the online computer will do)."""
    rows = []
    for _, r in df.iterrows():
        past = df[(df.cust == r.cust) & (df.ts < r.ts) & (df.ts + window > r.ts)].amount.tolist()
        values = [*past, r.amount] if include else past
        n = len(values)
        mean = math.fsum(values) / n if n else 0.0
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n) if n else 0.0
        rows.append([n, math.fsum(values), mean, std, max(values, default=0.0),
                     r.amount / mean if mean else 0.0])  # fmt: skip
    return pd.DataFrame(rows, columns=STATS, index=df.index)


@pytest.mark.parametrize("include", [False, True])
def test_matches_the_definition_row_by_row(include):
    rng = np.random.default_rng(7)
    n = 300
    df = events([(f"t{i}", float(rng.integers(0, 40)) * 900.0, f"c{rng.integers(0, 6)}", "T",
                  float(np.round(rng.lognormal(3, 1), 2)), 0, 0) for i in range(n)])  # fmt: skip
    out = build_features(customer_spec(["3h"], include), df)
    want = brute_force(df, 3 * 3600.0, include)
    suffix = "__incl" if include else ""
    for stat in STATS:
        got = out[f"customer__amount__{stat}__3h{suffix}"].to_numpy()
        np.testing.assert_allclose(got, want[stat].to_numpy(), rtol=1e-12, atol=1e-9, err_msg=stat)


def test_std_is_stable_after_a_long_history_of_large_values():
    n = 20_000
    amounts = np.full(n, 1e7)
    amounts[-3:] = [1.01, 1.02, 1.04]
    df = pd.DataFrame({"tx": [f"t{i}" for i in range(n)], "ts": T0 + np.arange(n) * 60.0,
                       "cust": "x", "term": "T", "amount": amounts, "y": 0, "lab": T0})  # fmt: skip
    out = build_features(customer_spec(["2m"], True), df)  # the last row's window: 1.02, 1.04
    exact = np.std([1.02, 1.04])
    assert out["customer__amount__std__2m__incl"].iloc[-1] == pytest.approx(exact, rel=1e-9)
    assert out["customer__amount__sum__2m__incl"].iloc[-1] == pytest.approx(2.06, rel=1e-12)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.drop(columns=["cust"]), "missing column(s) for the behavioral features: cust"),
        (lambda d: d.assign(cust=[None, "x", "x", "x"]), "'cust' has no customer key at row 0"),
        (lambda d: d.assign(ts=["soon"] * 4), "must hold epoch seconds or ISO 8601"),
        (lambda d: d.assign(ts=[np.inf, 1.0, 2.0, 3.0]), "'ts' has a missing or non-finite time"),
        (lambda d: d.assign(amount=["x", 1, 2, 3]), "'amount' must be a finite number at row 0"),
        (lambda d: d.iloc[:0], "no events"),
    ],
)
def test_hostile_events_are_one_line_errors(change, fragment):
    with pytest.raises(DataError) as info:
        build_features(customer_spec(["1d"], False), change(THREE))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_hostile_labels_are_one_line_errors():
    spec = spec_for(label_risk=[{"entity": "terminal", "windows": ["1d"], "stats": ["rate"]}])
    with pytest.raises(DataError, match="must be 0 or 1"):
        build_features(spec, TERMINAL.assign(y=2))
    dupes = pd.DataFrame({"transaction_id": ["e1", "e1"], "label": [1, 0], "labeled_at": [T0, T0]})
    with pytest.raises(DataError, match="'e1' twice"):
        build_features(spec, TERMINAL, dupes)
    with pytest.raises(DataError, match="when each label arrived"):
        build_features(spec, TERMINAL.drop(columns=["lab"]))


def test_enrich_accepts_iso_times_and_keeps_epoch_seconds():
    schema = FeatureSchema.load(RAW_SCHEMA_PATH)
    raw = generate_raw(2, rows_per_day=200, fraud_rate=0.05, seed=2)
    iso = raw.assign(timestamp=pd.to_datetime(raw["timestamp"], unit="s", utc=True).astype(str))
    a, b = enrich(schema, raw), enrich(schema, iso)
    np.testing.assert_allclose(a["timestamp"], b["timestamp"], rtol=0, atol=1e-6)
    assert list(a.columns[-len(schema.behavior.output_columns) :]) == schema.behavior.output_columns

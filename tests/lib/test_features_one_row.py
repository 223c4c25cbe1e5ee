"""The compiled one-transaction path (:mod:`fraud_lib.features.one_row`) against the batch path
(:func:`fraud_lib.features.online.compute_columns`), bit for bit, on generated histories with
everything that makes the order subtle: unsorted records, equal times, a retried
transaction's stored copies, events after the transaction, empty histories, unknown labels."""

from __future__ import annotations

import numpy as np
import pytest

from fraud_lib.features.kernels import EntityKernel, LabelKernel
from fraud_lib.features.offline import calendar_features, calendar_row
from fraud_lib.features.one_row import EntityPlan, RiskPlan
from fraud_lib.features.online import Batch, History, LabelHistory, compute_columns
from fraud_lib.features.online_store import RecordLayout, horizon_seconds
from fraud_lib.features.raw_table import RAW_SCHEMA_PATH
from fraud_lib.features.spec import BehaviorSpec
from fraud_lib.schema import FeatureSchema
from tests.lib.test_features_offline import STATS, spec_for

DAY = 86_400.0
T0 = 1_750_000_000.0


def _specs() -> list[BehaviorSpec]:
    every_stat = spec_for(
        aggregates=[
            {"entity": "customer", "column": "amount", "windows": ["1h", "1d", "30d"],
             "stats": STATS, "include_current": True},
            {"entity": "customer", "column": "amount", "windows": ["1d", "7d"], "stats": STATS,
             "include_current": False},
            {"entity": "terminal", "column": "amount", "windows": ["7d"], "stats": STATS,
             "include_current": False},
        ],
        time_since_previous=["customer", "terminal"], calendar=["hour", "weekend"],
        label_risk=[{"entity": "terminal", "windows": ["1d", "7d"],
                     "stats": ["frauds", "labeled", "rate"], "delay": "1d"},
                    {"entity": "customer", "windows": ["30d"], "stats": ["rate"]}],
    )  # fmt: skip
    return [FeatureSchema.load(RAW_SCHEMA_PATH).behavior, every_stat]


def _records(rng: np.random.Generator, layout: RecordLayout, n: int, t0: float) -> np.ndarray:
    """``n`` records around ``t0`` (a fifth after it), times and ids from small sets so that
    ties and repeated (time, id) pairs occur; sorted in time with probability one half."""
    times = t0 - rng.choice(rng.uniform(-5 * DAY, 40 * DAY, size=max(1, n // 2)), size=n)
    ids = rng.choice(np.arange(1, 6, dtype=np.uint64) * np.uint64(2**61), size=n)
    values = {c: rng.lognormal(3, 1.5, size=n) for c in layout.columns}
    records = layout.pack(times, ids, values)
    if rng.random() < 0.5:
        records = records[np.argsort(records["t"], kind="stable")]
    return records


def _labels(rng: np.random.Generator, n: int, t0: float) -> LabelHistory:
    t = t0 - rng.uniform(-DAY, 40 * DAY, size=n)
    known = t + rng.uniform(0, 10 * DAY, size=n)
    known[rng.random(n) < 0.2] = np.nan
    y = (rng.random(n) < 0.3).astype(np.float64)
    return LabelHistory(np.zeros(n, np.int64), t, known, y)


def _case(spec: BehaviorSpec, seed: int):
    rng = np.random.default_rng(seed)
    layout = RecordLayout.for_spec(spec)
    t0 = T0 + rng.uniform(0, 7 * DAY)
    x0 = {c: np.array([rng.lognormal(3, 1.5)]) for c in layout.columns}
    batch = Batch(np.array([t0]), np.array([np.uint64(3 * 2**61)]),
                  {n: np.array(["k"], dtype=object) for n, _ in spec.entities}, x0)  # fmt: skip
    sizes = {n: int(rng.choice([0, 1, 2, 7, 40, 300])) for n, _ in spec.entities}
    records = {n: _records(rng, layout, sizes[n], t0) for n, _ in spec.entities}
    labels = {n: _labels(rng, int(rng.choice([0, 1, 5, 60])), t0) for n, _ in spec.entities}
    return batch, records, labels, layout


@pytest.mark.parametrize("spec_index", [0, 1])
@pytest.mark.parametrize("seed", range(60))
def test_one_row_kernels_equal_the_batch_path_bit_for_bit(spec_index, seed):
    spec = _specs()[spec_index]
    batch, records, labels, layout = _case(spec, seed)
    histories = {n: History(np.zeros(len(r), np.int64), r) for n, r in records.items()}
    want = compute_columns(spec, batch, histories, labels)
    t0 = float(batch.times[0])
    x0 = np.array([batch.values[c][0] for c in layout.columns])
    cutoff = t0 - horizon_seconds(spec)
    got: dict[str, float] = {}
    for name, _ in spec.entities:
        plan = EntityPlan.build(spec, name, layout.columns)
        blob = records[name].tobytes() or None
        values, stale = plan.compute(blob, layout.width, t0, x0, cutoff)
        got.update(zip(plan.names, values.tolist(), strict=True))
        assert stale == ((records[name]["t"] < cutoff).sum() > 1)
        if any(r.entity == name for r in spec.label_risk):
            risk = RiskPlan.build(spec, name)
            lab = labels[name]
            rows = np.column_stack([lab.t, lab.known, lab.y])
            got.update(zip(risk.names, risk.compute(rows, t0).tolist(), strict=True))
    for column, expected in want.items():
        if column.startswith("calendar"):
            continue
        assert np.float64(got[column]).tobytes() == expected[0].tobytes(), (
            column, got[column], expected[0])  # fmt: skip
    assert set(got) | {c for c in want if c.startswith("calendar")} == set(want)


def test_a_retried_transactions_stored_copy_is_not_counted_twice():
    spec = _specs()[1]
    layout = RecordLayout.for_spec(spec)
    plan = EntityPlan.build(spec, "customer", layout.columns)
    one = layout.pack(np.array([T0, T0 + 60]), np.array([1, 2], np.uint64),
                      {"amount": np.array([10.0, 30.0])})  # fmt: skip
    twice = np.concatenate([one, one[1:]])  # the second event appended again by a retry
    x0 = np.array([5.0])
    a, _ = plan.compute(one.tobytes(), 3, T0 + 120, x0, -np.inf)
    b, _ = plan.compute(twice.tobytes(), 3, T0 + 120, x0, -np.inf)
    assert a.tobytes() == b.tobytes()
    count = plan.names.index("customer__amount__count__1d")
    assert a[count] == 2.0


def test_the_compiled_kernels_refuse_arrays_they_would_read_outside_of():
    """The C loops check no index, so the plans and the arrays of each call are checked."""
    f8, i8, u1 = np.float64, np.int64, np.uint8
    ones, zero = np.ones(1, f8), np.zeros(1, i8)
    with pytest.raises(ValueError, match="window or column it does not have"):
        EntityKernel(ones, zero, np.ones(1, i8), np.ones(1, u1), zero, False)  # window 1 of 1
    with pytest.raises(ValueError, match="unequal lengths"):
        EntityKernel(ones, zero, np.zeros(2, i8), np.ones(1, u1), zero, False)
    kernel = EntityKernel(ones, np.array([1], i8), zero, np.ones(1, u1), zero, True)
    assert kernel.outputs == 2
    records = np.zeros((2, 3))  # time, id hash and one column: the plan reads column 1
    with pytest.raises(ValueError, match="records of 1 columns for a plan that needs 2"):
        kernel.compute(records, T0, np.ones(2), -np.inf, np.empty(2))
    with pytest.raises(ValueError, match="a record starts with its time and id hash"):
        EntityKernel(ones, zero, zero, np.ones(1, u1), zero, False).compute(
            np.zeros((2, 1)), T0, np.ones(1), -np.inf, np.empty(1)
        )
    with pytest.raises(ValueError, match="out holds 1 values, not 2"):
        kernel.compute(np.zeros((2, 4)), T0, np.ones(2), -np.inf, np.empty(1))
    with pytest.raises(ValueError, match="does not have"):
        LabelKernel(np.zeros(1), ones, np.array([1], i8), zero)
    labels = LabelKernel(np.zeros(1), ones * DAY, zero, zero)
    with pytest.raises(ValueError, match="3 columns"):
        labels.compute(np.zeros((1, 2)), T0, np.empty(1))
    out = np.empty(1)
    labels.compute(np.array([[T0 - 60, T0 - 30, 1.0]]), T0, out)
    assert out[0] == 1.0


def test_many_events_at_one_time_are_ordered_by_id_hash_whatever_their_stored_order():
    """A client may send thousands of transactions with one timestamp for one card: the
    kernel orders them by (time, id hash) with one sort (an insertion sort took ~0.3 s for
    10,000 of them, under the GIL) and gives the features of any stored order."""
    spec = _specs()[1]
    layout = RecordLayout.for_spec(spec)
    plan = EntityPlan.build(spec, "customer", layout.columns)
    rng = np.random.default_rng(7)
    n = 3000
    hashes = rng.integers(0, 2**63, n).astype(np.uint64)
    amounts = rng.uniform(1, 500, n)
    records = layout.pack(np.full(n, T0), hashes, {"amount": amounts})
    order = np.argsort(hashes)
    x0 = np.array([42.0])
    stored, _ = plan.compute(records.tobytes(), 3, T0 + 60, x0, -np.inf)
    by_hash, _ = plan.compute(records[order].tobytes(), 3, T0 + 60, x0, -np.inf)
    assert stored.tobytes() == by_hash.tobytes()
    assert stored[plan.names.index("customer__amount__count__1d")] == n


def test_calendar_of_one_time_equals_the_vectorised_calendar():
    spec = _specs()[0]
    rng = np.random.default_rng(0)
    times = np.concatenate([rng.uniform(-3e9, 4e9, 2000), np.floor(rng.uniform(0, 2e9, 2000)),
                            np.arange(0, 8 * DAY, 3600.0) + T0, [0.0, -1.0, 86_399.999]])  # fmt: skip
    want = calendar_features(spec, times)
    for i, t in enumerate(times.tolist()):
        got = calendar_row(spec, t)
        assert {c: np.float64(v).tobytes() for c, v in got.items()} == {
            c: v[i].tobytes() for c, v in want.items()}, t  # fmt: skip

"""Raw-transaction validation (serving/raw_input.py): the column-wise check of clean batches
gives exactly what the record-by-record check gives, on clean and on hostile batches, and
numbers beyond the float range are refused naming the field."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_lib.features.raw_table import RAW_SCHEMA_PATH
from fraud_lib.input_rules import TimestampBounds
from fraud_lib.schema import FeatureSchema
from serving import raw_input
from serving.raw_input import COLUMN_CHECK_ROWS, validate_raw
from serving.validation import ApiError

BASE = FeatureSchema.load(RAW_SCHEMA_PATH)
WITH_CATEGORY = FeatureSchema.from_dict({**BASE.to_dict(), "categorical": ["channel"]})
BOUNDS = TimestampBounds()
NOW = time.time()
HUGE = 10**400  # JSON allows it (4,300 digits); no float holds it

# values a hostile client sends in place of a clean one, per field
HOSTILE: dict[str, list[Any]] = {
    "timestamp": [
        None,
        True,
        "yesterday",
        "2024-05-01T12:00:00Z",
        4e9,
        -1.0,
        float("nan"),
        float("inf"),
        HUGE,
        int(NOW),
        946684800.0,
        946684799.5,
        "x" * 50,
        [1.0],
    ],
    "customer_id": [
        None,
        "",
        "x" * 201,
        "a\x00b",
        "caf\u00e9",
        "\ud800",
        7,
        -3,
        True,
        1.5,
        HUGE,
        {"a": 1},
    ],
    "terminal_id": [None, "", 12, "t\u00e9", "x" * 200],
    "amount": [None, "12", True, float("nan"), float("-inf"), HUGE, -HUGE, 12, 10**20, 1e308],
    "transaction_id": [None, "", 5, "dup", "x" * 201, "\ud800", 2.5, False],
    "channel": [None, 3, "web", "", True],
    "is_fraud": [1, "anything"],
    "V1": [0.5],
}


def _clean(i: int, schema: FeatureSchema) -> dict[str, Any]:
    rec = {"transaction_id": f"t-{i}", "timestamp": NOW - 1000.0 + i, "customer_id": f"c-{i % 5}",
           "terminal_id": f"m-{i % 3}", "amount": 10.0 + i}  # fmt: skip
    if schema.categorical:
        rec["channel"] = "app"
    return rec


def _outcome(schema: FeatureSchema, payload: Any) -> tuple:
    """What validate_raw gives: the error (message and fields) or the validated batch."""
    try:
        txs, times = validate_raw(payload, schema, 10_000, BOUNDS)
    except ApiError as exc:
        return ("error", exc.message, exc.fields)
    return ("ok", txs.batch, txs.ids, txs.event_times, txs.records, times.tolist())


def _both(schema: FeatureSchema, payload: Any, monkeypatch) -> tuple[tuple, tuple]:
    """(outcome as served, outcome of the record-by-record check alone)."""
    served = _outcome(schema, payload)
    with monkeypatch.context() as m:
        m.setattr(raw_input, "COLUMN_CHECK_ROWS", 10**9)
        alone = _outcome(schema, payload)
    return served, alone


@pytest.mark.parametrize("schema", [BASE, WITH_CATEGORY], ids=["numeric", "categorical"])
def test_a_clean_batch_takes_the_column_check_and_gets_the_record_checks_answer(
    schema, monkeypatch
):
    items = [_clean(i, schema) for i in range(COLUMN_CHECK_ROWS + 5)]
    items[3]["amount"] = 12  # ints stay ints, as sent
    items[4]["timestamp"] = int(NOW) - 5
    del items[5]["transaction_id"]
    payload = {"transactions": items}
    span = (BOUNDS.earliest.timestamp(), BOUNDS.latest().timestamp())
    assert raw_input._clean_columns(schema, items, span) is not None
    served, alone = _both(schema, payload, monkeypatch)
    assert served == alone and served[0] == "ok"
    assert served[2][5] is None and served[4][3]["amount"] == 12
    assert list(served[4][0]) == ["timestamp", "customer_id", "terminal_id", "amount",
                                  *schema.categorical]  # fmt: skip


SINGLE_CHANGES = [(f, v) for f, values in HOSTILE.items() for v in values] + [
    (f, "drop") for f in HOSTILE
]


@pytest.mark.parametrize("schema", [BASE, WITH_CATEGORY], ids=["numeric", "categorical"])
def test_every_hostile_value_gets_the_record_checks_answer(schema, monkeypatch):
    for field, value in SINGLE_CHANGES:
        for row in (0, COLUMN_CHECK_ROWS - 1):
            items = [_clean(i, schema) for i in range(COLUMN_CHECK_ROWS)]
            if value == "drop":
                items[row].pop(field, None)
            elif field == "transaction_id" and value == "dup":
                items[row][field] = items[(row + 1) % len(items)][field]
            else:
                items[row][field] = value
            served, alone = _both(schema, {"transactions": items}, monkeypatch)
            assert served == alone, (field, value, row)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    schema=st.sampled_from([BASE, WITH_CATEGORY]),
    size=st.integers(COLUMN_CHECK_ROWS, COLUMN_CHECK_ROWS + 8),
    changes=st.lists(
        st.tuples(
            st.integers(0, COLUMN_CHECK_ROWS + 7),
            st.sampled_from(sorted(HOSTILE)),
            st.integers(0, 13),
            st.booleans(),
        ),
        max_size=3,
    ),
    not_an_object=st.booleans(),
)
def test_the_column_check_never_changes_the_answer(schema, size, changes, not_an_object,
                                                   monkeypatch):  # fmt: skip
    items: list[Any] = [_clean(i, schema) for i in range(size)]
    for row, field, pick, drop in changes:
        rec = items[row % size]
        if drop and field in rec:
            del rec[field]
        else:
            values = HOSTILE[field]
            rec[field] = values[pick % len(values)]
    if not_an_object and not changes:
        items[-1] = ["not", "an", "object"]
    served, alone = _both(schema, {"transactions": items}, monkeypatch)
    assert served == alone


@pytest.mark.parametrize("field", ["amount", "timestamp"])
def test_numbers_beyond_the_float_range_are_a_400_naming_the_field(field, monkeypatch):
    rec = {**_clean(0, BASE), field: HUGE}
    with pytest.raises(ApiError) as one:
        validate_raw(rec, BASE, 100, BOUNDS)
    assert one.value.status == 400 and field in one.value.fields
    batch = [_clean(i, BASE) for i in range(COLUMN_CHECK_ROWS)]
    batch[7][field] = -HUGE
    with pytest.raises(ApiError) as many:
        validate_raw({"transactions": batch}, BASE, 100, BOUNDS)
    assert f"transactions[7].{field}" in many.value.fields


def test_duplicate_ids_in_a_large_batch_are_named(monkeypatch):
    batch = [_clean(i, BASE) for i in range(COLUMN_CHECK_ROWS + 1)]
    batch[-1]["transaction_id"] = batch[2]["transaction_id"]
    served, alone = _both(BASE, {"transactions": batch}, monkeypatch)
    assert served == alone
    assert served[2][f"transactions[{COLUMN_CHECK_ROWS}].transaction_id"] == (
        "duplicate of transactions[2]"
    )

"""Parquet label files whose id column is not a scalar column."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fraud_lib.errors import DataError
from fraud_lib.label_files import load_labels


@pytest.mark.parametrize(
    "ids",
    [pa.array([["t-1"], ["t-2"]]), pa.array([{"id": "t-1"}, {"id": "t-2"}])],
    ids=["list", "struct"],
)
def test_a_nested_id_column_is_refused(tmp_path, ids):
    """Red-team finding: a parquet list<string> id column ``[["t-1"], ["t-2"]]`` was
    unwrapped in silence (numpy's ``.item()`` of a one-element array) and its labels stored."""
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"transaction_id": ids, "label": [1, 0]}), path)
    with pytest.raises(DataError, match=r"row 0 has transaction_id .* which must be a string"):
        load_labels(path)


def test_an_integer_id_column_is_taken_as_text(tmp_path):
    """Integer ids stay accepted, as by the API."""
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"transaction_id": [7, 8], "label": [1, 0]}), path)
    assert [r["transaction_id"] for r in load_labels(path)] == ["7", "8"]


def test_a_missing_column_message_names_it_once(tmp_path):
    """Red-team finding: the message read 'missing column(s) label; ; expected ...'."""
    path = tmp_path / "labels.csv"
    path.write_text("transaction_id\nt-1\n")
    with pytest.raises(DataError) as err:
        load_labels(path)
    assert str(err.value).endswith(
        "labels.csv: missing column(s) label; expected transaction_id,label[,labeled_at]"
    )

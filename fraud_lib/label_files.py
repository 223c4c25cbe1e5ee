"""Label files for ``fraud labels import``: a CSV (UTF-8, optionally gzipped) or parquet table
with ``transaction_id``, ``label`` (0/1) and optionally ``labeled_at``.

Every value is checked with the rules the API applies (:mod:`fraud_lib.input_rules`): ids of 1
to 200 characters without NUL, timestamps in ISO 8601 inside the accepted range. The first bad
value raises :class:`DataError` naming its row (0 = the first data row) and what to fix.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraud_lib.data import ID_COLUMN, _file_kind, _read_table
from fraud_lib.errors import DataError
from fraud_lib.input_rules import TimestampBounds, id_error, shown

LABEL_COLUMNS = (ID_COLUMN, "label", "labeled_at")


def _check_text(p: Path) -> None:
    """Refuse a CSV that is not UTF-8, holds a NUL byte (the CSV parser would cut the value
    at the NUL and store ``ab`` for ``ab\\0cd``), naming the line, or names a column twice
    in its header (pandas would read the second ``label`` as ``label.1`` and ignore it)."""
    try:
        raw = gzip.decompress(p.read_bytes()) if p.name.lower().endswith(".gz") else p.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{p} could not be read: {exc}") from None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{p}: line {line} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "save the file as UTF-8"
        ) from None
    if (at := raw.find(b"\x00")) >= 0:
        line = raw.count(b"\n", 0, at) + 1
        raise DataError(f"{p}: line {line} holds a NUL byte; ids and values cannot contain NUL")
    end = raw.find(b"\n")
    header = next(csv.reader(io.StringIO((raw if end < 0 else raw[:end]).decode())), [])
    if twice := sorted({name for name in header if header.count(name) > 1}):
        raise DataError(
            f"{p}: the header names {', '.join(map(repr, twice))} more than once; keep one column each"
        )


def _missing(value: Any) -> bool:
    """True for an empty cell: None, NaN, NaT or a blank string."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or bool(pd.isna(value))


def _labels(p: Path, column: pd.Series) -> list[int]:
    """The label column as 0/1 ints, as strict as the API: the text ``0``/``1`` (CSV) or an
    integer column (parquet); ``1.0``, ``yes`` or an empty cell raise :class:`DataError`."""
    if pd.api.types.is_integer_dtype(column.dtype):
        numbers, bad = column, ~column.isin([0, 1])
    else:
        text = column.map(lambda v: v.strip() if isinstance(v, str) else v)
        bad = ~text.isin(["0", "1"])
        numbers = text.where(~bad, "0")
    if bad.any():
        row = int(bad.to_numpy().argmax())
        value = column.iloc[row]
        has = "no label" if _missing(value) else f"label {shown(value)}"
        raise DataError(f"{p}: row {row} has {has}; labels must be 0 or 1")
    return numbers.astype(int).tolist()


def _check_columns(p: Path, df: pd.DataFrame) -> None:
    """Refuse missing and unknown columns (the API refuses unknown fields too: a misspelt
    ``labelled_at`` would otherwise be dropped in silence)."""
    missing = [c for c in (ID_COLUMN, "label") if c not in df.columns]
    unknown = [str(c) for c in df.columns if c not in LABEL_COLUMNS]
    parts = [f"missing column(s) {', '.join(missing)}"] if missing else []
    parts += [f"unknown column(s) {', '.join(unknown)}"] if unknown else []
    if parts:
        what = "; ".join(parts)
        raise DataError(f"{p}: {what}; expected transaction_id,label[,labeled_at]")


def _transaction_id(p: Path, row: int, value: Any) -> str:
    if isinstance(value, np.generic):  # a numpy integer from a parquet column
        value = value.item()
    if _missing(value):
        raise DataError(f"{p}: row {row} has an empty transaction_id")
    value = value.strip() if isinstance(value, str) else value
    if err := id_error(value):
        raise DataError(f"{p}: row {row} has transaction_id {shown(value)}, which {err}")
    return str(value)


def load_labels(path: str | Path, bounds: TimestampBounds | None = None) -> list[dict[str, Any]]:
    """Read a label file into rows for :func:`fraud_lib.store.upsert_labels`.

    ``labeled_at`` must be inside ``bounds`` (the default range when not given; pass
    ``settings.timestamp_bounds``); an empty one is left out (the store records the import
    time). A missing column or any bad value raises :class:`DataError` naming the row.
    """
    bounds = bounds or TimestampBounds()
    p = Path(path)
    if _file_kind(p) == "csv" and p.is_file():
        _check_text(p)
    df = _read_table(p, list(LABEL_COLUMNS))  # as text: every value is checked here
    _check_columns(p, df)
    labels = _labels(p, df["label"])
    times = df["labeled_at"] if "labeled_at" in df.columns else [None] * len(df)
    out, latest = [], bounds.latest()
    for row, (tx, when) in enumerate(zip(df[ID_COLUMN], times, strict=True)):
        item: dict[str, Any] = {"transaction_id": _transaction_id(p, row, tx), "label": labels[row]}
        if not _missing(when):
            try:
                item["labeled_at"] = bounds.parse(
                    when.strip() if isinstance(when, str) else when, "labeled_at", latest=latest
                )
            except DataError as exc:
                raise DataError(f"{p}: row {row}: {exc}") from None
        out.append(item)
    return out

"""Client-side decoding of the prediction log's features JSON into float64 columns.

Postgres sends each row's features document as JSON text (no server-side expansion); every
batch of texts is joined into newline-delimited JSON and parsed at once by pyarrow's JSON
reader (C++, multi-threaded), one float64 array per key. At 1M rows this is several times
faster than ``json_to_record`` in Postgres, whose per-row expansion dominated the ingest.

Only documents whose values are all numbers or null decode here: the usual case, since the
service validates payloads against a numeric schema. Anything else (a text or boolean value, a
nested object, a repeated key, a raw newline inside the text, a number too big for a double)
raises :class:`NotNumeric`, and the caller reads the window again with the server-side
expansion, which keeps its exact semantics (text columns, ...) for such stored rows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

# Larger than any sane features document: a line straddling two blocks fails to parse.
BLOCK_BYTES = 4 << 20


class NotNumeric(ValueError):
    """A batch holds a document this decoder does not turn into float64 columns."""


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)


class FeatureColumns:
    """Batches of features JSON texts, accumulated as one float64 array per key (NaN where a
    row lacks the key or holds null); :meth:`take` gives them for all rows added."""

    def __init__(self) -> None:
        self._sizes: list[int] = []
        self._parts: dict[str, dict[int, np.ndarray]] = {}

    def add(self, texts: Sequence[str]) -> None:
        """Decode one batch; :class:`NotNumeric` when any document is not all numbers/null."""
        if not texts:
            return
        batch = len(self._sizes)
        self._sizes.append(len(texts))
        options = pj.ReadOptions(block_size=BLOCK_BYTES)
        try:
            table = pj.read_json(io.BytesIO("\n".join(texts).encode()), read_options=options)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise NotNumeric(str(exc)) from None
        if table.num_rows != len(texts):
            raise NotNumeric(f"{table.num_rows} documents parsed from {len(texts)} rows")
        for name, column in zip(table.column_names, table.columns, strict=True):
            if not _is_numeric(column.type):
                raise NotNumeric(f"key {name!r} holds {column.type} values")
            values = pc.cast(column, pa.float64(), safe=False)
            self._parts.setdefault(name, {})[batch] = values.to_numpy(zero_copy_only=False)

    def names(self) -> list[str]:
        """Every key seen, in order of first appearance."""
        return list(self._parts)

    def take(self, key: str) -> np.ndarray:
        """The float64 values of ``key`` over every row added (NaN where missing); the
        decoder lets go of its batches of ``key``."""
        parts = self._parts.pop(key)
        return np.concatenate([parts.get(i, np.full(n, np.nan)) for i, n in enumerate(self._sizes)])

"""Arrow IPC bodies for the /v1/score tests: a valid batch from generated rows and every
hostile variant (tests/serving/test_arrow.py runs them in-process and under gunicorn)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from fraud_lib.schema import FeatureSchema
from serving.arrow.stream import _child, _field

SCHEMA = FeatureSchema()
ARROW = "application/vnd.apache.arrow.stream"
MAX_BATCH = 5  # the limits of the service these cases are sent to
MAX_BODY = 2 * 1024 * 1024  # holds 1,100 empty record batches of the ULB schema


def table_of(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows (request records of the generated frame) as a table: transaction_id, Time and
    the features."""
    columns = ["transaction_id", SCHEMA.time, *SCHEMA.features]
    return pa.table({c: [r[c] for r in rows] for c in columns})


def stream(
    *batches: pa.RecordBatch | pa.Table, schema: pa.Schema | None = None, **opts: Any
) -> bytes:
    """The batches (or tables) written as one IPC stream."""
    schema = schema or batches[0].schema
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(**opts)) as writer:
        for batch in batches:
            writer.write(batch)
    return sink.getvalue().to_pybytes()


def replace(table: pa.Table, name: str, array: Any) -> pa.Table:
    """``table`` with column ``name`` replaced by ``array`` (same position)."""
    return table.set_column(table.schema.get_field_index(name), name, array)


def with_value(table: pa.Table, name: str, row: int, value: Any) -> pa.Table:
    values = table.column(name).to_pylist()
    values[row] = value
    return replace(table, name, pa.array(values, table.schema.field(name).type))


def declared_rows(body: bytes, rows: int) -> bytes:
    """``body`` (a stream of one record batch) with the batch's metadata claiming ``rows``."""
    reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(body))
    reader.read_next_message()
    metadata = reader.read_next_message().metadata.to_pybytes()
    header = _child(metadata, struct.unpack_from("<I", metadata, 0)[0], 2)
    at = _field(metadata, header, 0)
    patched = bytearray(metadata)
    struct.pack_into("<q", patched, at, rows)
    start = body.index(metadata)
    return body[:start] + bytes(patched) + body[start + len(metadata) :]


def file_format(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def hostile_cases(rows: list[dict[str, Any]]) -> dict[str, tuple[bytes, str, int, str, Callable]]:
    """name -> (body, content type, status, error code, check of the error body) for ``rows``
    (at least 3 request records); each one is refused."""
    good = table_of(rows[:3])
    body = stream(good)
    v4 = good.column("V4").to_pylist()
    empty = pa.RecordBatch.from_pylist([], schema=good.schema)

    def field(key: str, text: str) -> Callable:
        return lambda e: text in e["fields"].get(key, "")

    def message(text: str) -> Callable:
        return lambda e: text in e["message"]

    big = table_of((rows * (MAX_BODY // 200))[: MAX_BODY // 200])  # ~250 bytes a row
    return {
        "truncated": (body[:-40], ARROW, 400, "invalid_arrow", message("not a valid Arrow")),
        "no end-of-stream marker": (body[:-8], ARROW, 400, "invalid_arrow",
                                    message("end-of-stream")),
        "bytes after the end": (body + b"\x00" * 8, ARROW, 400, "invalid_arrow",
                                message("after the end-of-stream")),
        "garbage": (np.random.default_rng(3).bytes(2000), ARROW, 400, "invalid_arrow",
                    message("not a valid Arrow")),
        "empty body": (b"", ARROW, 400, "invalid_arrow", message("empty")),
        "JSON sent as Arrow": (b'{"transactions": []}', ARROW, 400, "invalid_arrow",
                               message("not a valid Arrow")),
        "file format": (file_format(good), ARROW, 400, "invalid_arrow", message("file format")),
        "compressed": (stream(good, compression="zstd"), ARROW, 400, "invalid_arrow",
                       message("compressed")),
        "missing column": (stream(good.drop_columns(["V7"])), ARROW, 400, "invalid_input",
                           field("V7", "missing")),
        "extra column": (stream(good.append_column("colour", pa.array(["r"] * 3))), ARROW, 400,
                         "invalid_input", field("colour", "unknown column")),
        "duplicate column": (stream(good.append_column("V1", good.column("V1"))), ARROW, 400,
                             "invalid_input", field("V1", "duplicate")),
        "string feature": (stream(replace(good, "V4", pa.array([str(v) for v in v4]))), ARROW,
                           400, "invalid_input", field("V4", "must be float64, got string")),
        "int feature": (stream(replace(good, "V4", pa.array([1, 2, 3]))), ARROW, 400,
                        "invalid_input", field("V4", "got int64")),
        "bool feature": (stream(replace(good, "V4", pa.array([True, False, True]))), ARROW, 400,
                         "invalid_input", field("V4", "got bool")),
        "float32 feature": (stream(replace(good, "V4", pa.array(v4, pa.float32()))), ARROW, 400,
                            "invalid_input", field("V4", "got float")),
        "dictionary feature": (stream(replace(good, "V4", pa.array(v4).dictionary_encode())),
                               ARROW, 400, "invalid_input", field("V4", "dictionary")),
        "nested list feature": (stream(replace(good, "V4", pa.array([[v] for v in v4]))), ARROW,
                                400, "invalid_input", field("V4", "got list")),
        "nested struct feature": (stream(replace(good, "V4", pa.array([{"x": v} for v in v4]))),
                                  ARROW, 400, "invalid_input", field("V4", "got struct")),
        "null feature": (stream(with_value(good, "V4", 2, None)), ARROW, 400, "invalid_input",
                         field("transactions[2].V4", "got null")),
        "NaN feature": (stream(with_value(good, "V4", 1, float("nan"))), ARROW, 400,
                        "invalid_input", field("transactions[1].V4", "finite")),
        "infinite feature": (stream(with_value(good, "Amount", 0, float("inf"))), ARROW, 400,
                             "invalid_input", field("transactions[0].Amount", "finite")),
        "infinite time": (stream(with_value(good, "Time", 2, float("-inf"))), ARROW, 400,
                          "invalid_input", field("transactions[2].Time", "finite")),
        "integer ids": (stream(replace(good, "transaction_id", pa.array([1, 2, 3]))), ARROW, 400,
                        "invalid_input", field("transaction_id", "must be utf8")),
        "duplicate ids": (stream(with_value(good, "transaction_id", 2, rows[0]["transaction_id"])),
                          ARROW, 400, "invalid_input",
                          field("transactions[2].transaction_id", "duplicate of transactions[0]")),
        "empty id": (stream(with_value(good, "transaction_id", 1, "")), ARROW, 400,
                     "invalid_input", field("transactions[1].transaction_id", "1 to 200")),
        "id with NUL": (stream(with_value(good, "transaction_id", 0, "a\x00b")), ARROW, 400,
                        "invalid_input", field("transactions[0].transaction_id", "NUL")),
        "zero rows": (stream(empty), ARROW, 400, "invalid_input", field("transactions", "row")),
        "zero rows in several batches": (stream(empty, empty, empty), ARROW, 400,
                                         "invalid_input", field("transactions", "row")),
        "more rows than the batch limit": (stream(table_of(rows[: MAX_BATCH + 1])), ARROW, 413,
                                           "batch_too_large", message("FRAUD_MAX_BATCH")),
        "more rows over several batches": (stream(good, good), ARROW, 413, "batch_too_large",
                                           message("6 transactions")),
        "a batch declaring 10**12 rows": (declared_rows(body, 10**12), ARROW, 413,
                                          "batch_too_large", message("1000000000000")),
        "a batch declaring -1 rows": (declared_rows(body, -1), ARROW, 400, "invalid_arrow",
                                      message("not a valid Arrow")),
        "too many record batches": (stream(*[empty] * 1100, good), ARROW, 400, "invalid_arrow",
                                    message("record batches")),
        "oversize body": (stream(big), ARROW, 413, "payload_too_large",
                          message("FRAUD_MAX_BODY_BYTES")),
        "another media type": (body, "application/octet-stream", 415, "unsupported_media_type",
                               message(ARROW)),
    }  # fmt: skip

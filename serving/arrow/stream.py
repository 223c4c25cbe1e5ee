"""Reading an Arrow IPC stream body message by message, each checked before pyarrow decodes it.

A stream is a schema message, record batch messages and the end-of-stream marker. Before a
record batch is decoded, its row count and compression are read from its flatbuffer metadata
(``Message.header`` -> ``RecordBatch.length`` and ``.compression``, format/Message.fbs of the
Arrow specification; pyarrow verifies the flatbuffer when it reads the message but does not
expose these fields). So a stream declaring more rows than the batch limit is a 413 before
anything is allocated for it, and compressed buffers (LZ4/ZSTD: a few kilobytes may expand
to gigabytes) are refused rather than expanded. Uncompressed buffers are zero-copy views of
the body. Dictionary batches are refused (no column may be dictionary-encoded), as are a
stream cut short, bytes after the end-of-stream marker and the Arrow *file* format.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pyarrow as pa

from serving.validation import ApiError, batch_too_large

ARROW_STREAM = "application/vnd.apache.arrow.stream"
FILE_MAGIC = b"ARROW1"  # the first bytes of the Arrow IPC file format
END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
MAX_RECORD_BATCHES = 1024
MAX_DETAIL = 300  # characters of a pyarrow error message quoted in a 400
_RECORD_BATCH = 3  # MessageHeader union: Schema = 1, DictionaryBatch = 2, RecordBatch = 3
_ARROW_ERRORS = (pa.ArrowException, OSError, ValueError, struct.error)


def invalid_stream(detail: str) -> ApiError:
    """The 400 of a body that is not a readable Arrow IPC stream."""
    return ApiError(
        400, "invalid_arrow", f"the body is not a valid Arrow IPC stream: {detail[:MAX_DETAIL]}"
    )


def _field(buf: bytes, table: int, index: int) -> int | None:
    """Where field ``index`` of the flatbuffer table at ``table`` is, or None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    entry = 4 + 2 * index
    if entry >= struct.unpack_from("<H", buf, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", buf, vtable + entry)[0]
    return table + offset if offset else None


def _child(buf: bytes, table: int, index: int) -> int | None:
    """The table that offset field ``index`` of ``table`` points to, or None if absent."""
    at = _field(buf, table, index)
    return None if at is None else at + struct.unpack_from("<I", buf, at)[0]


def record_batch_header(metadata: bytes) -> tuple[int, bool]:
    """(rows, compressed) of a record batch message's flatbuffer metadata."""
    root = struct.unpack_from("<I", metadata, 0)[0]
    header = _child(metadata, root, 2)  # Message.header
    if header is None:
        raise ValueError("a record batch message without its header")
    at = _field(metadata, header, 0)  # RecordBatch.length (absent: 0)
    rows = struct.unpack_from("<q", metadata, at)[0] if at is not None else 0
    return rows, _field(metadata, header, 3) is not None  # RecordBatch.compression


def _check_end(body: bytes, last_end: int, end: int) -> None:
    """The stream ended with the end-of-stream marker, right at the end of the body."""
    if end != len(body):
        raise invalid_stream(f"{len(body) - end} bytes after the end-of-stream marker")
    if last_end != len(body) - len(END_OF_STREAM) or not body.endswith(END_OF_STREAM):
        raise invalid_stream(
            "it does not end with the end-of-stream marker (cut short? close the writer)"
        )


def _next_batch(
    reader: pa.ipc.MessageReader, schema: pa.Schema, rows: int, max_rows: int
) -> pa.RecordBatch | None:
    """The next record batch of the stream (None at its end), refused if it would take the
    rows beyond ``max_rows`` or is compressed."""
    try:
        message = reader.read_next_message()
    except StopIteration:
        return None
    if message.type != "record batch":
        raise invalid_stream(
            f"a {message.type} message after the schema; dictionary-encoded columns are not "
            "accepted (decode them first)"
        )
    n, compressed = record_batch_header(message.metadata.to_pybytes())
    if rows + n > max_rows:
        raise batch_too_large(rows + n, "transactions", max_rows)
    if compressed:
        raise invalid_stream("its buffers are compressed; send them uncompressed (the default)")
    batch = pa.ipc.read_record_batch(message, schema)
    batch.validate(full=True)  # offsets, lengths, UTF-8 of strings
    return batch


def read_stream(
    body: bytes, max_rows: int, check_schema: Callable[[pa.Schema], None]
) -> list[pa.RecordBatch]:
    """The record batches of the stream ``body``, its schema first passed to ``check_schema``
    (which raises to refuse it). 400 for a body that is not a whole, uncompressed stream or
    holds more than :data:`MAX_RECORD_BATCHES` batches; 413 beyond ``max_rows`` rows."""
    if body.startswith(FILE_MAGIC):
        raise invalid_stream(
            f"it is the Arrow IPC file format; send the stream format ({ARROW_STREAM}, "
            "pyarrow.ipc.new_stream)"
        )
    source = pa.BufferReader(pa.py_buffer(body))
    batches: list[pa.RecordBatch] = []
    try:
        reader = pa.ipc.MessageReader.open_stream(source)
        first = reader.read_next_message()
        if first.type != "schema":
            raise invalid_stream(f"it starts with a {first.type} message, not the schema")
        schema = pa.ipc.read_schema(first)
        check_schema(schema)
        rows, last_end = 0, source.tell()
        while (batch := _next_batch(reader, schema, rows, max_rows)) is not None:
            if len(batches) == MAX_RECORD_BATCHES:
                raise invalid_stream(
                    f"more than {MAX_RECORD_BATCHES} record batches; write larger ones"
                )
            batches.append(batch)
            rows, last_end = rows + batch.num_rows, source.tell()
        _check_end(body, last_end, source.tell())
    except StopIteration:  # no message at all
        raise invalid_stream("the body is empty") from None
    except _ARROW_ERRORS as exc:
        raise invalid_stream(str(exc) or type(exc).__name__) from None
    return batches

"""The spool file format and segment reading of the prediction log (:mod:`serving.prediction_log`).

Files in ``settings.spool_dir``, for a writer id ``W`` (pid + random, new at every start)::

    W.lock            flock()ed by the live writer for its whole life
    W.000001.spool    segments: one line per prediction; a new one after SEGMENT_BYTES
    W.offset          "<segment> <byte offset>" shipped so far, rewritten after each commit
    rejected/W.spool  lines Postgres refused (never expected; kept, counted, logged)

A line is one request's predictions: a :class:`Block` as JSON, then LF (msgspec writes and
reads it; floats as their shortest round-trip text, so they come back exactly). The features
of a numeric schema are the request's float64 matrix as bytes (base64 in the JSON): written in
~2 ms for 10,000 predictions where a JSON object per prediction took ~25 ms; the shipper turns
them into the JSON objects Postgres stores, off the request path. A raw transaction's line has
both: its raw fields as one JSON object per prediction and the computed features as the matrix;
the shipper joins them into one document. Any other schema's features are one JSON object per
prediction.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

log = logging.getLogger(__name__)

READ_CHUNK = 4 * 1024 * 1024
SEGMENT_NAME = re.compile(r"^(?P<wid>[A-Za-z0-9-]+)\.(?P<seq>\d{6,})\.spool$")


class Block(msgspec.Struct, gc=False):
    """The predictions of one request, as one spool line (``n`` first: :func:`line_records`)."""

    n: int
    scored_at: float  # epoch seconds
    threshold: float
    model_name: str
    model_version: str
    request_id: str
    prediction_ids: list[str]
    transaction_ids: list[str]
    event_times: list[float | None]
    scores: list[float]
    is_fraud: list[bool]
    risk_levels: list[str]
    columns: list[str] = []  # the columns of ``x``
    x: bytes | None = None  # n x len(columns) float64, little-endian, row by row
    features: list[msgspec.Raw] | None = None  # one JSON object per prediction (with x: first)


_BLOCK = msgspec.json.Decoder(Block)
_ENCODER = msgspec.json.Encoder()
_PREFIX = b'{"n":'
_PER_ROW = ("prediction_ids", "transaction_ids", "event_times", "scores", "is_fraud",
            "risk_levels")  # fmt: skip


def encode_block(block: Block) -> bytes:
    """``block`` as a spool line."""
    return _ENCODER.encode(block) + b"\n"


def line_records(line: bytes) -> int:
    """The number of predictions in a spool line (1 for a line that is not a block)."""
    if line.startswith(_PREFIX):
        with contextlib.suppress(ValueError):
            return max(1, int(line[len(_PREFIX) : line.find(b",", len(_PREFIX))]))
    return 1


def _check_block(block: Block) -> None:
    """Raise ValueError unless every per-prediction part of ``block`` has ``n`` entries (and
    the features texts are UTF-8): a line is read whole or set aside whole."""
    if any(len(getattr(block, name)) != block.n for name in _PER_ROW):
        raise ValueError(f"a block of {block.n} predictions with lists of other lengths")
    if block.features is not None:
        if len(block.features) != block.n:
            raise ValueError("a block needs one features object per prediction")
        for text in block.features:
            bytes(text).decode()  # UTF-8, or a ValueError: the line is set aside
    if block.x is None:
        if block.features is None:
            raise ValueError("a block needs x or one features object per prediction")
        return
    width = len(block.columns)
    if len(block.x) != 8 * width * block.n:
        raise ValueError(f"x holds {len(block.x)} bytes, not {block.n} x {width} float64")
    for text in block.features or ():
        if not (bytes(text).startswith(b"{") and bytes(text).endswith(b"}")):
            raise ValueError("a features entry of a block with x is not a JSON object")


def _block_features(block: Block, start: int, stop: int) -> list[bytes]:
    """The features of predictions ``start:stop`` of a checked ``block`` as JSON object text
    (UTF-8): the float64 matrix ``x`` as objects, the per-prediction objects of ``features``,
    or, with both (a raw transaction's fields and its computed features), each ``features``
    object followed by the matrix row's columns, the document ``{**raw, **computed}`` the
    request path used to build."""
    texts = None if block.features is None else [bytes(f) for f in block.features[start:stop]]
    if block.x is None:
        assert texts is not None  # _check_block
        return texts
    width = len(block.columns)
    X = np.frombuffer(block.x, dtype="<f8").reshape(block.n, width)[start:stop]
    row, encode = feature_row(tuple(block.columns)), _ENCODER.encode
    computed = [encode(row(*values)) for values in X.tolist()]
    return computed if texts is None else list(map(_joined, texts, computed))


def _joined(first: bytes, second: bytes) -> bytes:
    """Two JSON object texts as one object: ``first``'s members, then ``second``'s (both
    objects: :func:`_check_block`)."""
    if first == b"{}" or second == b"{}":
        return second if first == b"{}" else first
    return first[:-1] + b"," + second[1:]


def decode_lines(lines: Sequence[bytes]) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    """Spool lines as rows for :func:`fraud_lib.store.copy_predictions` (tuples in
    ``PREDICTION_FIELDS`` order, features as UTF-8 JSON text), and the lines that cannot be read
    (kept whole): :func:`decode_pieces` in one piece."""
    rows: list[tuple[Any, ...]] = []
    bad: list[bytes] = []
    for piece, unreadable in decode_pieces(lines, max(1, sum(map(line_records, lines)))):
        rows += piece
        bad += unreadable
    return rows, bad


def decode_pieces(
    lines: Sequence[bytes], piece_rows: int
) -> Iterator[tuple[list[tuple[Any, ...]], list[bytes]]]:
    """:func:`decode_lines` in pieces of at most ``piece_rows`` rows (a 10,000-prediction line
    is decoded ``piece_rows`` at a time, lines of a few rows are gathered), so the shipper holds
    one piece's tuples and JSON texts at a time, not a whole block's; each piece with the lines
    set aside since the last one. A line is checked whole before any of its rows is given."""
    rows: list[tuple[Any, ...]] = []
    bad: list[bytes] = []
    for line in lines:
        try:
            b = _BLOCK.decode(line)
            _check_block(b)
            scored_at = datetime.fromtimestamp(b.scored_at, UTC)
        except (msgspec.DecodeError, ValueError, OverflowError, OSError):
            bad.append(line)  # msgspec.ValidationError (wrong types) is a DecodeError
            continue
        start = 0
        while start < b.n:
            stop = min(b.n, start + piece_rows - len(rows))
            rows += zip(
                b.prediction_ids[start:stop], b.transaction_ids[start:stop], repeat(scored_at),
                b.event_times[start:stop], _block_features(b, start, stop),
                b.scores[start:stop], b.is_fraud[start:stop], repeat(b.threshold),
                b.risk_levels[start:stop], repeat(b.model_name), repeat(b.model_version),
                repeat(b.request_id), strict=False,  # all stop - start long (checked)
            )  # fmt: skip
            start = stop
            if len(rows) >= piece_rows:
                yield rows, bad
                rows, bad = [], []
    if rows or bad:
        yield rows, bad


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Segments:
    """One writer's segments and the shipping position in them (a live or a dead writer's)."""

    def __init__(self, spool_dir: Path, wid: str, lock_fd: int, *, own: bool) -> None:
        self.dir, self.wid, self.lock_fd, self.own = spool_dir, wid, lock_fd, own
        self.offset_path = spool_dir / f"{wid}.offset"
        self.seq, self.offset = 1, 0
        self.records = 0  # lines left to ship (dead writers' sources; ours is counted apart)
        with contextlib.suppress(OSError, ValueError):
            seq, offset = self.offset_path.read_text().split()
            self.seq, self.offset = int(seq), int(offset)

    def segment(self, seq: int) -> Path:
        return self.dir / f"{self.wid}.{seq:06d}.spool"

    def segments(self) -> list[int]:
        prefix = f"{self.wid}."
        return sorted(
            int(m["seq"])
            for p in self.dir.glob(f"{self.wid}.*.spool")
            if (m := SEGMENT_NAME.match(p.name)) and p.name.startswith(prefix)
        )

    def save(self) -> None:
        replace_file(self.offset_path, f"{self.seq} {self.offset}\n")

    def pending_bytes(self, open_seq: int | None = None, open_size: int = 0) -> int:
        total = 0
        for seq in self.segments():
            if seq < self.seq:
                continue
            size = open_size if seq == open_seq else _size(self.segment(seq))
            total += max(0, size - (self.offset if seq == self.seq else 0))
        return total

    def next_lines(
        self, max_records: int, open_seq: int | None, open_size: int
    ) -> tuple[list[bytes], int, int]:
        """Complete lines up to ``max_records`` predictions from the position, with the position
        after them. Finished segments (closed and fully shipped) are deleted on the way."""
        while True:
            if not self.segment(self.seq).exists():
                later = [s for s in self.segments() if s > self.seq]
                if not later:
                    return [], self.seq, self.offset
                self.seq, self.offset = later[0], 0
                continue
            path = self.segment(self.seq)
            is_open = self.own and self.seq == open_seq
            end = open_size if is_open else _size(path)
            if self.offset >= end:
                if is_open:
                    return [], self.seq, self.offset
                path.unlink(missing_ok=True)  # closed and fully shipped
                continue
            lines, consumed = _read_lines(path, self.offset, end, max_records)
            if not lines:
                if is_open:
                    return [], self.seq, self.offset
                log.warning(
                    "%s: skipping %d bytes without a final newline (a write cut off by a crash, "
                    "never acknowledged)", path.name, end - self.offset,
                )  # fmt: skip
                self.offset = end
                continue
            return lines, self.seq, self.offset + consumed

    def remove_all(self) -> None:
        for seq in self.segments():
            self.segment(seq).unlink(missing_ok=True)
        self.offset_path.unlink(missing_ok=True)
        (self.dir / f"{self.wid}.lock").unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_lines(path: Path, start: int, end: int, max_records: int) -> tuple[list[bytes], int]:
    """Complete lines of ``path`` in ``[start, end)`` up to ``max_records`` predictions (at
    least one line); bytes consumed."""
    with open(path, "rb") as fh:
        chunk = READ_CHUNK
        while True:
            fh.seek(start)
            data = fh.read(min(chunk, end - start))
            if b"\n" in data or start + len(data) >= end:
                break
            chunk *= 4  # one line longer than the chunk
    # the part after the last LF is the rest of the chunk, or a line still incomplete
    lines, records, pos = [], 0, 0
    while records < max_records and (stop := data.find(b"\n", pos)) >= 0:
        lines.append(data[pos:stop])
        records += line_records(lines[-1])
        pos = stop + 1
    return lines, pos


def count_records(src: Segments) -> int:
    """Predictions not yet shipped in ``src`` (a dead writer's backlog, for the metrics)."""
    total = 0
    for seq in src.segments():
        if seq < src.seq:
            continue
        with open(src.segment(seq), "rb") as fh:
            if seq == src.seq:
                fh.seek(src.offset)
            total += sum(map(line_records, fh.read().split(b"\n")[:-1]))
    return total


def reencode(row: tuple[Any, ...]) -> bytes:
    """A decoded row (:func:`decode_lines`) as a one-prediction spool line (the rejected file)."""
    pid, tx, scored_at, event, features, score, fraud, threshold, risk, name, version, rid = row
    return encode_block(Block(
        n=1, scored_at=scored_at.timestamp(), threshold=threshold, model_name=name,
        model_version=version, request_id=rid, prediction_ids=[pid], transaction_ids=[tx],
        event_times=[event], scores=[score], is_fraud=[fraud], risk_levels=[risk],
        features=[msgspec.Raw(features if isinstance(features, bytes) else features.encode())],
    ))  # fmt: skip


@functools.lru_cache(maxsize=16)
def feature_row(features: tuple[str, ...]) -> Callable[..., Any]:
    """A factory: one value per column in ``features`` order -> an object msgspec encodes as
    the features JSON object ``{column: value, ...}``. A Struct class (fields ``f0..fN``
    renamed to the columns; ~1.7x faster to build and encode than a dict), or a dict maker
    if a column name has a quote, backslash or control character (msgspec refuses those)."""
    fields = [f"f{i}" for i in range(len(features))]
    try:
        return msgspec.defstruct(
            "Features", fields, rename=dict(zip(fields, features, strict=True)), gc=False
        )
    except ValueError:
        return lambda *values: dict(zip(features, values, strict=True))

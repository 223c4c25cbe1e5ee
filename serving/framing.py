"""Where an HTTP/1.1 request ends in a buffer of received bytes (used by
:mod:`serving.buffered_worker`, which reads whole requests before a thread handles them).

Only the framing is decided here: the end of the head, then the body's length from a single
all-digit ``Content-Length`` or a ``Transfer-Encoding`` ending in ``chunked`` (chunk sizes
followed incrementally). Everything else (the request line, header syntax, limits) is left to
gunicorn's parser, which answers its own 4xx: a head whose framing is ambiguous or malformed
(two Content-Lengths, one that is not a number, both headers, another transfer coding, a bad
chunk size) is handed over as soon as the head is in, so that parser rejects it without
waiting for a body. Imports nothing heavy: the gunicorn master loads it with the worker class.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

HEAD_END = b"\r\n\r\n"
MAX_CHUNK_LINE = 4096  # a chunk-size line (size and extensions) longer than this is refused
_HEX = re.compile(rb"[0-9A-Fa-f]+")


class Verdict(enum.Enum):
    """What a connection's reader does next with its buffer."""

    MORE = "more"  # read more bytes
    COMPLETE = "complete"  # a whole request is buffered: hand it to a thread
    HAND_OVER = "hand_over"  # hand over what is buffered now; gunicorn answers (then close)
    TOO_LARGE = "too_large"  # a chunked body beyond the limit: answer 413 and close


@dataclass
class Framing:
    """The state of one request being received. ``head_end`` is the offset just past the
    head's blank line, ``length`` a Content-Length body's size (None: chunked or none)."""

    head_end: int = -1
    length: int | None = None
    chunked: bool = False
    chunk_at: int = 0  # chunked: where the next chunk-size line starts
    decoded: int = 0  # chunked: body bytes announced so far
    end: int = -1  # offset just past the request, once COMPLETE
    expect_continue: bool = False


def parse_head(head: bytes, framing: Framing) -> Verdict:
    """Fill ``framing`` from a complete head (request line and fields, without the blank
    line); MORE when a body follows, COMPLETE when none does, HAND_OVER when it is ambiguous."""
    lines = head.split(b"\r\n")
    lengths, codings, expect = [], [], b""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.rstrip(b" \t").lower(), value.strip(b" \t")
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
        elif name == b"expect":
            expect = value.lower()
    framing.expect_continue = expect == b"100-continue" and lines[0].endswith(b" HTTP/1.1")
    if codings:
        tokens = [t.strip(b" \t").lower() for t in b",".join(codings).split(b",")]
        if lengths or tokens != [b"chunked"]:
            return Verdict.HAND_OVER  # gunicorn refuses CL + TE, stacked or unknown codings
        framing.chunked = True
        framing.chunk_at = framing.head_end
        return Verdict.MORE
    if not lengths:
        framing.end = framing.head_end
        return Verdict.COMPLETE
    if len(lengths) > 1 or not lengths[0].isdigit():
        return Verdict.HAND_OVER
    framing.length = int(lengths[0])
    framing.end = framing.head_end + framing.length
    return Verdict.COMPLETE if framing.length == 0 else Verdict.MORE


def scan(buf: bytearray, size: int, framing: Framing, max_head: int, max_body: int) -> Verdict:
    """The verdict on ``buf[:size]`` (the bytes of one request so far, maybe more behind it;
    the rest of ``buf`` is room for more)."""
    if framing.head_end < 0:
        at = buf.find(HEAD_END, 0, size)
        if at < 0:
            return Verdict.HAND_OVER if size > max_head else Verdict.MORE
        framing.head_end = at + len(HEAD_END)
        verdict = parse_head(bytes(buf[:at]), framing)
        if verdict is not Verdict.MORE:
            return verdict
        if framing.length is not None and framing.length > max_body:
            return Verdict.HAND_OVER  # the app answers 413 without the body
    if framing.length is not None:
        return Verdict.COMPLETE if size >= framing.end else Verdict.MORE
    return _scan_chunks(buf, size, framing, max_head, max_body)


def _scan_chunks(
    buf: bytearray, size: int, framing: Framing, max_head: int, max_body: int
) -> Verdict:
    """Follow chunk sizes from ``framing.chunk_at`` as far as ``buf[:size]`` goes."""
    if size - framing.head_end > 2 * max_body + MAX_CHUNK_LINE:
        return Verdict.TOO_LARGE  # tiny chunks: their framing alone passes the limit
    while True:
        line_end = buf.find(b"\r\n", framing.chunk_at, size)
        if line_end < 0:
            too_long = size - framing.chunk_at > MAX_CHUNK_LINE
            return Verdict.HAND_OVER if too_long else Verdict.MORE
        line = bytes(buf[framing.chunk_at : line_end])
        size_text = line.split(b";", 1)[0].rstrip(b" \t")
        if not _HEX.fullmatch(size_text) or line_end - framing.chunk_at > MAX_CHUNK_LINE:
            return Verdict.HAND_OVER  # gunicorn answers the bad chunk size
        chunk = int(size_text, 16)
        data_at = line_end + 2
        if chunk == 0:
            return _scan_trailers(buf, size, framing, data_at, max_head)
        if framing.decoded + chunk > max_body:
            return Verdict.TOO_LARGE
        if size < data_at + chunk + 2:
            return Verdict.MORE
        if buf[data_at + chunk : data_at + chunk + 2] != b"\r\n":
            return Verdict.HAND_OVER
        framing.decoded += chunk
        framing.chunk_at = data_at + chunk + 2


def _scan_trailers(buf: bytearray, size: int, framing: Framing, at: int, max_head: int) -> Verdict:
    """After the last chunk: an empty line, or trailer fields ending in one."""
    if size < at + 2:
        return Verdict.MORE
    if buf[at : at + 2] == b"\r\n":
        framing.end = at + 2
        return Verdict.COMPLETE
    found = buf.find(HEAD_END, at, size)
    if found < 0:
        return Verdict.HAND_OVER if size - at > max_head else Verdict.MORE
    framing.end = found + len(HEAD_END)
    return Verdict.COMPLETE

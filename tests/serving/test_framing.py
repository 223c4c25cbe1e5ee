"""Units of serving.framing: where a request ends in a buffer, whatever it was split into."""

from __future__ import annotations

import pytest

from serving.framing import Framing, Verdict, scan

HEAD = b"POST /v1/score HTTP/1.1\r\nHost: t\r\n"


def verdict_of(data: bytes, max_body: int = 1000) -> tuple[Verdict, Framing]:
    framing = Framing()
    buf = bytearray(data) + bytearray(64)  # room behind the data, as in the worker
    return scan(buf, len(data), framing, 8192, max_body), framing


@pytest.mark.parametrize(
    ("data", "verdict", "end"),
    [
        (HEAD + b"\r\n", Verdict.COMPLETE, len(HEAD) + 2),
        (HEAD + b"Content-Length: 2\r\n\r\n{}GET", Verdict.COMPLETE, len(HEAD) + 23),
        (HEAD + b"content-length:  2 \r\n\r\n{", Verdict.MORE, -1),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", Verdict.COMPLETE, 0),
        (
            HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;x=y\r\n{}\r\n0\r\nA: b\r\n\r\n",
            Verdict.COMPLETE,
            0,
        ),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n", Verdict.MORE, -1),
        (HEAD + b"Content-Length: -1\r\n\r\n", Verdict.HAND_OVER, -1),
        (HEAD + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n{", Verdict.HAND_OVER, -1),
        (HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", Verdict.HAND_OVER, -1),
        (HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n", Verdict.HAND_OVER, -1),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", Verdict.HAND_OVER, -1),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX", Verdict.HAND_OVER, -1),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3e9\r\n", Verdict.TOO_LARGE, -1),
        (
            HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + (b"1;" + b"x" * 4000 + b"\r\n \r\n") * 3,
            Verdict.TOO_LARGE,
            -1,
        ),
        (HEAD + b"Content-Length: 5000\r\n\r\n", Verdict.HAND_OVER, -1),  # the app answers 413
        (b"GET /" + b"a" * 9000, Verdict.HAND_OVER, -1),
    ],
)
def test_verdicts(data, verdict, end):
    got, framing = verdict_of(data)
    assert got is verdict
    if verdict is Verdict.COMPLETE:
        assert framing.end == (end or len(data))


def test_a_request_split_anywhere_completes_at_its_end():
    body = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
    data = HEAD + b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n" + body
    for cut in range(1, len(data)):
        framing = Framing()
        buf = bytearray(data)
        assert scan(buf, cut, framing, 8192, 1000) is Verdict.MORE, cut
        assert scan(buf, len(data), framing, 8192, 1000) is Verdict.COMPLETE
        assert framing.end == len(data) and framing.decoded == 8 and framing.expect_continue

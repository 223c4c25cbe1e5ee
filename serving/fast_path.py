"""A WSGI fast path in front of the Flask app for clean ``POST /v1/score`` JSON requests.

Of the ~0.28 ms of worker CPU a single transaction took on a quiet machine (py-spy, README
"Profile of one request"), ~0.08 ms was Flask and werkzeug (request and response objects,
routing, context push and pop, signals, the before/after hooks). :class:`FastScore` wraps
``app.wsgi_app``: a JSON request to ``/v1/score`` is scored, logged and answered here through the
same code as the Flask view (:func:`serving.api.score_validated` for a body the typed decoder
accepts, :func:`serving.raw_scoring.score_raw`'s two steps for a behavioral champion's raw
transactions, then :func:`serving.api.log_and_answer`), with the same bytes, headers and metrics.
Everything else goes to Flask unchanged: another path or method, no Content-Length or one beyond
``MAX_CONTENT_LENGTH`` (413), a chunked body, another content type (415, Arrow), an ``Accept``
naming Arrow, no model (503).

A request that fails is handed to Flask (its bytes put back into ``wsgi.input``), so every error
answer is Flask's JSON error model, in one of two ways:

* failed before anything was kept (the typed decoder refused the body, validation, a bug before
  the log append): Flask runs the request again and answers it (a recurring bug: its 500);
* failed after a raw request's events were appended to the online state (e.g. the spool refused
  its line): running it again would count the events twice, so Flask answers that failure
  (:data:`FAILED_KEY`, raised by the app's ``before_request`` hook) without running the view.

Once the spool line is appended nothing fails (:func:`serving.api.log_and_answer`: the metrics
updates never raise), so a logged request is always answered here, never logged twice.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.http import parse_options_header
from werkzeug.wsgi import ClosingIterator

from serving.api import log_and_answer, new_ids, score_validated
from serving.request_body import BulkBody
from serving.typed_batch import decode_batch
from serving.validation import ApiError, decode_json, is_json_mimetype

log = logging.getLogger(__name__)

SCORE_PATH = "/v1/score"
# What the fast path leaves in the environ of a request it hands to Flask, so that the
# request keeps its id and its latency counts from its arrival (serving.app's hooks read them).
REQUEST_ID_KEY = "fraudloop.request_id"
STARTED_KEY = "fraudloop.started"
# The failure of a request that kept something before it failed: Flask answers it, never re-runs it.
FAILED_KEY = "fraudloop.failed"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def request_id(header: str) -> str:
    """The request's id: its ``X-Request-ID`` if that is 1-64 of ``[A-Za-z0-9._:-]``, else a
    new random one (32 hex digits)."""
    return header if header and _REQUEST_ID.match(header) else new_ids(1)[0]


@functools.lru_cache(maxsize=64)
def _json_content(content_type: str) -> bool:
    """Whether a Content-Type header is JSON, as Flask's ``request.mimetype`` reads it."""
    return is_json_mimetype(parse_options_header(content_type)[0].lower())


class FastScore:
    """``app.wsgi_app`` with clean JSON ``/v1/score`` requests answered without Flask."""

    def __init__(self, flask_app: WsgiApp, state: Any, max_body: int | None) -> None:
        self.flask = flask_app
        self.state = state
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != SCORE_PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.flask(environ, start_response)
        started = time.perf_counter()
        rid = request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        environ[STARTED_KEY], environ[REQUEST_ID_KEY] = started, rid
        served = self.state.holder.current  # this request uses this model, as in the view
        length = self._candidate_length(environ, served)
        if length is None:
            return self.flask(environ, start_response)
        stream = environ["wsgi.input"]
        body = stream.read_rest() if isinstance(stream, BulkBody) else stream.read(length)
        kept: list[bool] = []  # set once a raw request's events are in the online state
        try:
            answer = self._answer(body, length, served, rid, kept)
        except Exception as exc:  # Flask answers it: the same error, or a bug's 500
            if not isinstance(exc, ApiError):
                log.exception("request %s: the fast path failed; handing the request to Flask", rid)
            if kept:  # answered, not run again: its events would count twice
                environ[FAILED_KEY] = exc
            answer = None
        if answer is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return self.flask(environ, start_response)
        headers = [("Content-Type", answer.mimetype), ("Content-Length", str(len(answer.body))),
                   ("X-Request-ID", rid)]  # fmt: skip
        self.state.metrics.observe_request(SCORE_PATH, "POST", "200",
                                           time.perf_counter() - started)  # fmt: skip
        start_response("200 OK", headers)
        return ClosingIterator([answer.body], answer.on_close)

    def _candidate_length(self, environ: dict[str, Any], served: Any) -> int | None:
        """The body length of a request the fast path may answer; None: Flask answers it."""
        if served is None:
            return None
        declared = environ.get("CONTENT_LENGTH", "")
        if not (declared.isascii() and declared.isdigit()) or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        length = int(declared)
        if self.max_body is not None and length > self.max_body:
            return None
        if not _json_content(environ.get("CONTENT_TYPE", "")):
            return None
        if "arrow" in environ.get("HTTP_ACCEPT", "").lower():  # Flask negotiates the answer
            return None
        return length

    def _answer(self, body: bytes, length: int, served: Any, rid: str, kept: list[bool]) -> Any:
        """The :class:`serving.api.Answer` of a clean body (logged); None if it is not clean.
        ``kept`` gets an item once something is kept (see the module docstring)."""
        if len(body) != length:  # the client hung up early
            return None
        st = self.state
        if served.schema.behavior is not None:
            from serving.raw_input import validate_raw
            from serving.raw_scoring import score_valid_raw  # as the view: lazily

            settings = st.settings
            txs, times = validate_raw(decode_json(body), served.schema, settings.max_batch,
                                      settings.timestamp_bounds)  # fmt: skip
            kept.append(True)  # the next call appends the events to the online state
            scores, logged = score_valid_raw(st.online, served, txs, times)
        else:
            txs = decode_batch(body, served.schema, st.settings.max_batch)
            if txs is None:
                return None
            scores, logged = score_validated(served, txs)
        return log_and_answer(st, served, txs, scores, logged, rid, arrow=False)

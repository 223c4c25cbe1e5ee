"""A WSGI fast path in front of the Flask app for clean ``POST /v1/score`` JSON requests.

Of the ~0.28 ms of worker CPU a single transaction took on a quiet machine (py-spy, README
"Profile of one request"), ~0.08 ms was Flask and werkzeug (request and response objects,
routing, context push and pop, signals, the before/after hooks). :class:`FastScore` wraps
``app.wsgi_app``: a JSON request to ``/v1/score`` whose body the typed decoder accepts
(:func:`serving.typed_batch.decode_batch`) is scored, logged and answered here through the same
code as the Flask view (:func:`serving.api.score_validated`, :func:`serving.api.log_and_answer`),
with the same bytes, headers and metrics. Everything else goes to Flask unchanged: another path
or method, no Content-Length or one beyond ``MAX_CONTENT_LENGTH`` (413), a chunked body, another
content type (415, Arrow), an ``Accept`` naming Arrow, no model (503), a behavioral champion,
and any body the typed decoder refuses or that fails later (its bytes put back into
``wsgi.input``), so every error answer is Flask's JSON error model. Nothing is logged before a
request is handed over: the spool append is the last step that can fail, and it keeps nothing
when it does.
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
from serving.validation import ApiError, is_json_mimetype

log = logging.getLogger(__name__)

SCORE_PATH = "/v1/score"
# What the fast path leaves in the environ of a request it hands to Flask, so that the
# request keeps its id and its latency counts from its arrival (serving.app's hooks read them).
REQUEST_ID_KEY = "fraudloop.request_id"
STARTED_KEY = "fraudloop.started"
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
        try:
            answer = self._answer(body, length, served, rid)
        except ApiError:  # nothing was logged: Flask answers the error
            answer = None
        except Exception:  # a bug: Flask runs the request again and answers its 500 if it recurs
            log.exception("request %s: the fast path failed; handing the request to Flask", rid)
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
        if served is None or served.schema.behavior is not None:
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

    def _answer(self, body: bytes, length: int, served: Any, rid: str) -> Any:
        """The :class:`serving.api.Answer` of a clean body (logged); None if it is not clean."""
        if len(body) != length:  # the client hung up early
            return None
        st = self.state
        txs = decode_batch(body, served.schema, st.settings.max_batch)
        if txs is None:
            return None
        scores, logged = score_validated(served, txs)
        return log_and_answer(st, served, txs, scores, logged, rid, arrow=False)

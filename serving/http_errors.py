"""The JSON error body of the service, ``{"error": {"code", "message", "fields"}}``, for the
answers written below Flask: by :mod:`serving.buffered_worker` (408, 413, 503 on a connection
it reads) and for gunicorn's own refusals of a malformed request (400, 431, ...), which
gunicorn otherwise writes as an HTML page. An unknown transfer coding, gunicorn's 501, is
answered 400: the client sent something this API does not take, the server is not at fault. Imports only the standard library: the gunicorn
master loads it with the worker class.
"""

from __future__ import annotations

import json
from http import HTTPStatus

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    417: "expectation_failed",
    429: "too_many_requests",
    431: "header_fields_too_large",
    500: "internal_error",
    503: "service_unavailable",
}


def body_too_large(limit: int) -> str:
    """The message of a 413 for a body over ``FRAUD_MAX_BODY_BYTES``."""
    return (
        f"the request body is larger than {limit} bytes (FRAUD_MAX_BODY_BYTES); "
        "send smaller batches"
    )


def error_code(status: int) -> str:
    """The ``error.code`` of an HTTP status without a more specific one."""
    return HTTP_CODES.get(status, "http_error")


def raw_error(status: int, message: str, extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 response with the JSON error body that closes the connection."""
    body = json.dumps(
        {"error": {"code": error_code(status), "message": message, "fields": {}}}
    ).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra_headers}\r\n"
    )
    return head.encode("latin-1") + body


def write_error(sock: object, status_int: int, reason: str, mesg: str) -> None:
    """Replacement of ``gunicorn.util.write_error`` (same signature): the JSON body instead of
    gunicorn's HTML page, sent without blocking."""
    from gunicorn import util

    if status_int == 501:  # gunicorn's answer to a transfer coding it does not know
        status_int, mesg = 400, f"{mesg or 'unsupported transfer coding'}; send the body with "
        mesg += "Content-Length or Transfer-Encoding: chunked"
    message = mesg or (reason if status_int < 500 else "internal error; see the server log")
    util.write_nonblock(sock, raw_error(status_int, message))

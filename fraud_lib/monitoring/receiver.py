"""A local webhook receiver: an ``http.server`` in a thread on 127.0.0.1 that records the JSON
the alert webhook sink posts (:mod:`fraud_lib.monitoring.sinks`).

``fraud demo`` starts one and points ``FRAUD_ALERT_WEBHOOK_URL`` of its child processes at
it, so the alerts the DAGs and the scoring service send show up in the summary; the alert tests
use it (``tests/alert_receivers.py``) as the real HTTP endpoint. It accepts ``POST`` of a JSON
object of at most :data:`MAX_BODY_BYTES`; anything else gets a 4xx and is not recorded.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from fraud_lib import unique_keys

MAX_BODY_BYTES = 1 << 20  # an alert payload is a few kB


class WebhookReceiver:
    """Records every accepted POST as ``{"at", "path", "json"}`` in :attr:`posts`; the URL
    to post to is :attr:`url`. Override :meth:`answer` to choose the status of each post."""

    def __init__(self, path: str = "/hooks/fraudloop", host: str = "127.0.0.1") -> None:
        self.posts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, 0), _handler(self))
        self.url = f"http://{host}:{self.server.server_address[1]}{path}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()

    def answer(self, count: int) -> int:
        """HTTP status for the ``count``-th recorded post (1-based): 200."""
        return 200

    def record(self, path: str, body: Any) -> int:
        """Keep one accepted post; the status to answer (:meth:`answer`)."""
        with self._lock:
            self.posts.append({"at": time.time(), "path": path, "json": body})
            count = len(self.posts)
        return self.answer(count)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The posts so far, after waiting up to ``timeout`` seconds for ``count`` of them."""
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            return list(self.posts)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._reply(411, "a Content-Length header is required")
            if not 0 <= length <= MAX_BODY_BYTES:
                return self._reply(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
            try:
                body = unique_keys.loads(self.rfile.read(length).decode("utf-8"), "the body")
            except unique_keys.DuplicateKeyError as exc:
                return self._reply(400, str(exc))
            except (UnicodeDecodeError, ValueError, RecursionError):
                return self._reply(400, "the body must be JSON in UTF-8")
            if not isinstance(body, dict):
                return self._reply(400, "the body must be a JSON object")
            self._reply(receiver.record(self.path, body), "ok")

        def _reply(self, status: int, message: str) -> None:
            data = message.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: no access log
            pass

    return Handler

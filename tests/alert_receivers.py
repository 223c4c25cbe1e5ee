"""Real local receivers for the alert tests: an HTTP server (``http.server`` in a thread on
127.0.0.1) that records webhook posts, and an SMTP server (aiosmtpd) that records e-mails.
Import the fixtures into a test module: ``from tests.alert_receivers import webhook, smtp``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from fraud_lib import pgserver

TOKEN = "T0KEN-s3cret-path-part"  # what a real webhook URL hides in its path


class WebhookReceiver:
    """Records every POST (arrival time, path, JSON body); answers ``statuses`` in turn
    (the last one repeats), after ``delay`` seconds."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.statuses: list[int] = [200]
        self.delay = 0.0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.posts.append({"at": time.time(), "path": self.path,
                                           "json": json.loads(body)})  # fmt: skip
                    n = len(receiver.posts)
                    status = receiver.statuses[min(n, len(receiver.statuses)) - 1]
                time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{TOKEN}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The first ``count`` posts, waiting up to ``timeout`` seconds for them."""
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.posts) >= count, f"{len(self.posts)} of {count} webhook posts arrived"
        return self.posts[:count]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[Any, EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((envelope, msg))
        return "250 Message accepted for delivery"


@pytest.fixture()
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture()
def smtp() -> Iterator[tuple[Controller, _Mailbox]]:
    """(controller, mailbox) of a plain SMTP server on 127.0.0.1 (no TLS, no auth)."""
    mailbox = _Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=pgserver.free_port())
    controller.start()
    yield controller, mailbox
    controller.stop()

"""Real local receivers for the alert tests: an HTTP server (``http.server`` in a thread on
127.0.0.1, :mod:`fraud_lib.monitoring.receiver`) that records webhook posts, and an SMTP server
(aiosmtpd) that records e-mails. Import the fixtures into a test module: ``from tests.alert_receivers import webhook, smtp``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from fraud_lib import pgserver
from fraud_lib.monitoring import receiver

TOKEN = "T0KEN-s3cret-path-part"  # what a real webhook URL hides in its path


class WebhookReceiver(receiver.WebhookReceiver):
    """The library's receiver (records every POST: arrival time, path, JSON body) that
    answers ``statuses`` in turn (the last one repeats), after ``delay`` seconds."""

    def __init__(self) -> None:
        self.statuses: list[int] = [200]
        self.delay = 0.0
        super().__init__(path=f"/hooks/{TOKEN}")

    def answer(self, count: int) -> int:
        time.sleep(self.delay)
        return self.statuses[min(count, len(self.statuses)) - 1]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The first ``count`` posts, waiting up to ``timeout`` seconds for them."""
        posts = super().wait_for(count, timeout)
        assert len(posts) >= count, f"{len(posts)} of {count} webhook posts arrived"
        return posts[:count]


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

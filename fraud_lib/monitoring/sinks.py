"""Where alerts go: a generic webhook (JSON with a Slack-compatible ``text``) and e-mail over
SMTP, configured from ``FRAUD_ALERT_*`` (:func:`sinks_from_settings`).

Each sink retries a transient failure (connection refused or timed out, HTTP 429 or 5xx,
SMTP 4xx) ``FRAUD_ALERT_ATTEMPTS`` times in all, waiting ``FRAUD_ALERT_RETRY_SECONDS``,
then twice that, and so on (tenacity). ``send`` never raises: it returns a
:class:`Delivery`. Error texts never contain the webhook URL's path or query (where its
token lives) nor the SMTP password.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from fraud_lib.config import Settings

if TYPE_CHECKING:
    from fraud_lib.monitoring.alerts import Alert

log = logging.getLogger(__name__)


class TransientSinkError(Exception):
    """A failure worth retrying (the receiver may be back in a moment)."""


class PermanentSinkError(Exception):
    """A failure that retrying cannot fix (wrong URL, rejected credentials or address)."""


@dataclass
class Delivery:
    """The outcome of one sink's attempts at one alert."""

    sink: str
    ok: bool
    attempts: int
    seconds: float
    error: str | None = None


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class _RetryingSink:
    """Shared retry loop; subclasses implement ``_send_once`` and set ``name``/``_secrets``."""

    name = "sink"
    _secrets: tuple[str, ...] = ()

    def __init__(self, *, timeout: float, attempts: int, retry_seconds: float) -> None:
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.retry_seconds = max(0.0, retry_seconds)

    def _send_once(self, alert: Alert) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.info("alert sink %s: attempt %d of %d failed (%s); retrying in %.1fs", self.name,
                 state.attempt_number, self.attempts, self._describe_error(exc), wait)  # fmt: skip

    def _describe_error(self, exc: BaseException | None) -> str:
        if exc is None:
            return "unknown error"
        text = str(exc).strip().splitlines()
        return _redact(f"{type(exc).__name__}: {text[0] if text else ''}", self._secrets)

    def send(self, alert: Alert) -> Delivery:
        """Deliver ``alert`` with retries; never raises."""
        started = time.perf_counter()
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.retry_seconds, max=60),
            retry=retry_if_exception_type(TransientSinkError),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            retrying(self._send_once, alert)
        except Exception as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            return Delivery(self.name, False, attempts, time.perf_counter() - started,
                            self._describe_error(exc))  # fmt: skip
        attempts = retrying.statistics.get("attempt_number", 1)
        return Delivery(self.name, True, attempts, time.perf_counter() - started)


class WebhookSink(_RetryingSink):
    """POST the alert's JSON (:meth:`Alert.payload`) to a URL."""

    def __init__(self, url: str, **retry: Any) -> None:
        super().__init__(**retry)
        self.url = url
        parts = urlsplit(url)
        self.name = f"webhook {parts.scheme}://{parts.hostname}"
        secret_parts = (url, parts.path, parts.query, parts.password or "")
        self._secrets = tuple(p for p in secret_parts if p and p != "/")

    def _send_once(self, alert: Alert) -> None:
        body = json.dumps(alert.payload(), default=str, allow_nan=False).encode()
        try:
            response = requests.post(
                self.url,
                data=body,
                headers={"Content-Type": "application/json", "User-Agent": "fraudloop-alerts"},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise TransientSinkError(f"cannot reach the webhook: {exc}") from None
        code = response.status_code
        response.close()
        if code == 429 or code >= 500:
            raise TransientSinkError(f"the webhook answered HTTP {code}")
        if not 200 <= code < 300:
            raise PermanentSinkError(f"the webhook answered HTTP {code}; check the URL")


class SmtpSink(_RetryingSink):
    """Send the alert as a plain-text e-mail; ``security`` is starttls, ssl or none."""

    def __init__(self, host: str, port: int, *, sender: str, recipients: tuple[str, ...],
                 user: str = "", password: str = "", security: str = "starttls",
                 **retry: Any) -> None:  # fmt: skip
        super().__init__(**retry)
        self.host, self.port, self.sender, self.recipients = host, port, sender, recipients
        self.user, self.password, self.security = user, password, security
        self.name = f"smtp {host}:{port}"
        self._secrets = (password,)

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = alert.subject()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(alert.created_at, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        msg["X-Fraudloop-Dedup-Key"] = alert.dedup_key
        msg.set_content(alert.body())
        return msg

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        if self.security == "ssl":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.security == "starttls":
            smtp.starttls(context=context)
        return smtp

    def _send_once(self, alert: Alert) -> None:
        try:
            with self._connect() as smtp:
                if self.user:
                    smtp.login(self.user, self.password)
                smtp.send_message(self.message(alert))
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPRecipientsRefused,
                smtplib.SMTPSenderRefused, smtplib.SMTPNotSupportedError) as exc:  # fmt: skip
            raise PermanentSinkError(self._describe_error(exc)) from None
        except smtplib.SMTPResponseException as exc:
            error = PermanentSinkError if exc.smtp_code >= 500 else TransientSinkError
            raise error(self._describe_error(exc)) from None
        except OSError as exc:  # refused, timed out, disconnected, TLS failed
            raise TransientSinkError(self._describe_error(exc)) from None


def sinks_from_settings(settings: Settings) -> list[_RetryingSink]:
    """The sinks ``FRAUD_ALERT_*`` configures (none: alerts are only logged)."""
    retry: dict[str, Any] = {"timeout": settings.alert_timeout_seconds,
                             "attempts": settings.alert_attempts,
                             "retry_seconds": settings.alert_retry_seconds}  # fmt: skip
    sinks: list[_RetryingSink] = []
    if settings.alert_webhook_url:
        sinks.append(WebhookSink(settings.alert_webhook_url, **retry))
    if settings.alert_smtp_host:
        sinks.append(SmtpSink(
            settings.alert_smtp_host, settings.alert_smtp_port,
            sender=settings.alert_smtp_from, recipients=settings.alert_smtp_recipients,
            user=settings.alert_smtp_user, password=settings.alert_smtp_password,
            security=settings.alert_smtp_security, **retry,
        ))  # fmt: skip
    return sinks

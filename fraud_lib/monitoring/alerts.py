"""Alerts that reach people: one :class:`Alert` type, :func:`notify`, and :class:`AlertQueue`
for callers that must not wait (the scoring service).

:func:`notify` sends an alert to every sink configured in the environment
(:func:`fraud_lib.monitoring.sinks.sinks_from_settings`: a webhook and/or e-mail) unless an
alert with the same ``dedup_key`` was sent within ``FRAUD_ALERT_COOLDOWN_SECONDS``. That
record is the ``alert_log`` table in Postgres (claimed with one ``INSERT ... ON CONFLICT ...
WHERE``), so the cooldown holds across processes, gunicorn workers and DAG runs; when
Postgres cannot be reached, alerts are deduplicated in this process only (a page too many
beats a page lost). A delivery that fails on every sink clears the claim, so the next
occurrence is sent at once.

:func:`notify` never raises: failures are logged at WARNING (a successful Airflow task logs
no ERROR line) and the returned :class:`NotifyResult` says what happened.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from fraud_lib import pgserver, store
from fraud_lib.config import Settings
from fraud_lib.monitoring.sinks import Delivery, sinks_from_settings

log = logging.getLogger(__name__)

_MAX_COOLDOWN_SECONDS = 10 * 365 * 86400.0  # Postgres 15 has no infinite interval
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces


class AlertKind(StrEnum):
    """Every event that can page someone (one enum for all callers)."""

    DRIFT_DETECTED = "drift_detected"
    PERFORMANCE_BELOW_TOLERANCE = "performance_below_tolerance"
    CHALLENGER_PROMOTED = "challenger_promoted"
    CHALLENGER_REJECTED = "challenger_rejected"
    ROLLBACK = "rollback"
    MODEL_REFUSED = "model_refused"
    LOG_BACKLOG = "log_backlog"


class Severity(StrEnum):
    """How urgent an alert is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


def _one_line(text: str, limit: int) -> str:
    return " ".join(str(text).split())[:limit]


@dataclass(frozen=True)
class Alert:
    """What happened (title, summary), the numbers, links to the report or run, and the key
    that identifies the incident for deduplication."""

    kind: AlertKind
    severity: Severity
    title: str
    summary: str
    dedup_key: str
    numbers: dict[str, Any] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    model_name: str = ""
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AlertKind(self.kind))
        object.__setattr__(self, "severity", Severity(self.severity))
        object.__setattr__(self, "title", _one_line(self.title, 200))
        key = "_".join(str(self.dedup_key).split())
        if not _KEY.match(key):
            raise ValueError(f"dedup_key must be 1-200 printable ASCII characters: {key!r}")
        object.__setattr__(self, "dedup_key", key)

    def _number_lines(self) -> list[str]:
        return [f"{k}: {_fmt(v)}" for k, v in self.numbers.items()]

    def text(self) -> str:
        """Slack-compatible message text (mrkdwn: *bold*, <url|label> links)."""
        lines = [f"*[{self.severity.value}] {self.title}*", self.summary]
        lines += [f"• {line}" for line in self._number_lines()]
        for label, target in self.links.items():
            is_url = target.startswith(("http://", "https://"))
            lines.append(f"<{target}|{label}>" if is_url else f"{label}: {target}")
        return "\n".join(line for line in lines if line)

    def subject(self) -> str:
        """E-mail subject line."""
        return _one_line(f"[fraudloop {self.severity.value}] {self.title}", 250)

    def body(self) -> str:
        """Plain-text e-mail body."""
        parts = [self.title, "", self.summary, ""]
        parts += self._number_lines()
        parts += ["", *(f"{label}: {target}" for label, target in self.links.items())]
        parts += ["", f"event: {self.kind.value}   model: {self.model_name or '-'}",
                  f"dedup key: {self.dedup_key}"]  # fmt: skip
        return "\n".join(parts).strip() + "\n"

    def payload(self) -> dict[str, Any]:
        """The webhook JSON: Slack's ``text`` plus the structured fields."""
        data = asdict(self)
        data.update(kind=self.kind.value, severity=self.severity.value, source="fraudloop")
        data["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at))
        return {"text": self.text(), **data}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class NotifyResult:
    """What :func:`notify` did: ``status`` is sent, partial (some sinks failed), failed,
    suppressed (within the cooldown), no_sinks or error; ``dedup`` is postgres or local."""

    status: str
    dedup_key: str
    deliveries: list[Delivery] = field(default_factory=list)
    dedup: str = "postgres"
    detail: str = ""

    @property
    def sent(self) -> bool:
        return self.status in ("sent", "partial")


# ------------------------------------------------------------------------------ dedup
_migrated: set[str] = set()
_local_lock = threading.Lock()
_local_sent: dict[str, float] = {}


def _engine(settings: Settings) -> sa.Engine:
    """The alert log's engine; never starts the embedded server (an alert about a down
    database must not wait for one)."""
    url = pgserver.database_url(settings, start=False)
    engine = store.make_engine(url)
    if url not in _migrated:
        store.migrate(engine)
        _migrated.add(url)
    return engine


_CLAIM = sa.text(
    "INSERT INTO alert_log AS a (dedup_key, kind, first_sent_at, last_sent_at, sent_count, "
    "last_status) VALUES (:key, :kind, now(), now(), 1, 'sending') "
    "ON CONFLICT (dedup_key) DO UPDATE SET last_sent_at = now(), kind = excluded.kind, "
    "sent_count = a.sent_count + 1, first_sent_at = COALESCE(a.first_sent_at, now()), "
    "last_status = 'sending', updated_at = now() "
    "WHERE a.last_sent_at IS NULL OR a.last_sent_at <= now() - make_interval(secs => :cooldown) "
    "RETURNING a.dedup_key"
)
_SUPPRESSED = sa.text(
    "UPDATE alert_log SET suppressed_count = suppressed_count + 1, updated_at = now() "
    "WHERE dedup_key = :key"
)
_FINISHED = sa.text(
    "UPDATE alert_log SET last_status = :status, updated_at = now(), "
    "last_sent_at = CASE WHEN :status = 'failed' THEN NULL ELSE last_sent_at END, "
    "sent_count = sent_count - CASE WHEN :status = 'failed' THEN 1 ELSE 0 END "
    "WHERE dedup_key = :key"
)


def _claim(engine: sa.Engine, alert: Alert, cooldown: float) -> bool:
    """True if this caller may send ``alert`` now (and has recorded that it does)."""
    params = {"key": alert.dedup_key, "kind": alert.kind.value,
              "cooldown": min(cooldown, _MAX_COOLDOWN_SECONDS)}  # fmt: skip
    with store.begin(engine) as conn:
        if conn.execute(_CLAIM, params).first() is not None:
            return True
        conn.execute(_SUPPRESSED, params)
        return False


def _claim_local(alert: Alert, cooldown: float) -> bool:
    now = time.monotonic()
    with _local_lock:
        last = _local_sent.get(alert.dedup_key)
        if last is not None and now - last < cooldown:
            return False
        _local_sent[alert.dedup_key] = now
        return True


def _finish(engine: sa.Engine | None, alert: Alert, status: str) -> None:
    if engine is None:
        if status == "failed":
            with _local_lock:
                _local_sent.pop(alert.dedup_key, None)
        return
    try:
        with store.begin(engine) as conn:
            conn.execute(_FINISHED, {"key": alert.dedup_key, "status": status})
    except Exception as exc:  # the alert went out (or not) either way
        log.warning("alert %s: cannot record its status in alert_log: %s", alert.dedup_key,
                    _first_line(exc))  # fmt: skip


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------------------ notify
def notify(settings: Settings, alert: Alert, *, sinks: list[Any] | None = None) -> NotifyResult:
    """Send ``alert`` to every configured sink unless its ``dedup_key`` was sent within the
    cooldown. Never raises; see :class:`NotifyResult`."""
    try:
        return _notify(settings, alert, sinks)
    except Exception as exc:  # a bug here must not fail the caller's task or request
        log.warning("alert %s was not sent: %s", alert.dedup_key, _first_line(exc))
        return NotifyResult("error", alert.dedup_key, detail=_first_line(exc))


def _notify(settings: Settings, alert: Alert, sinks: list[Any] | None) -> NotifyResult:
    sinks = sinks_from_settings(settings) if sinks is None else sinks
    if not sinks:
        log.debug("alert %s: no sink configured (FRAUD_ALERT_*)", alert.dedup_key)
        return NotifyResult("no_sinks", alert.dedup_key)
    cooldown = settings.alert_cooldown_seconds
    engine: sa.Engine | None = None
    dedup = "postgres"
    try:
        engine = _engine(settings)
        allowed = _claim(engine, alert, cooldown)
    except Exception as exc:
        log.warning("alert %s: the alert log in Postgres is unavailable (%s); deduplicating "
                    "in this process only", alert.dedup_key, _first_line(exc))  # fmt: skip
        engine, dedup = None, "local"
        allowed = _claim_local(alert, cooldown)
    if not allowed:
        log.info("alert %s suppressed: already sent within the last %gs", alert.dedup_key,
                 cooldown)  # fmt: skip
        return NotifyResult("suppressed", alert.dedup_key, dedup=dedup)
    deliveries = [sink.send(alert) for sink in sinks]
    ok = [d for d in deliveries if d.ok]
    status = "sent" if len(ok) == len(deliveries) else "partial" if ok else "failed"
    _finish(engine, alert, status)
    if status == "sent":
        log.info("alert %s (%s) sent to %s", alert.dedup_key, alert.kind.value,
                 ", ".join(d.sink for d in deliveries))  # fmt: skip
    else:
        failed = "; ".join(f"{d.sink}: {d.error}" for d in deliveries if not d.ok)
        log.warning("alert %s (%s) %s: %s", alert.dedup_key, alert.kind.value, status, failed)
    return NotifyResult(status, alert.dedup_key, deliveries, dedup=dedup)


# ------------------------------------------------------------------------------ background
class AlertQueue:
    """Sends alerts from a daemon thread, so a caller on a hot path (the scoring service's
    model poller) never waits for a sink. Keys submitted within the cooldown are dropped
    here already, so a flapping condition costs no database round trip either."""

    def __init__(self, settings: Settings, *, maxsize: int = 100) -> None:
        self.settings = settings
        self._queue: queue.Queue[Alert] = queue.Queue(maxsize)
        self._recent: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.results: list[NotifyResult] = []  # the last few, for status and tests

    def submit(self, alert: Alert) -> bool:
        """Queue ``alert``; False if dropped (same key within the cooldown, or queue full)."""
        if not sinks_from_settings(self.settings):
            return False
        now = time.monotonic()
        with self._lock:
            last = self._recent.get(alert.dedup_key)
            if last is not None and now - last < self.settings.alert_cooldown_seconds:
                return False
            self._recent[alert.dedup_key] = now
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            log.warning("alert %s dropped: the alert queue is full", alert.dedup_key)
            return False
        return True

    def submit_built(self, build: Callable[..., Alert], *args: Any) -> bool:
        """:meth:`submit` ``build(settings, *args)``; a builder that fails is logged, never
        raised to the caller."""
        try:
            alert = build(self.settings, *args)
        except Exception as exc:
            log.warning("could not build the %s alert: %s", build.__name__, _first_line(exc))
            return False
        return self.submit(alert)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            result = notify(self.settings, alert)
            self.results = [*self.results[-9:], result]
            self._queue.task_done()

    def join(self, timeout: float = 30.0) -> bool:
        """Wait until every queued alert was handled; True if it was within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

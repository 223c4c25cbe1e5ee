"""Prometheus metrics of the scoring service.

Two modes, chosen by the environment when the app is created:

* **Multiprocess** (under gunicorn): ``serving.gunicorn_conf`` points
  ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any worker imports
  prometheus_client, so each worker writes its values to mmap files there and ``/metrics``
  (answered by any one worker) merges all of them. Counters and histograms are summed over
  every worker that ever ran (a restarted worker's counts are kept); gauges are per live worker
  (``liveall``: one sample per ``pid``) or summed over live workers (``livesum``); the master
  removes a dead worker's gauge files (``child_exit`` hook).
* **Single process** (Flask dev server, tests): one ``CollectorRegistry`` per app, so several
  apps in one process never collide.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
RISK_LEVELS = ("low", "medium", "high")  # the ``risk_level`` values, lowest first
_DECISIONS = [(fraud, level) for fraud in ("false", "true") for level in RISK_LEVELS]
# Background work whose duration bounds a staleness (README "Behavioral features", parity).
DURATION_BUCKETS = (
    0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0,
    30.0, 60.0,
)  # fmt: skip
log = logging.getLogger(__name__)
FAILURE_LOG_SECONDS = 60.0  # a failing metrics update is logged at most this often

SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def multiprocess_dir() -> str | None:
    """The prometheus_client multiprocess directory, if that mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _never_fails_a_request(update: Callable[..., None]) -> Callable[..., None]:
    """A metrics update on the request path that cannot fail the request: it runs once the
    request is logged (an error answer then would make the client send it again), so a
    failure (e.g. the multiprocess directory's disk full) is logged, at most once every
    :data:`FAILURE_LOG_SECONDS`, and the request goes on."""

    @functools.wraps(update)
    def guarded(self: Metrics, *args: Any) -> None:
        try:
            update(self, *args)
        except Exception:
            now = time.monotonic()
            if now - self._failure_logged_at >= FAILURE_LOG_SECONDS:
                self._failure_logged_at = now
                log.exception("a metrics update failed (%s); the request is answered anyway, "
                              "and this is logged at most once a minute", update.__name__)  # fmt: skip

    return guarded


class Metrics:
    """Every metric the service exports, registered on one registry."""

    def __init__(self) -> None:
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._failure_logged_at = -FAILURE_LOG_SECONDS
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fraud_http_requests", "HTTP requests answered.",
            ["endpoint", "method", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "fraud_http_request_duration_seconds", "Time to answer a request (server side).",
            ["endpoint", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.scores = Histogram(
            "fraud_score", "Fraud scores returned.", buckets=SCORE_BUCKETS, registry=r
        )
        self.decisions = Counter(
            "fraud_decisions", "Scored transactions by decision and risk level.",
            ["is_fraud", "risk_level"], registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "fraud_score_batch_size", "Transactions per /v1/score request.",
            buckets=(1, 2, 10, 100, 1000, 10000), registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "fraud_model_info", "1 for the model version this worker serves, 0 for earlier ones.",
            ["name", "version", "predictor"], multiprocess_mode="liveall", registry=r,
        )  # fmt: skip
        self.model_version = Gauge(
            "fraud_model_version", "Numeric model version served by this worker (0: none).",
            multiprocess_mode="liveall", registry=r,
        )  # fmt: skip
        self.model_loaded_at = Gauge(
            "fraud_model_loaded_timestamp_seconds", "When this worker loaded its model.",
            multiprocess_mode="liveall", registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "fraud_model_reloads", "Model load attempts by result and failure reason.",
            ["result", "reason"], registry=r,
        )  # fmt: skip
        self.log_backlog_records = Gauge(
            "fraud_prediction_log_backlog_records",
            "Spooled predictions not yet in Postgres (the writer's queue depth).",
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.log_backlog_bytes = Gauge(
            "fraud_prediction_log_spool_bytes", "Bytes of spool not yet shipped to Postgres.",
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.log_spooled = Counter(
            "fraud_prediction_log_spooled", "Predictions appended to the local spool.", registry=r
        )
        self.log_rows_written = Counter(
            "fraud_prediction_log_rows_written",
            "Prediction rows shipped to Postgres (new rows; replays of stored ids not counted).",
            registry=r,
        )  # fmt: skip
        self.log_write_errors = Counter(
            "fraud_prediction_log_write_errors", "Failed shipping attempts by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.log_copy_seconds = Histogram(
            "fraud_prediction_log_copy_seconds",
            "Prediction-log shipping transactions (COPY into Postgres and commit): a row's "
            "written_at is its transaction's start, and it is visible from the commit.",
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.label_refresh_seconds = Histogram(
            "fraud_label_refresh_seconds",
            "Label risk cache refreshes (behavioral champions): a label counts from the end of "
            "the first refresh that begins once it and its prediction row are in Postgres.",
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.log_db_up = Gauge(
            "fraud_prediction_log_db_up", "1 if this worker's last write to Postgres succeeded.",
            multiprocess_mode="liveall", registry=r,
        )  # fmt: skip

    @_never_fails_a_request
    def observe_request(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        """Count one answered request and its latency."""
        self._child(self.requests, endpoint, method, status).inc()
        self._child(self.latency, endpoint, status).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept after the first call (``labels()`` takes a lock and
        builds a tuple of strings each time: ~15 us of the ~35 us per request of two calls)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child

    @_never_fails_a_request
    def spooled(self, records: int) -> None:
        """Count predictions appended to the spool."""
        self.log_spooled.inc(records)

    @_never_fails_a_request
    def observe_scores(self, scores: np.ndarray, is_fraud: np.ndarray, levels: np.ndarray) -> None:
        """Record a request's scores: its size, the histogram in bulk, decisions by (is_fraud,
        risk level); ``levels`` holds indices in :data:`RISK_LEVELS`."""
        self.batch_size.observe(len(scores))
        if len(scores) == 1:
            self.scores.observe(float(scores[0]))
            fraud = "true" if is_fraud[0] else "false"
            self._child(self.decisions, fraud, RISK_LEVELS[levels[0]]).inc()
            return
        counts = np.bincount(
            np.searchsorted(SCORE_BUCKETS, scores, side="left"), minlength=len(SCORE_BUCKETS) + 1
        )
        child = self.scores
        buckets = getattr(child, "_buckets", None)
        total = getattr(child, "_sum", None)
        if buckets is not None and total is not None and len(buckets) == len(counts):
            # prometheus_client has no bulk observe; one inc per bucket instead of one observe
            # per score keeps a 10,000-row batch at ~20 increments (checked by the tests).
            for bucket, n in zip(buckets, counts.tolist(), strict=True):
                if n:
                    bucket.inc(n)
            total.inc(float(np.sum(scores)))
        else:  # pragma: no cover - other prometheus_client layouts
            for s in scores.tolist():
                child.observe(s)
        pairs = np.bincount(is_fraud.astype(np.intp) * len(RISK_LEVELS) + levels,
                            minlength=2 * len(RISK_LEVELS))  # fmt: skip
        for (fraud, level), count in zip(_DECISIONS, pairs.tolist(), strict=True):
            if count:
                self._child(self.decisions, fraud, level).inc(count)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every worker (multiprocess) or of this app's registry."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

"""Watching the model in production and telling people.

This package owns what happens after a model is served: :mod:`fraud_lib.monitoring.alerts`
(the :class:`~fraud_lib.monitoring.alerts.Alert` type, the one :class:`AlertKind` enum every
caller uses, :func:`~fraud_lib.monitoring.alerts.notify` with deduplication in Postgres),
:mod:`fraud_lib.monitoring.sinks` (webhook and SMTP delivery with retries) and
:mod:`fraud_lib.monitoring.events` (one builder per event: the text, the numbers, the links).
Realized performance by scoring-day cohort as labels mature is
:mod:`fraud_lib.monitoring.performance`. Drift detection itself stays in :mod:`fraud_lib.drift`; Prometheus alerting rules for the
scoring service are in ``deploy/prometheus/alerts.yml``.
"""

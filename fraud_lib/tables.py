"""The Postgres tables of fraudloop (SQLAlchemy 2 Core): predictions (the log), labels,
model_events (decision history), alert_log (alert deduplication), performance_cohorts
(realized performance per scoring day), and the prediction fields the log COPYs. Created and
written by :mod:`fraud_lib.store`."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSON, JSONB

metadata = sa.MetaData()
TZ = sa.DateTime(timezone=True)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("prediction_id", sa.Text, primary_key=True),
    sa.Column("transaction_id", sa.Text, nullable=False),
    sa.Column("scored_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("event_time", sa.Double),
    # json, not jsonb: stored as sent, so a COPY spends no server CPU re-parsing every row into
    # jsonb (half the server time of a 10,000-row COPY); read by json_to_record as fast.
    sa.Column("features", JSON, nullable=False),
    sa.Column("score", sa.Double, nullable=False),
    sa.Column("is_fraud", sa.Boolean),
    sa.Column("threshold", sa.Double),
    sa.Column("risk_level", sa.Text),
    sa.Column("model_name", sa.Text),
    sa.Column("model_version", sa.Text),
    sa.Column("request_id", sa.Text),
    sa.Column("written_at", TZ, nullable=False, server_default=sa.func.now()),
    # (transaction_id, scored_at) serves lookups by id and "latest prediction per transaction".
    sa.Index("ix_predictions_tx_scored_at", "transaction_id", "scored_at"),
    sa.Index("ix_predictions_scored_at", "scored_at"),
    # the label cache's refresh reads the rows written since its previous one
    sa.Index("ix_predictions_written_at", "written_at"),
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("transaction_id", sa.Text, primary_key=True),
    sa.Column("label", sa.SmallInteger, nullable=False),
    sa.Column("labeled_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("source", sa.Text, nullable=False, server_default="api"),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("label IN (0, 1)", name="ck_labels_label_01"),
    sa.Index("ix_labels_updated_at", "updated_at"),
)

# The usual model_events.event values (any lowercase word is accepted, e.g. "dry_run").
MODEL_EVENTS = (
    "promoted",
    "rejected",
    "rolled_back",
    "registered",
    "conflict",
    "skipped",
    "dry_run",
)

model_events_table = sa.Table(
    "model_events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("version", sa.Text),
    sa.Column("previous_version", sa.Text),
    sa.Column("metric_name", sa.Text),
    sa.Column("challenger_metric", sa.Double),
    sa.Column("champion_metric", sa.Double),
    sa.Column("reason", sa.Text),
    sa.Column("details", JSONB),
    sa.Column("run_id", sa.Text),
    sa.Index("ix_model_events_model_created", "model_name", "created_at"),
)

# One row per alert deduplication key: what fraud_lib.monitoring.alerts has sent and when,
# so the cooldown holds across processes, workers and DAG runs.
alert_log_table = sa.Table(
    "alert_log",
    metadata,
    sa.Column("dedup_key", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("first_sent_at", TZ),
    sa.Column("last_sent_at", TZ),
    sa.Column("sent_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("suppressed_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_status", sa.Text, nullable=False),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
)
# One row per performance-monitor run (as_of), scoring day and served model version; written
# by fraud_lib.monitoring.performance (upsert on the key, so a re-run rewrites its own rows).
performance_cohorts = sa.Table(
    "performance_cohorts",
    metadata,
    sa.Column("as_of", TZ, primary_key=True),
    sa.Column("cohort_day", sa.Date, primary_key=True),
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("mature", sa.Boolean, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("labeled", sa.Integer, nullable=False),
    sa.Column("frauds", sa.Integer, nullable=False),
    sa.Column("label_coverage", sa.Double, nullable=False),
    *(sa.Column(c, sa.Double) for c in ("threshold", "alert_rate", "average_precision",
                                         "roc_auc", "precision", "recall", "f1",
                                         "card_precision_at_k", "expected_cost")),
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("written_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Index("ix_performance_cohorts_version_day", "model_version", "cohort_day"),
)  # fmt: skip

# Fields of a prediction row given to insert_predictions, with their COPY types.
PREDICTION_COPY_TYPES = (
    ("prediction_id", "text"), ("transaction_id", "text"), ("scored_at", "timestamptz"),
    ("event_time", "float8"), ("features", "json"), ("score", "float8"), ("is_fraud", "bool"),
    ("threshold", "float8"), ("risk_level", "text"), ("model_name", "text"),
    ("model_version", "text"), ("request_id", "text"),
)  # fmt: skip
PREDICTION_FIELDS = tuple(c for c, _ in PREDICTION_COPY_TYPES)
BASE_COLUMNS = (
    "transaction_id", "prediction_id", "scored_at", "event_time", "score", "is_fraud",
    "threshold", "risk_level", "model_name", "model_version",
)  # fmt: skip

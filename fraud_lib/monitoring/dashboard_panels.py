"""What the monitoring dashboard shows: the Evidently metric that carries fraudloop's numbers,
the one-row reports built from them, and the panel layout.

The only module of the dashboard that imports Evidently (0.7), so an API change touches one
file. Numbers that are not Evidently metrics (score PSI, champion version, decisions, realized
performance per cohort) travel as :class:`RecordedValue` metrics over a one-row dataset whose
columns are the numbers: the smallest snapshots (a counter widget each, ~1 KB per value) that
the Evidently UI plots like any of its own metrics.

A panel series is selected by metric type, labels and snapshot tags, but the UI merges series
whose labels agree whatever their tags; so the label maturity of a cohort is a metric label
(``maturity``), not only a tag, and the mature and provisional lines stay apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.metric_types import ColumnMetric, SingleValueCalculation, SingleValueMetric
from evidently.core.report import Snapshot
from evidently.sdk.models import DashboardModel, DashboardPanelPlot, DashboardTabModel, PanelMetric
from evidently.sdk.panels import bar_plot_panel, line_plot_panel

DRIFT_MONITOR, DECISION, PERFORMANCE = "drift_monitor", "decision", "performance"
KINDS = (DRIFT_MONITOR, DECISION, PERFORMANCE)
MATURE, PROVISIONAL = "mature", "provisional"
TAB_TITLE = "Monitoring"
_IDS = uuid.UUID("5f1d0c2e-4b1a-4c39-9a57-6f7c1e0d2b11")  # namespace of the panel ids

# Human names of the recorded columns (the counter label in a snapshot's report view).
LABELS = {
    "drifted_share": "share of drifted features",
    "drift_share_threshold": "drift share threshold",
    "score_psi": "score PSI",
    "score_shift_threshold": "score PSI threshold",
    "predictions_checked": "predictions checked for drift",
    "champion_version": "champion version",
    "challenger_version": "challenger version",
    "promoted": "promoted",
    "rejected": "rejected",
    "rolled_back": "rolled back",
    "challenger_metric": "challenger metric",
    "champion_metric": "champion metric",
    "model_version": "served model version",
    "average_precision": "average precision",
    "recall": "recall",
    "card_precision_at_k": "card precision at k",
    "alert_rate_percent": "alert rate (%)",
    "volume": "predictions",
    "label_coverage": "label coverage",
}


class RecordedValue(ColumnMetric, SingleValueMetric):
    """A number fraudloop recorded: the value of ``column`` in a one-row dataset.

    ``maturity`` ("mature", "provisional" or "") keeps realized-performance series of mature
    and provisional cohorts apart in the dashboard.
    """

    maturity: str = ""


class RecordedValueCalculation(SingleValueCalculation[RecordedValue]):
    """Reads the single value; Evidently renders it as a counter."""

    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None):
        """The column's only value."""
        return self.result(float(current_data.column(self.metric.column).data.iloc[0]))

    def display_name(self) -> str:
        """E.g. ``average precision (provisional)``."""
        name = LABELS.get(self.metric.column, self.metric.column)
        return f"{name} ({self.metric.maturity})" if self.metric.maturity else name


def values_snapshot(
    values: Mapping[str, float],
    *,
    timestamp: datetime,
    tags: Sequence[str],
    metadata: Mapping[str, str],
    maturity: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Snapshot:
    """An Evidently snapshot whose metrics are ``values`` (column -> number) at ``timestamp``;
    ``maturity`` labels some columns (see :class:`RecordedValue`)."""
    maturity = maturity or {}
    frame = pd.DataFrame([{k: float(v) for k, v in values.items()}])
    dataset = Dataset.from_pandas(
        frame, data_definition=DataDefinition(numerical_columns=list(frame.columns))
    )
    metrics = [RecordedValue(column=c, maturity=maturity.get(c, "")) for c in frame.columns]
    return Report(metrics).run(
        dataset, None, timestamp=timestamp, tags=list(tags), metadata=dict(metadata), name=name
    )


@dataclass(frozen=True)
class _Series:
    legend: str
    column: str
    kind: str | None = None  # snapshot tag; None: any kind
    maturity: str = ""

    def metric(self) -> PanelMetric:
        labels = {"column": self.column, **({"maturity": self.maturity} if self.maturity else {})}
        return PanelMetric(
            legend=self.legend,
            metric="RecordedValue",
            metric_labels=labels,
            tags=[self.kind] if self.kind else [],
        )


def _cohort_series(column: str) -> list[_Series]:
    return [
        _Series("mature cohorts", column, PERFORMANCE, MATURE),
        _Series("provisional cohorts", column, PERFORMANCE, PROVISIONAL),
    ]


# (title, description, plot type, series); panels are half width, two per row.
PANELS: list[tuple[str, str, str, list[_Series]]] = [
    ("Share of drifted features", "fraud_drift_monitor: recent traffic vs the champion's "
     "training reference", "line", [
         _Series("share of drifted features", "drifted_share", DRIFT_MONITOR),
         _Series("threshold", "drift_share_threshold", DRIFT_MONITOR)]),
    ("Score PSI", "fraud_drift_monitor: population stability index of the champion's score",
     "line", [_Series("score PSI", "score_psi", DRIFT_MONITOR),
              _Series("threshold", "score_shift_threshold", DRIFT_MONITOR)]),
    ("Realized average precision per cohort", "performance monitor, per scoring day and "
     "served version; provisional: labels still arriving", "line",
     _cohort_series("average_precision")),
    ("Realized recall per cohort", "at the served threshold", "line", _cohort_series("recall")),
    ("Card precision at k per cohort", "precision among the k highest-scored per day (k = "
     "analyst capacity)", "line", _cohort_series("card_precision_at_k")),
    ("Alert rate per cohort (%)", "share of the day's predictions flagged as fraud", "line",
     [_Series("alert rate (%)", "alert_rate_percent", PERFORMANCE)]),
    ("Volume", "predictions per cohort, and predictions each drift check compared", "bar",
     [_Series("predictions per cohort", "volume", PERFORMANCE),
      _Series("predictions checked for drift", "predictions_checked", DRIFT_MONITOR)]),
    ("Champion version over time", "after each decision and at each drift check; the version "
     "served per cohort", "line",
     [_Series("champion version", "champion_version"),
      _Series("served version per cohort", "model_version", PERFORMANCE)]),
    ("Promotion decisions", "one bar per decision of the promotion gate (fraud_retrain, "
     "fraud promote) and per rollback", "bar",
     [_Series("promoted", "promoted", DECISION), _Series("rejected", "rejected", DECISION),
      _Series("rolled back", "rolled_back", DECISION)]),
]  # fmt: skip


def dashboard_model() -> DashboardModel:
    """The dashboard: one tab, the :data:`PANELS`; ids derive from the titles, so the same
    definition always yields an equal model (compare it to decide whether to save)."""
    panels: list[DashboardPanelPlot] = []
    for title, description, plot, series in PANELS:
        make = line_plot_panel if plot == "line" else bar_plot_panel
        panel = make(title, [s.metric() for s in series], description=description, size="half")
        panel.id = uuid.uuid5(_IDS, title)
        panels.append(panel)
    tab = DashboardTabModel(
        id=uuid.uuid5(_IDS, "tab:" + TAB_TITLE), title=TAB_TITLE, panels=[p.id for p in panels]
    )
    return DashboardModel(tabs=[tab], panels=panels)

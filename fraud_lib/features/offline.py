"""The offline, point-in-time correct builder: every behavioral feature for every event, at once.

The rules below are the definition; the online computer must implement exactly them.

* **Order and ties.** Events are ordered by (entity, event time, id); an event at time ``t`` sees
  the same entity's events with a *strictly earlier* time. Events with equal timestamps never see
  each other (whichever arrives first), so the result does not depend on arrival order or on the
  id, only on the event times. The id (input position without an id column) only fixes the
  summation order. Entity keys are compared as text.
* **Aggregate windows.** Event ``e`` is in window ``w`` of the event at ``t`` when
  ``e.time < t`` and ``e.time + w > t`` (float64 arithmetic on epoch seconds); with
  ``include_current`` the event itself is added. ``std`` is the population standard deviation
  (ddof 0); ``ratio`` is the current value divided by the window mean.
* **Empty history.** A window without events gives count 0 and sum, mean, std, max and ratio 0
  (also ratio 0 when the mean is 0); no earlier event gives time since previous -1
  (:data:`~fraud_lib.features.spec.NO_PREVIOUS`). Every feature is finite, so logs stay JSON.
* **Label risk.** Event ``e`` counts for the event at ``t`` when ``e.time + D < t``,
  ``e.time + D + w > t`` (``D`` the delay, 0 without one) and its label is known:
  ``labeled_at <= t``. The current event's own label never counts. ``frauds`` and ``labeled``
  count known fraud labels and known labels; ``rate`` is frauds / labeled (0 without labels).
* **Calendar.** From the event time in epoch seconds, UTC: ``hour`` (0..23), ``day_of_week``
  (Monday 0), ``weekend`` (Saturday, Sunday), ``night`` (hour < 6).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
import pandas as pd

from fraud_lib.data import DELAY_COLUMN, SECONDS_PER_DAY
from fraud_lib.errors import DataError
from fraud_lib.features.kernels import (
    Moments,
    count_in_group,
    group_slices,
    grouped_searchsorted,
    row_stats,
    window_moments,
)
from fraud_lib.features.spec import (
    LABELS_COLUMNS,
    NIGHT_END_HOUR,
    NO_PREVIOUS,
    SEP,
    STATS,
    Aggregate,
    BehaviorSpec,
    LabelRisk,
)

logger = logging.getLogger(__name__)

EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def epoch_seconds(values: pd.Series, column: str) -> np.ndarray:
    """Event times as float64 seconds since the Unix epoch (UTC).

    Accepts numbers (taken as epoch seconds), datetimes (naive = UTC) and ISO 8601 text.
    """
    if pd.api.types.is_bool_dtype(values):
        raise DataError(f"column {column!r} must hold times, not true/false")
    if pd.api.types.is_numeric_dtype(values):
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        try:
            stamps = pd.to_datetime(values, utc=True, format="ISO8601")
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataError(
                f"column {column!r} must hold epoch seconds or ISO 8601 times: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        nat = stamps.isna().to_numpy()
        out = stamps.astype("int64").to_numpy().astype(np.float64) / 1e9
        out[nat] = np.nan
    return out


def _check_events(spec: BehaviorSpec, events: pd.DataFrame) -> np.ndarray:
    """Validate the raw columns the spec reads; return the event times (epoch seconds)."""
    missing = [c for c in spec.raw_columns if c not in events.columns]
    if missing:
        raise DataError(f"missing column(s) for the behavioral features: {', '.join(missing)}")
    t = epoch_seconds(events[spec.time], spec.time)
    _first_bad(~np.isfinite(t), spec.time, "has a missing or non-finite time")
    for name, col in spec.entities:
        _first_bad(events[col].isna().to_numpy(), col, f"has no {name} key")
    for col in {a.column for a in spec.aggregates}:
        values = pd.to_numeric(events[col], errors="coerce").to_numpy(dtype=np.float64)
        _first_bad(~np.isfinite(values), col, "must be a finite number")
    return t


def _first_bad(bad: np.ndarray, column: str, what: str) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"column {column!r} {what} at row {row}", fields={column: what})


def calendar_features(spec: BehaviorSpec, t: np.ndarray) -> dict[str, np.ndarray]:
    """Calendar features of epoch-second times (UTC)."""
    day = np.floor(t / SECONDS_PER_DAY)
    hour = np.floor((t - day * SECONDS_PER_DAY) / 3600.0)
    dow = np.mod(day + EPOCH_WEEKDAY, 7)
    values = {
        "hour": hour,
        "day_of_week": dow,
        "weekend": (dow >= 5).astype(np.float64),
        "night": (hour < NIGHT_END_HOUR).astype(np.float64),
    }
    return {f"calendar{SEP}{c}": values[c] for c in spec.calendar}


def calendar_row(spec: BehaviorSpec, t: float) -> dict[str, float]:
    """:func:`calendar_features` of one time in Python floats (the same IEEE operations; ~10
    numpy calls on one-element arrays cost more than the rest of a transaction's calendar)."""
    day = float(math.floor(t / SECONDS_PER_DAY))
    hour = float(math.floor((t - day * SECONDS_PER_DAY) / 3600.0))
    dow = (day + EPOCH_WEEKDAY) % 7
    values = {"hour": hour, "day_of_week": dow, "weekend": float(dow >= 5),
              "night": float(hour < NIGHT_END_HOUR)}  # fmt: skip
    return {f"calendar{SEP}{c}": values[c] for c in spec.calendar}


def labels_from_events(spec: BehaviorSpec, events: pd.DataFrame, t: np.ndarray) -> pd.DataFrame:
    """Labels carried by the raw table itself: ``label`` plus when each became known.

    ``labeled_at`` comes from the spec's ``labeled_at`` column, else event time + the
    generators' ``label_delay_seconds`` column, else event time + the spec's ``label_delay``
    (the data's own timing first, the assumption last). A row with no label is never counted.
    """
    if spec.label not in events.columns:
        raise DataError(f"label risk needs the label column {spec.label!r}")
    if spec.labeled_at and spec.labeled_at in events.columns:
        known = epoch_seconds(events[spec.labeled_at], spec.labeled_at)
    elif DELAY_COLUMN in events.columns:
        known = t + pd.to_numeric(events[DELAY_COLUMN], errors="coerce").to_numpy(np.float64)
    elif spec.label_delay is not None:
        known = t + spec.label_delay.seconds
    else:
        raise DataError(
            "label risk needs to know when each label arrived: add a "
            f"{spec.labeled_at or 'labeled_at'!r} column or set behavior.label_delay"
        )
    return pd.DataFrame(
        {
            "label": pd.to_numeric(events[spec.label], errors="coerce").to_numpy(),
            "labeled_at": known,
        },
        index=events.index,
    )


def _aligned_labels(
    spec: BehaviorSpec, events: pd.DataFrame, labels: pd.DataFrame | None, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per event: its label (NaN if none) and when it became known (NaN if never)."""
    if labels is None:
        table = labels_from_events(spec, events, t)
        y, known = table["label"].to_numpy(np.float64), table["labeled_at"].to_numpy(np.float64)
    else:
        missing = [c for c in LABELS_COLUMNS if c not in labels.columns]
        if missing or not spec.id:
            raise DataError(
                f"labels need columns {', '.join(LABELS_COLUMNS)} and the schema an 'id' column "
                "to join them to the events"
            )
        ids = labels["transaction_id"].astype(str)
        if ids.duplicated().any():
            raise DataError(f"labels: transaction id {ids[ids.duplicated()].iloc[0]!r} twice")
        pos = pd.Index(ids).get_indexer(events[spec.id].astype(str))  # -1: no label
        y_all = pd.to_numeric(labels["label"], errors="coerce").to_numpy(np.float64)
        y = np.append(y_all, np.nan)[pos]
        known = np.append(epoch_seconds(labels["labeled_at"], "labeled_at"), np.nan)[pos]
    bad = np.isfinite(known) & ~np.isin(y, (0.0, 1.0))
    _first_bad(bad, "label", "must be 0 or 1 where labeled_at is set")
    return y, np.where(np.isfinite(y), known, np.nan)


class _EntityView:
    """One entity's events sorted by (key, time, tie-break), with the window bounds."""

    def __init__(self, keys: pd.Series, t: np.ndarray, tiebreak: np.ndarray) -> None:
        codes = pd.factorize(keys.astype(str))[0]
        self.order = np.lexsort((tiebreak, t, codes))
        self.codes = codes[self.order]
        self.t = t[self.order]
        self.start, self.end = group_slices(self.codes, self.codes)
        self.earlier_end = grouped_searchsorted(self.t, self.start, self.end, self.t, "left")

    def window_start(self, seconds: float) -> np.ndarray:
        """First index of the window: the earliest event with ``e.time + w > t``."""
        return grouped_searchsorted(self.t + seconds, self.start, self.end, self.t, "right")

    def scatter(self, sorted_values: np.ndarray) -> np.ndarray:
        """Values in sorted order back to the input row order."""
        out = np.empty_like(sorted_values)
        out[self.order] = sorted_values
        return out


def window_stat(aggregate: Aggregate, m: Moments, x: np.ndarray) -> np.ndarray:
    """One stat from window moments (empty windows give 0, see the module docstring), by the
    compiled rule the online single-transaction kernel applies too
    (:func:`~fraud_lib.features.kernels.row_stats`); shared with the online computer."""
    out = np.empty(len(m.n))
    row_stats(STATS.index(aggregate.stat), m.n, m.s, m.m2, m.mx,
              np.asarray(x, dtype=np.float64), out)  # fmt: skip
    return out


def _aggregates(view: _EntityView, aggs: list[Aggregate], events: pd.DataFrame) -> dict:
    out: dict[str, np.ndarray] = {}
    by_column: dict[str, list[Aggregate]] = defaultdict(list)
    for a in aggs:
        by_column[a.column].append(a)
    for column, group in by_column.items():
        x = pd.to_numeric(events[column]).to_numpy(np.float64)[view.order]
        windows = list(dict.fromkeys(a.window for a in group))
        ranges = [(view.window_start(w.seconds), view.earlier_end) for w in windows]
        moments = dict(zip(windows, window_moments(x, ranges), strict=True))
        with_current = {w: m.with_current(x) for w, m in moments.items()}
        for a in group:
            m = with_current[a.window] if a.include_current else moments[a.window]
            out[a.name] = view.scatter(window_stat(a, m, x))
    return out


def _time_since(view: _EntityView) -> np.ndarray:
    prev = view.earlier_end - 1
    has = view.earlier_end > view.start
    gap = np.where(has, view.t - view.t[np.maximum(prev, 0)], NO_PREVIOUS)
    return view.scatter(gap)


def _risk_counts(
    view: _EntityView, y: np.ndarray, known: np.ndarray, delay: float, window: float
) -> tuple[np.ndarray, np.ndarray]:
    """Known frauds and known labels in each event's label window (sorted order)."""
    shifted = view.t + delay
    start = np.maximum(np.nextafter(shifted, np.inf), known)  # t > e.time + D and t >= labeled_at
    end = shifted + window  # t < e.time + D + w
    counts = []
    for wanted in (y == 1.0, np.isfinite(known)):
        keep = wanted & np.isfinite(known) & (start < end)
        codes = view.codes[keep]
        by_start = np.lexsort((start[keep], codes))
        began = count_in_group(codes[by_start], start[keep][by_start], view.codes, view.t)
        ended = count_in_group(codes, end[keep], view.codes, view.t)  # already sorted by time
        counts.append((began - ended).astype(np.float64))
    return counts[0], counts[1]


def _label_risk(view: _EntityView, risks: list[LabelRisk], y: np.ndarray, known: np.ndarray):
    out: dict[str, np.ndarray] = {}
    y_s, known_s = y[view.order], known[view.order]
    for key in dict.fromkeys((r.window, r.delay) for r in risks):
        window, delay = key
        frauds, labeled = _risk_counts(
            view, y_s, known_s, delay.seconds if delay else 0.0, window.seconds
        )
        rate = np.divide(frauds, labeled, out=np.zeros_like(frauds), where=labeled > 0)
        values = {"frauds": frauds, "labeled": labeled, "rate": rate}
        for r in risks:
            if (r.window, r.delay) == key:
                out[r.name] = view.scatter(values[r.stat])
    return out


def build_features(
    spec: BehaviorSpec, events: pd.DataFrame, labels: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every feature of ``spec`` for every row of ``events``, point-in-time correct.

    ``events`` holds the raw columns (any row order; the result is aligned to its index).
    ``labels`` has columns ``transaction_id, label, labeled_at`` joined on the schema's id;
    ``None`` reads the labels from ``events`` (:func:`labels_from_events`), which is only
    needed when the spec has label risk. Raises :class:`DataError` on unusable input.
    """
    if events.empty:
        raise DataError("no events to build features from; give at least one transaction")
    t = _check_events(spec, events)
    out: dict[str, np.ndarray] = calendar_features(spec, t)
    if spec.id and spec.id in events.columns:
        tiebreak = pd.factorize(events[spec.id].astype(str), sort=True)[0]
    else:
        tiebreak = np.arange(len(events))
    y = known = None
    if spec.label_risk:
        y, known = _aligned_labels(spec, events, labels, t)
    for name, column in spec.entities:
        aggs = [a for a in spec.aggregates if a.entity == name]
        risks = [r for r in spec.label_risk if r.entity == name]
        since = any(s.entity == name for s in spec.time_since)
        if not (aggs or risks or since):
            continue
        view = _EntityView(events[column], t, tiebreak)
        out.update(_aggregates(view, aggs, events))
        if since:
            out[f"{name}{SEP}time_since_prev"] = _time_since(view)
        if risks:
            out.update(_label_risk(view, risks, y, known))
    logger.debug("built %d features for %d events", len(out), len(events))
    return pd.DataFrame(out, index=events.index)[spec.output_columns]

"""Online/offline parity of the behavioral features: the replay world, the lag rules, the check.

A replay (:mod:`fraud_lib.features.replay`) sends raw transactions to the running service and
records, per request, when it was sent and when its answer came back (wall clock, seconds), and
per label when its ``POST /v1/labels`` was acknowledged. Every logged online feature is then
compared with :func:`~fraud_lib.features.offline.build_features` over the same history (the
logged raw rows plus the labels table), except the cells *inside the lag*, defined exactly:

* **Event lag** (aggregates and time since previous of entity ``E``). Row ``r`` (request ``q``,
  sent at ``send_q``) is inside it when some event ``e`` of the same ``E`` key with an earlier
  event time was sent in *another* request ``p`` acknowledged after ``send_q``
  (``ack_p > send_q``): concurrent or out-of-order arrival. The state is appended in the same
  atomic Redis call that reads it, before the answer is sent, so an acknowledged event is seen
  by every later request on any worker; the stated event lag is therefore 0 after the
  acknowledgement.
* **Label lag** (label risk of ``E`` with window ``w`` and delay ``D``). A label counts online
  once both it and its event's prediction row are in Postgres (the label cache joins them):
  from ``in_l = max(ack_l, written_l)``, the label's acknowledgement and the prediction row's
  ``written_at``. Row ``r`` is inside the lag when a label it counts offline (same ``E`` key,
  ``t_e + D < t_r < t_e + D + w``, ``labeled_at <= t_r``) came in less than ``label_lag``
  seconds before ``send_q`` (or after): ``in_l > send_q - label_lag``. :func:`stated_label_lag`
  gives ``label_lag`` from what the service measured in the same run: the cache's refresh
  interval, plus two refreshes (a label committed just after a refresh began waits for it, the
  interval and the next one) and one prediction-log COPY (a row is visible from its commit, not
  its ``written_at``), each as long as the longest of the run (``fraud_label_refresh_seconds``
  and ``fraud_prediction_log_copy_seconds`` on ``/metrics``: the bucket bound above it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from fraud_lib.data import SECONDS_PER_DAY
from fraud_lib.features.offline import build_features
from fraud_lib.features.raw_data import generate_raw
from fraud_lib.features.spec import SEP, BehaviorSpec

REFRESH_METRIC = "fraud_label_refresh_seconds"
COPY_METRIC = "fraud_prediction_log_copy_seconds"
PARITY_RTOL = 1e-9
RAW_FIELDS = ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount")


def parity_world(rows: int, worlds: int, days: int, seed: int, now: float) -> pd.DataFrame:
    """``worlds`` generated raw worlds with disjoint entity keys, ~``rows`` transactions in all.

    Times are shifted by whole days so the last label arrives at least two days before ``now``
    (the input timestamp rules refuse the future). One row in a hundred gets the time of its
    customer's previous transaction (equal timestamps). Columns: the raw fields, ``is_fraud``,
    ``labeled_at`` and ``world``.
    """
    parts = []
    for k in range(worlds):
        raw = generate_raw(days, total_rows=rows // worlds, fraud_rate=0.01, seed=seed + k)
        for col in ("customer_id", "terminal_id"):
            raw[col] = f"p{seed}w{k}-" + raw[col].astype(str)
        raw["world"] = k
        parts.append(raw)
    raw = pd.concat(parts, ignore_index=True)
    shift = np.floor((now - raw["labeled_at"].max()) / SECONDS_PER_DAY - 2) * SECONDS_PER_DAY
    raw[["timestamp", "labeled_at"]] += shift
    raw = raw.sort_values(["customer_id", "timestamp"], kind="stable")
    rng = np.random.default_rng(seed)
    same = (raw["customer_id"].to_numpy()[1:] == raw["customer_id"].to_numpy()[:-1]) & (
        rng.random(len(raw) - 1) < 0.01
    )
    t = raw["timestamp"].to_numpy().copy()
    t[1:][same] = t[:-1][same]
    raw["timestamp"] = t
    raw["labeled_at"] = np.maximum(raw["labeled_at"], raw["timestamp"])
    keep = [*RAW_FIELDS, "is_fraud", "labeled_at", "world"]
    return raw.sort_values("timestamp", kind="stable").reset_index(drop=True)[keep]


@dataclass
class ReplayLog:
    """What a replay did: per row its request; per request send/ack; per posted label its ack."""

    rows: pd.DataFrame  # transaction_id, request
    requests: pd.DataFrame  # request, send, ack (wall-clock seconds)
    labels: pd.DataFrame  # transaction_id, ack


def _event_lag(keys: np.ndarray, t: np.ndarray, req: np.ndarray, log: ReplayLog) -> np.ndarray:
    """Rows inside the event lag for one entity (module docstring). Requests are swept by
    descending send time: ``earliest`` holds each key's earliest event time among the requests
    sent later (all acknowledged after this send); requests sent earlier but still in flight
    are checked one by one."""
    codes = pd.factorize(keys)[0]
    by_req = pd.Series(np.arange(len(req))).groupby(req).indices
    reqs = log.requests.sort_values("send", ascending=False)
    send, ack = reqs["send"].to_numpy(), reqs["ack"].to_numpy()
    earliest = np.full(codes.max() + 1, np.inf)
    inside = np.zeros(len(t), dtype=bool)
    for i, q in enumerate(reqs["request"].to_numpy()):
        rows = by_req.get(q)
        if rows is None:
            continue
        lagged = earliest[codes[rows]] < t[rows]
        for p in reqs["request"].to_numpy()[i + 1 :][ack[i + 1 :] > send[i]]:  # in flight
            if p in by_req:
                other = np.full_like(earliest, np.inf)
                np.minimum.at(other, codes[by_req[p]], t[by_req[p]])
                lagged |= other[codes[rows]] < t[rows]
        inside[rows] = lagged
        np.minimum.at(earliest, codes[rows], t[rows])
    return inside


def _label_lag(spec: BehaviorSpec, events: pd.DataFrame, labels: pd.DataFrame, req: np.ndarray,
               log: ReplayLog, label_lag: float) -> dict[str, np.ndarray]:  # fmt: skip
    """Per label-risk feature, the rows inside the label lag (module docstring)."""
    out = {r.name: np.zeros(len(events), dtype=bool) for r in spec.label_risk}
    if not spec.label_risk or labels.empty:
        return out
    acks = log.labels.set_index("transaction_id")["ack"]
    lab = labels[["transaction_id", "k"]].assign(ack=labels["transaction_id"].map(acks))
    lab = lab.dropna(subset=["ack"]).merge(events, on="transaction_id")
    lab["ack"] = np.maximum(lab["ack"], lab["written"])  # in the cache from both on
    sends = log.requests.set_index("request")["send"]
    by_req = pd.Series(np.arange(len(req))).groupby(req).indices
    columns = dict(spec.entities)
    for q, rows in by_req.items():
        rq = events.iloc[rows]
        fresh = lab[(lab["ack"] > sends[q] - label_lag) & (lab["k"] <= rq["t"].max())]
        if fresh.empty:
            continue
        for r in spec.label_risk:
            col = columns[r.entity]
            pairs = rq.reset_index().merge(fresh, on=col, suffixes=("", "_l"))
            d = r.delay.seconds if r.delay else 0.0
            hit = (pairs["t_l"] + d < pairs["t"]) & (
                pairs["t"] < pairs["t_l"] + d + r.window.seconds
            )
            hit &= pairs["k"] <= pairs["t"]
            out[r.name][pairs.loc[hit, "index"].to_numpy()] = True
    return out


def lag_mask(spec: BehaviorSpec, events: pd.DataFrame, labels: pd.DataFrame, log: ReplayLog,
             label_lag: float) -> pd.DataFrame:  # fmt: skip
    """Boolean frame (rows of ``events`` x ``spec.output_columns``): True inside the lag.

    ``events`` has the raw fields, ``t`` and ``written`` (the prediction row's ``written_at``;
    epoch seconds), ``labels`` the columns ``transaction_id, k`` (``labeled_at`` in epoch
    seconds).
    """
    events = events.reset_index(drop=True)
    req = events["transaction_id"].map(log.rows.set_index("transaction_id")["request"])
    req = req.to_numpy()
    mask = pd.DataFrame(False, index=events.index, columns=spec.output_columns)
    for name, col in spec.entities:
        lagged = _event_lag(events[col].astype(str).to_numpy(), events["t"].to_numpy(), req, log)
        for c in spec.output_columns:
            if c.startswith(f"{name}{SEP}") and c not in {r.name for r in spec.label_risk}:
                mask[c] = lagged
    for c, lagged in _label_lag(spec, events, labels, req, log, label_lag).items():
        mask[c] = lagged
    return mask


def histogram_bound(metrics_text: str, name: str) -> float:
    """An upper bound of every observation of histogram ``name`` in a Prometheus text: the
    smallest bucket bound that holds all of them (0 without observations)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        buckets = sorted((float(s.labels["le"]), s.value) for s in family.samples
                         if s.name == f"{name}_bucket")  # fmt: skip
        total = buckets[-1][1] if buckets else 0.0
        return next((le for le, n in buckets if n >= total), 0.0) if total else 0.0
    return 0.0


def stated_label_lag(refresh_seconds: float, metrics_text: str) -> float:
    """The label lag of a run (module docstring): the refresh interval, two of the longest
    refreshes and the longest prediction-log COPY that the service's ``/metrics`` recorded."""
    refresh = histogram_bound(metrics_text, REFRESH_METRIC)
    return refresh_seconds + 2 * refresh + histogram_bound(metrics_text, COPY_METRIC)


def relative_diff(online: np.ndarray, offline: np.ndarray) -> np.ndarray:
    """|online - offline| / max(|online|, |offline|); 0 where both are 0."""
    scale = np.maximum(np.abs(online), np.abs(offline))
    return np.divide(np.abs(online - offline), scale, out=np.zeros_like(scale), where=scale > 0)


def parity_report(spec: BehaviorSpec, online: pd.DataFrame, offline: pd.DataFrame,
                  mask: pd.DataFrame) -> dict:  # fmt: skip
    """The figures of a parity check over aligned frames (``mask`` True = inside the lag)."""
    risk = [r.name for r in spec.label_risk]
    other = [c for c in mask.columns if c not in risk]
    diff = relative_diff(online.to_numpy(np.float64), offline.to_numpy(np.float64))
    inside = mask.to_numpy()
    outside = diff[~inside]
    worst = np.unravel_index(np.argmax(np.where(inside, -1.0, diff)), diff.shape)
    rows_out = ~inside.any(axis=1)
    return {
        "parity_rows": len(online),
        "parity_rows_outside_lag": int(rows_out.sum()),
        "parity_share_inside_lag": round(float(inside.any(axis=1).mean()), 4),
        "parity_share_inside_event_lag": round(float(mask[other].any(axis=1).mean()), 4),
        "parity_share_inside_label_lag": round(float(mask[risk].any(axis=1).mean()), 4),
        "parity_label_risk_nonzero_compared": int(
            ((offline[risk].to_numpy() != 0) & ~mask[risk].to_numpy()).sum()
        ),
        "parity_cells_compared": int(outside.size),
        "parity_max_rel_diff": float(outside.max()) if outside.size else 0.0,
        "parity_worst_feature": str(online.columns[worst[1]]),
        "parity_failures": int((outside > PARITY_RTOL).sum()),
        "parity_failures_by_feature": {
            c: int(n)
            for c, n in zip(
                online.columns, ((diff > PARITY_RTOL) & ~inside).sum(axis=0), strict=True
            )
            if n
        },
    }


def logged_history(engine, spec: BehaviorSpec, ids: list[str]) -> tuple[pd.DataFrame, ...]:
    """(raw events with ``t`` and ``written``, online features, labels with ``k``) of ``ids``
    from Postgres, events in id order; the latest prediction of a retried id."""
    query = sa.text(
        "SELECT DISTINCT ON (transaction_id) transaction_id, event_time, "
        "extract(epoch FROM written_at), features "
        "FROM predictions WHERE transaction_id = ANY(:ids) ORDER BY transaction_id, scored_at DESC"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"ids": ids}).fetchall()
        labels = pd.DataFrame(conn.execute(sa.text(
            "SELECT transaction_id, label, extract(epoch FROM labeled_at) AS labeled_at "
            "FROM labels WHERE transaction_id = ANY(:ids)"), {"ids": ids}).fetchall(),
            columns=["transaction_id", "label", "labeled_at"])  # fmt: skip
    logged = pd.DataFrame(
        [{"transaction_id": r[0], "t": r[1], "written": float(r[2]), **r[3]} for r in rows]
    )
    labels["labeled_at"] = labels["labeled_at"].astype(np.float64)
    online = logged[spec.output_columns].astype(np.float64)
    events = logged.drop(columns=spec.output_columns)
    return events, online, labels.assign(k=labels["labeled_at"])


def check_parity(engine, spec: BehaviorSpec, log: ReplayLog, label_lag: float) -> dict:
    """Compare every logged online feature of the replayed rows with the offline builder over
    the same history (logged raw rows + labels table); the figures of :func:`parity_report`."""
    events, online, labels = logged_history(engine, spec, log.rows["transaction_id"].tolist())
    offline = build_features(spec, events, labels[["transaction_id", "label", "labeled_at"]])
    mask = lag_mask(spec, events, labels[["transaction_id", "k"]], log, label_lag)
    report = parity_report(spec, online, offline, mask)
    report["parity_label_lag_seconds"] = label_lag
    return report

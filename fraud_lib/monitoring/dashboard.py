"""The monitoring dashboard: a local Evidently workspace that every monitoring run adds to.

The workspace lives at ``FRAUD_EVIDENTLY_WORKSPACE`` (default ``<FRAUD_STATE_DIR>/evidently``)
and holds one project, ``fraudloop``, with the panels of
:mod:`fraud_lib.monitoring.dashboard_panels`. ``fraud ui`` serves it (``evidently ui``).

Producers add one line where a run finishes: :func:`add_drift` (the drift monitor),
:func:`add_decision` and :func:`add_rollback` (the promotion gate: champion version and
decision), :func:`add_performance` (the performance monitor, plain numbers per cohort). Like
the ``alert_*`` functions they never raise: a dashboard failure is a WARNING in the log and
never fails a DAG task.

**Concurrency and re-runs.** Two tasks may write at once: every change to the workspace
happens under an exclusive file lock (``fraudloop.lock`` in the workspace). The project is
found by name and created once; the dashboard is saved only when it differs from the
definition, so panels are never duplicated. A snapshot added with a ``key`` (the drift
monitor's run key, a decision's version and run, a cohort and served version) replaces the
earlier snapshot with that key (``fraudloop-snapshots.json`` maps keys to snapshot ids): a
re-run does not add a second point, and a provisional cohort becomes mature in place.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from fraud_lib.config import Settings
from fraud_lib.errors import FraudError

log = logging.getLogger(__name__)

PROJECT_NAME = "fraudloop"
PROJECT_DESCRIPTION = (
    "fraudloop monitoring: drift checks, promotion decisions and realized performance per cohort"
)
LOCK_FILE = "fraudloop.lock"
INDEX_FILE = "fraudloop-snapshots.json"
LOCK_TIMEOUT_SECONDS = 60.0
COHORT_METRICS = ("average_precision", "recall", "card_precision_at_k", "alert_rate",
                  "label_coverage")  # fmt: skip


class DashboardError(FraudError):
    """The dashboard workspace cannot be used (the message says what to do)."""


@contextmanager
def _locked(workspace: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the workspace's exclusive lock (flock; released if the process dies)."""
    workspace.mkdir(parents=True, exist_ok=True)
    with (workspace / LOCK_FILE).open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DashboardError(
                        f"the dashboard workspace {workspace} stayed locked for {timeout:.0f}s; "
                        "is another fraudloop process stuck?"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open(settings: Settings) -> tuple[Any, Any]:
    """(workspace, project) with the dashboard as defined; the caller holds the lock."""
    from evidently.ui.workspace import Workspace

    from fraud_lib.monitoring.dashboard_panels import dashboard_model

    ws = Workspace.create(str(settings.evidently_workspace))
    found = ws.search_project(PROJECT_NAME)
    if found:
        project = min(found, key=lambda p: str(p.id))
    else:
        project = ws.create_project(PROJECT_NAME, description=PROJECT_DESCRIPTION)
    wanted = dashboard_model()
    if ws.get_dashboard(project.id).dict() != wanted.dict():
        ws.save_dashboard(project.id, wanted)
    return ws, project


def ensure_project(settings: Settings) -> str:
    """Create the workspace, the project and its panels if needed; the project id.

    Raises :class:`DashboardError` when the workspace cannot be written.
    """
    path = settings.evidently_workspace
    try:
        with _locked(path):
            _, project = _open(settings)
    except OSError as exc:
        raise DashboardError(
            f"cannot write the dashboard workspace {path}: {exc.strerror or exc}; "
            "set FRAUD_EVIDENTLY_WORKSPACE to a writable directory"
        ) from None
    return str(project.id)


def _read_index(workspace: Path) -> dict[str, str]:
    try:
        index = json.loads((workspace / INDEX_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("dashboard: ignoring an unreadable %s: %s", INDEX_FILE, exc)
        return {}
    return {str(k): str(v) for k, v in index.items()} if isinstance(index, dict) else {}


def _write_index(workspace: Path, index: Mapping[str, str]) -> None:
    tmp = workspace / f".{INDEX_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, workspace / INDEX_FILE)


def _add(settings: Settings, snapshot: Any, key: str | None) -> str:
    path = settings.evidently_workspace
    with _locked(path):
        ws, project = _open(settings)
        index = _read_index(path)
        previous = index.get(key) if key else None
        if previous:
            with suppress(Exception):  # already gone (deleted in the UI): nothing to replace
                ws.delete_run(project.id, previous)
        ref = ws.add_run(project.id, snapshot)
        if key:
            _write_index(path, {**index, key: str(ref.id)})
    return str(ref.id)


def _tagged(snapshot: Any, tags: Sequence[str]) -> Any:
    """``snapshot`` with ``tags`` added (through its serialized model: tags have no setter)."""
    from evidently.core.report import Snapshot

    model = snapshot.to_snapshot_model()
    model.tags = list(dict.fromkeys([*model.tags, *tags]))
    return Snapshot.load_model(model)


def add_snapshot(
    settings: Settings,
    snapshot: Any,
    *,
    kind: str,
    tags: Sequence[str] = (),
    key: str | None = None,
) -> str | None:
    """Add an Evidently snapshot (a ``Report.run`` result) to the project; its id, or None
    after logging a WARNING (never raises). ``kind`` and ``tags`` are added to its tags; a
    ``key`` replaces the snapshot added earlier with the same key."""
    from fraud_lib.monitoring.dashboard_panels import KINDS

    try:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        return _add(settings, _tagged(snapshot, [kind, *tags]), f"{kind}:{key}" if key else None)
    except Exception as exc:  # the dashboard must never fail the run that feeds it
        log.warning("dashboard: could not add a %s snapshot: %s: %s", kind, type(exc).__name__, exc)
        return None


def _number(value: Any) -> float | None:
    """A finite float, or None (None, NaN, inf, non-numbers, booleans stay out)."""
    if value is None or isinstance(value, bool | str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _version(value: Any) -> float | None:
    """An MLflow model version ("3", 3) as a number to plot."""
    if isinstance(value, str) and value.strip().isdigit():
        return float(value)
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _airflow_tags() -> list[str]:
    dag_id = os.environ.get("AIRFLOW_CTX_DAG_ID")
    return [dag_id] if dag_id else []


def _naive_utc(moment: datetime) -> datetime:
    """``moment`` as a naive UTC datetime (Evidently's own timestamps are naive, and the UI
    sorts and filters snapshots by comparing them)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.fromtimestamp(aware.timestamp(), UTC).replace(tzinfo=None)


def _record(
    settings: Settings,
    kind: str,
    values: Mapping[str, float | None],
    *,
    timestamp: datetime,
    tags: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    key: str | None = None,
    maturity: Mapping[str, str] | None = None,
) -> str | None:
    """Build the one-row snapshot of ``values`` (None values left out) and add it."""
    try:
        from fraud_lib.monitoring.dashboard_panels import values_snapshot

        present = {k: v for k, v in values.items() if v is not None}
        if not present:
            raise ValueError("no numbers to record")
        snapshot = values_snapshot(
            present,
            timestamp=_naive_utc(timestamp),
            tags=[*tags, *_airflow_tags()],
            metadata={k: str(v) for k, v in (metadata or {}).items() if v is not None},
            maturity=maturity,
        )
    except Exception as exc:
        log.warning("dashboard: could not build a %s snapshot: %s: %s", kind, type(exc).__name__,
                    exc)  # fmt: skip
        return None
    return add_snapshot(settings, snapshot, kind=kind, key=key)


def add_drift(
    settings: Settings,
    summary: Mapping[str, Any],
    *,
    timestamp: datetime | None = None,
    run_key: str | None = None,
) -> str | None:
    """Add a drift monitor run (a :func:`fraud_lib.cycle.drift_monitor` summary): share of
    drifted features, score PSI, both thresholds, rows compared, champion version."""
    from fraud_lib.monitoring.dashboard_panels import DRIFT_MONITOR

    try:
        thresholds = summary.get("thresholds") or {}
        values = {
            "drifted_share": _number(summary.get("drifted_share")),
            "drift_share_threshold": _number(thresholds.get("drift_share")),
            "score_psi": _number((summary.get("score_shift") or {}).get("psi")),
            "score_shift_threshold": _number(thresholds.get("score_psi")),
            "predictions_checked": _number((summary.get("rows") or {}).get("current")),
            "champion_version": _version(summary.get("champion_version")),
        }
        detected = "drift_detected" if summary.get("drift_detected") else "no_drift"
        meta = {"run_key": run_key, "report": summary.get("html_path")}
    except Exception as exc:
        log.warning("dashboard: unusable drift summary: %s: %s", type(exc).__name__, exc)
        return None
    return _record(settings, DRIFT_MONITOR, values, timestamp=timestamp or datetime.now(UTC),
                   tags=[detected], metadata=meta, key=run_key)  # fmt: skip


def add_decision(settings: Settings, decision: Any, run_id: str | None = None) -> str | None:
    """Add a promotion gate decision (a :class:`fraud_lib.promotion.Decision`, promoted or
    rejected): the champion version after it and the decision; dry runs are not shown."""
    from fraud_lib.monitoring.dashboard_panels import DECISION

    try:
        event = decision.event
        if event not in ("promoted", "rejected"):
            return None
        champion = decision.challenger_version if event == "promoted" else decision.champion_version
        metric = decision.metric
        values = {
            "champion_version": _version(champion),
            "challenger_version": _version(decision.challenger_version),
            event: 1.0,
            "challenger_metric": _number((decision.challenger_metrics or {}).get(metric)),
            "champion_metric": _number((decision.champion_metrics or {}).get(metric)),
        }
        meta = {"run_id": run_id, "metric": metric, "reason": str(decision.reason)[:500]}
        key = f"v{decision.challenger_version}:{run_id}" if run_id else None
    except Exception as exc:
        log.warning("dashboard: unusable decision: %s: %s", type(exc).__name__, exc)
        return None
    return _record(settings, DECISION, values, timestamp=datetime.now(UTC), tags=[event],
                   metadata=meta, key=key)  # fmt: skip


def add_rollback(settings: Settings, from_version: str, to_version: str) -> str | None:
    """Add a rollback of the champion (from ``from_version`` back to ``to_version``)."""
    from fraud_lib.monitoring.dashboard_panels import DECISION

    values = {"champion_version": _version(to_version), "rolled_back": 1.0}
    meta = {"from_version": from_version, "to_version": to_version}
    return _record(settings, DECISION, values, timestamp=datetime.now(UTC), tags=["rolled_back"],
                   metadata=meta)  # fmt: skip


def _cohort_time(value: Any) -> datetime:
    """A cohort day (date, datetime or ISO string) as UTC midnight."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip()[:32])
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        value = value.astimezone(UTC).date()
    if not isinstance(value, date):
        raise ValueError(f"cohort_day {value!r} is not a date")
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def _cohort_values(cohort: Mapping[str, Any]) -> tuple[datetime, str, dict[str, float | None]]:
    """(day, served version, numbers) of one cohort; ValueError says what is wrong."""
    day = _cohort_time(cohort.get("cohort_day"))
    version = _version(cohort.get("model_version"))
    if version is None:
        raise ValueError(f"model_version {cohort.get('model_version')!r} is not a version number")
    if not isinstance(cohort.get("provisional"), bool):
        raise ValueError("provisional must be true or false")
    values: dict[str, float | None] = {"model_version": version}
    for name in COHORT_METRICS:
        number = _number(cohort.get(name))
        if number is not None and not 0.0 <= number <= 1.0:
            raise ValueError(f"{name}={number} is outside [0, 1]")
        values[name] = number
    share = values.pop("alert_rate")  # plotted in percent: shares of ~0.01 get unreadable ticks
    values["alert_rate_percent"] = None if share is None else 100.0 * share
    volume = _number(cohort.get("volume"))
    if volume is not None and (volume < 0 or volume != int(volume)):
        raise ValueError(f"volume={volume} is not a count")
    values["volume"] = volume
    return day, str(int(version)), values


def add_performance(settings: Settings, cohorts: Iterable[Mapping[str, Any]]) -> list[str]:
    """Add realized performance, one snapshot per cohort (scoring day) and served version.

    Each cohort: ``cohort_day`` (date or ISO string), ``model_version``, ``average_precision``,
    ``recall``, ``card_precision_at_k``, ``alert_rate`` (numbers in [0, 1] or None),
    ``volume`` (predictions), ``provisional`` (bool: labels still arriving), optionally
    ``label_coverage``. A cohort reported again (e.g. now mature) replaces its earlier point.
    An invalid cohort is skipped with a WARNING. Returns the ids of the snapshots added.
    """
    from fraud_lib.monitoring.dashboard_panels import MATURE, PERFORMANCE, PROVISIONAL

    added = []
    for cohort in cohorts:
        try:
            day, version, values = _cohort_values(cohort)
        except Exception as exc:
            log.warning("dashboard: skipping a performance cohort: %s: %s", type(exc).__name__,
                        str(exc)[:300])  # fmt: skip
            continue
        maturity = PROVISIONAL if cohort["provisional"] else MATURE
        labeled = {m: maturity for m in ("average_precision", "recall", "card_precision_at_k")}
        snapshot_id = _record(
            settings, PERFORMANCE, values, timestamp=day, tags=[maturity, f"v{version}"],
            metadata={"cohort_day": f"{day:%Y-%m-%d}", "model_version": version},
            key=f"{day:%Y-%m-%d}:v{version}", maturity=labeled,
        )  # fmt: skip
        if snapshot_id:
            added.append(snapshot_id)
    return added

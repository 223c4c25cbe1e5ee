"""The monitoring dashboard's workspace (real Evidently 0.7 workspace in a temp dir): one
project and one set of panels however often and however concurrently it is opened; re-runs
and matured cohorts replace their point; bad input and broken workspaces never raise."""

from __future__ import annotations

import json
import logging
import multiprocessing
from dataclasses import replace
from datetime import date, datetime
from types import SimpleNamespace

import pytest
from evidently.ui.workspace import Workspace

from fraud_lib.monitoring import dashboard
from fraud_lib.monitoring.dashboard_panels import PANELS

DRIFT = {
    "drifted_share": 0.12,
    "thresholds": {"drift_share": 0.05, "score_psi": 0.1},
    "score_shift": {"psi": 0.031},
    "rows": {"current": 5000},
    "champion_version": "3",
    "drift_detected": True,
    "html_path": "/reports/fraud_drift_monitor__x.html",
}


def _cohort(day: str = "2026-11-20", **changes):
    return {
        "cohort_day": day,
        "model_version": "3",
        "average_precision": 0.61,
        "recall": 0.55,
        "card_precision_at_k": 0.7,
        "alert_rate": 0.012,
        "volume": 40_000,
        "provisional": True,
        "label_coverage": 0.4,
        **changes,
    }


def _snapshots(settings):
    ws = Workspace(str(settings.evidently_workspace))
    (project,) = ws.search_project(dashboard.PROJECT_NAME)
    return ws, project, [ws.get_run(project.id, s) for s in ws.list_runs(project.id)]


def _values(snapshot) -> dict[tuple[str, str], float]:
    """(column, maturity) -> value of a snapshot's recorded metrics."""
    out = {}
    for result in snapshot.metric_results.values():
        params = result.metric_value_location.metric.params
        out[(params["column"], params.get("maturity", ""))] = result.value
    return out


def test_the_project_and_its_panels_are_created_once(settings):
    first = dashboard.ensure_project(settings)
    dashboard_file = next(settings.evidently_workspace.glob("*/dashboard.json"))
    written = dashboard_file.stat().st_mtime_ns
    assert dashboard.ensure_project(settings) == first
    assert dashboard.add_drift(settings, DRIFT, run_key="a")
    ws, project, _ = _snapshots(settings)
    assert len(ws.list_projects()) == 1
    model = ws.get_dashboard(project.id)
    assert [p.title for p in model.panels] == [title for title, *_ in PANELS]
    assert len(model.tabs) == 1 and len(model.tabs[0].panels) == len(PANELS)
    assert dashboard_file.stat().st_mtime_ns == written  # unchanged definition: not rewritten


def _open_and_add(state_dir: str, run_key: str) -> None:
    from pathlib import Path

    from fraud_lib.config import Settings

    settings = Settings.from_env({}, state_dir=Path(state_dir))
    assert dashboard.add_drift(settings, DRIFT, run_key=run_key)


def test_two_processes_at_once_make_one_project(settings):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_open_and_add, args=(str(settings.state_dir), k)) for k in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    ws, project, snapshots = _snapshots(settings)
    assert len(ws.list_projects()) == 1
    assert len(ws.get_dashboard(project.id).panels) == len(PANELS)
    assert sorted(s.metadata["run_key"] for s in snapshots) == ["a", "b"]


def test_a_drift_run_rerun_replaces_its_point(settings):
    assert dashboard.add_drift(settings, DRIFT, run_key="20261201T000000Z_1d")
    again = {**DRIFT, "drifted_share": 0.2}
    assert dashboard.add_drift(settings, again, run_key="20261201T000000Z_1d")
    _, _, snapshots = _snapshots(settings)
    assert len(snapshots) == 1
    (snap,) = snapshots
    assert _values(snap)[("drifted_share", "")] == 0.2
    assert _values(snap)[("champion_version", "")] == 3.0
    assert _values(snap)[("score_psi", "")] == pytest.approx(0.031)
    assert {"drift_monitor", "drift_detected"} <= set(snap.tags)
    assert snap.metadata["report"] == DRIFT["html_path"]


def test_a_provisional_cohort_becomes_mature_in_place(settings):
    assert dashboard.add_performance(settings, [_cohort(), _cohort("2026-11-21")])
    assert dashboard.add_performance(settings, [_cohort(provisional=False, recall=0.5)])
    _, _, snapshots = _snapshots(settings)
    by_day = {s.metadata["cohort_day"]: s for s in snapshots}
    assert sorted(by_day) == ["2026-11-20", "2026-11-21"]
    mature = by_day["2026-11-20"]
    assert {"performance", "mature", "v3"} <= set(mature.tags)
    assert _values(mature)[("recall", "mature")] == 0.5
    assert _values(mature)[("volume", "")] == 40_000
    assert mature.timestamp == datetime(2026, 11, 20)  # naive UTC, as Evidently's own
    assert ("average_precision", "provisional") in _values(by_day["2026-11-21"])


def test_decisions_and_rollbacks_record_the_champion(settings):
    decision = SimpleNamespace(
        event="promoted", challenger_version="4", champion_version="3",
        metric="average_precision", challenger_metrics={"average_precision": 0.7},
        champion_metrics={"average_precision": 0.6}, reason="better",
    )  # fmt: skip
    assert dashboard.add_decision(settings, decision, "run-1")
    assert dashboard.add_decision(settings, decision, "run-1")  # replayed: same point
    assert dashboard.add_decision(settings, replace_event(decision, "dry_run")) is None
    assert dashboard.add_rollback(settings, "4", "3")
    _, _, snapshots = _snapshots(settings)
    champions = sorted(_values(s)[("champion_version", "")] for s in snapshots)
    assert champions == [3.0, 4.0]
    kinds = sorted(t for s in snapshots for t in s.tags if t in ("promoted", "rolled_back"))
    assert kinds == ["promoted", "rolled_back"]


def replace_event(decision, event):
    return SimpleNamespace(**{**vars(decision), "event": event})


@pytest.mark.parametrize(
    "bad",
    [
        {"cohort_day": "not a date"},
        {"cohort_day": "2026-13-40"},
        {"cohort_day": 20261120},
        {"cohort_day": "9" * 10_000},
        {"model_version": "v3; DROP TABLE"},
        {"model_version": b"\xff\xfe"},
        {"average_precision": 1.5},
        {"recall": -0.1},
        {"volume": -5},
        {"volume": 2.5},
        {"provisional": "yes"},
        {"provisional": None},
    ],
)
def test_hostile_cohorts_are_skipped_with_a_warning(settings, caplog, bad):
    with caplog.at_level(logging.WARNING, logger=dashboard.__name__):
        added = dashboard.add_performance(settings, [_cohort(**bad), _cohort("2026-11-22")])
    assert len(added) == 1  # the good cohort still lands
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipping a performance cohort" in warning.getMessage()
    assert len(warning.getMessage()) < 500


def test_missing_or_nan_numbers_are_left_out(settings):
    cohort = _cohort(average_precision=float("nan"), recall=None, card_precision_at_k="0.3")
    (snapshot_id,) = dashboard.add_performance(
        settings, [{**cohort, "cohort_day": date(2026, 11, 1)}]
    )
    _, _, (snap,) = _snapshots(settings)
    assert str(snap.metadata["cohort_day"]) == "2026-11-01" and snapshot_id
    assert {c for c, _ in _values(snap)} == {"model_version", "alert_rate_percent", "volume",
                                            "label_coverage"}  # fmt: skip
    assert _values(snap)[("alert_rate_percent", "")] == pytest.approx(1.2)


def test_a_broken_workspace_never_raises_from_the_hooks(settings, caplog, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    broken = replace(settings, evidently_workspace_dir=str(blocked))
    with caplog.at_level(logging.WARNING, logger=dashboard.__name__):
        assert dashboard.add_drift(broken, DRIFT, run_key="x") is None
        assert dashboard.add_performance(broken, [_cohort()]) == []
    assert any("could not add a drift_monitor snapshot" in r.getMessage() for r in caplog.records)
    with pytest.raises(dashboard.DashboardError, match="FRAUD_EVIDENTLY_WORKSPACE"):
        dashboard.ensure_project(broken)


def test_a_corrupt_index_is_ignored(settings, caplog):
    dashboard.ensure_project(settings)
    (settings.evidently_workspace / dashboard.INDEX_FILE).write_bytes(b"\xff{not json")
    with caplog.at_level(logging.WARNING, logger=dashboard.__name__):
        assert dashboard.add_drift(settings, DRIFT, run_key="k")
    index = json.loads((settings.evidently_workspace / dashboard.INDEX_FILE).read_text())
    assert list(index) == ["drift_monitor:k"]


def test_the_workspace_follows_the_state_dir_unless_set(settings, tmp_path):
    assert settings.evidently_workspace == settings.state_dir / "evidently"
    moved = replace(settings, state_dir=tmp_path / "other")
    assert moved.evidently_workspace == tmp_path / "other" / "evidently"
    from fraud_lib.config import Settings

    env = {"FRAUD_EVIDENTLY_WORKSPACE": str(tmp_path / "ws")}
    assert Settings.from_env(env).evidently_workspace == tmp_path / "ws"

"""The monitoring dashboard in a real browser: a demo-sized history made by the real code
paths (models trained and registered in MLflow, predictions logged in Postgres, four
``cycle.drift_monitor`` runs, three promotion gate decisions and a rollback, realized
performance per cohort), then ``fraud ui`` as a subprocess and Debian's Chromium driven by Playwright
(``executable_path``: no browser download). Every panel must plot points or bars.

The screenshot lands in the test's temp dir; ``FRAUD_DASHBOARD_SCREENSHOT=docs/dashboard.png``
also writes it there (how the README's picture is refreshed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_lib import cycle, pgserver, procs, promotion, registry, store
from fraud_lib.data import SECONDS_PER_DAY, generate, labels_known_by
from fraud_lib.evaluate import compute_metrics
from fraud_lib.monitoring import dashboard
from fraud_lib.monitoring.dashboard_panels import PANELS
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model

pytestmark = pytest.mark.slow

FRAUD = str(Path(sys.executable).with_name("fraud"))
SCHEMA = FeatureSchema()
HISTORY_DAYS, TRAFFIC_DAYS, ROWS = 14, 4, 2500
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: run `make system-deps` (Debian package chromium)")
    return path


def _train(frame: pd.DataFrame, s):
    result = train_model(SCHEMA.validate_frame(frame), SCHEMA, model_type="lr", test_fraction=0.2)
    ref = registry.log_model(result, s, data_ref="generated")
    assert ref is not None
    return result, ref.version


def _history(s, engine) -> list[dict]:
    """The real code paths; returns the cohorts' realized performance."""
    history = generate(HISTORY_DAYS, rows_per_day=ROWS, fraud_rate=0.01, seed=3)
    result, v1 = _train(history, s)
    held_out = history[history["Time"] > result.time_range["fit_end"]]
    assert promotion.promote_if_better(s, engine, held_out, v1).event == "promoted"
    champion = registry.load_version(s, v1)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=4)
    days = []
    for d in range(TRAFFIC_DAYS):
        first = HISTORY_DAYS + d
        day = generate(1, rows_per_day=ROWS, fraud_rate=0.01, seed=10 + d, start_day=first,
                       scenario="new_pattern" if d >= 2 else "none", drift_start_day=first)  # fmt: skip
        day = day.assign(score=champion.score(day))
        scored_at = (
            start
            + timedelta(days=d)
            + pd.to_timedelta(day["Time"] - first * SECONDS_PER_DAY, unit="s")
        )
        store.insert_predictions(engine, [
            {"prediction_id": f"p-{tx}", "transaction_id": tx, "scored_at": at.to_pydatetime(),
             "event_time": t, "features": f, "score": sc, "model_version": v1,
             "is_fraud": bool(sc >= champion.threshold), "threshold": champion.threshold}
            for tx, at, t, f, sc in zip(day["transaction_id"], scored_at, day["Time"],
                                        day[list(SCHEMA.features)].to_dict("records"),
                                        day["score"], strict=True)
        ])  # fmt: skip
        end = start + timedelta(days=d + 1)
        summary = cycle.drift_monitor(s, engine, interval_end=end, days=1, run_key=f"day{d}")
        assert summary["rows"]["current"] == len(day)
        days.append((start + timedelta(days=d), day))
    recent = pd.concat([d for _, d in days])
    _, v2 = _train(pd.concat([history, recent.iloc[: len(recent) // 2]]), s)
    tail = recent.iloc[len(recent) // 2 :]
    promotion.promote_if_better(s, engine, tail, v2, force=True, run_id="retrain-1")
    assert promotion.rollback(s, engine, reason="dashboard test") == (v2, v1)
    _, v3 = _train(pd.concat([history, recent]), s)
    rejected = promotion.promote_if_better(s, engine, tail, v3, min_improvement=1.0,
                                           run_id="retrain-2")  # fmt: skip
    assert rejected.event == "rejected"
    return _cohorts(days, v1, champion.threshold)


def _cohorts(days, version: str, threshold: float) -> list[dict]:
    """Realized performance per scoring day; the last two days' labels are still arriving."""
    known_by = (HISTORY_DAYS + TRAFFIC_DAYS + 2) * SECONDS_PER_DAY  # some frauds known
    cohorts = []
    for i, (scored, day) in enumerate(days):
        provisional = i >= TRAFFIC_DAYS - 2
        known = labels_known_by(day, known_by) if provisional else np.ones(len(day), bool)
        y = day["Class"].to_numpy() * np.asarray(known)
        m = compute_metrics(y, day["score"], threshold, top_k=25)
        cohorts.append({
            "cohort_day": scored.date(), "model_version": version, "provisional": provisional,
            "average_precision": m["average_precision"], "recall": m["recall"],
            "card_precision_at_k": m["precision_at_k"], "volume": len(day),
            "alert_rate": float((day["score"] >= threshold).mean()),
            "label_coverage": float(np.mean(known)),
        })  # fmt: skip
    return cohorts


def _ui_env(s) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MLFLOW_"))}
    env.update(FRAUD_STATE_DIR=str(s.state_dir), FRAUD_DATABASE_URL=s.database_url)
    return env


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"fraud ui exited early with code {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the dashboard at {url} was not ready within {timeout:.0f}s")


def _check_panels(page, requests: list[str], base: str) -> dict[str, int]:
    """Every panel shows its title, its legends and plotted marks or bars; marks per panel."""
    page.get_by_role("heading", name=PANELS[-1][0], exact=True).wait_for(timeout=60_000)
    drawn = {}
    for title, _, plot, series in PANELS:
        card = page.locator(".MuiCardContent-root").filter(
            has=page.get_by_role("heading", name=title, exact=True)
        )
        assert card.count() == 1, title
        marks = card.locator(".MuiBarElement-root" if plot == "bar" else ".MuiMarkElement-root")
        marks.first.wait_for(timeout=30_000)
        drawn[title] = marks.count()
        assert card.locator("svg .MuiChartsAxis-tickLabel").count() > 0, title
        for s in series:
            assert card.get_by_text(s.legend, exact=True).count() >= 1, (title, s.legend)
    body = page.inner_text("body")
    assert "No data" not in body and "Error" not in body
    outside = [u for u in requests if not u.startswith((base, "data:", "blob:"))]
    assert outside == [], "the dashboard must not reach outside 127.0.0.1"
    return drawn


def _browse(url: str, base: str, screenshot: Path) -> dict[str, int]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            requests: list[str] = []
            failed: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
            page.goto(url)
            drawn = _check_panels(page, requests, base)
            assert failed == []
            page.wait_for_timeout(1500)  # the charts' appearing animation
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return drawn


def test_the_dashboard_shows_every_panel_with_data(settings, pg_engine, tmp_path):
    s = replace(settings, min_average_precision=0.05, min_roc_auc=0.5)
    cohorts = _history(s, pg_engine)
    assert len(dashboard.add_performance(s, cohorts)) == TRAFFIC_DAYS
    project_id = dashboard.ensure_project(s)
    port = pgserver.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([FRAUD, "ui", "--port", str(port)], env=_ui_env(s),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    children: list[int] = []
    try:
        _wait_ready(proc, base)
        children = procs.child_pids(proc.pid)
        assert len(children) == 1  # evidently ui, in its own process group
        assert os.getpgid(children[0]) == children[0] != os.getpgid(proc.pid)
        shot = tmp_path / "dashboard.png"
        drawn = _browse(f"{base}/projects/{project_id}", base, shot)
        assert drawn["Share of drifted features"] == 2 * TRAFFIC_DAYS  # share and threshold
        assert drawn["Realized average precision per cohort"] == TRAFFIC_DAYS
        assert drawn["Promotion decisions"] == 4  # promoted twice, rolled back, rejected
        assert shot.stat().st_size > 50_000
        if os.environ.get("FRAUD_DASHBOARD_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["FRAUD_DASHBOARD_SCREENSHOT"])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in children:  # never leave the UI behind, whatever failed above
            if Path(f"/proc/{pid}").exists():
                os.killpg(pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert out.splitlines()[0] == f"monitoring dashboard: {base}/projects/{project_id}"
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)

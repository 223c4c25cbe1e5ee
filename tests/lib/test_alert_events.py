"""Real event paths send their alerts: the promotion gate and the ``fraud rollback`` CLI on
real Postgres and a real MLflow store in a temp dir, to a local webhook receiver."""

# ruff: noqa: F811 - pytest fixtures imported from tests.alert_receivers are parameters here
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fraud_lib import promotion, registry
from fraud_lib.data import generate
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model
from tests.alert_receivers import TOKEN, webhook  # noqa: F401 - fixtures used by name

SCHEMA = FeatureSchema()
FRAUD = str(Path(sys.executable).with_name("fraud"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frames():
    past = SCHEMA.validate_frame(generate(6, rows_per_day=3000, seed=21, fraud_rate=0.01))
    later = SCHEMA.validate_frame(
        generate(2, rows_per_day=3000, seed=22, fraud_rate=0.01, start_day=6)
    )
    return past, later


def test_promotions_and_a_cli_rollback_reach_the_webhook(settings, pg_engine, frames, webhook):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE alert_log")
    s = replace(settings, alert_webhook_url=webhook.url, min_average_precision=0.01,
                min_roc_auc=0.5, public_mlflow_url="http://127.0.0.1:5000")  # fmt: skip
    past, later = frames
    model = train_model(past, SCHEMA, model_type="lr", test_fraction=0.1)
    v1 = registry.log_model(model, s).version
    v2 = registry.log_model(model, s).version
    assert promotion.promote_if_better(s, pg_engine, later, v1).event == "promoted"
    assert promotion.promote_if_better(s, pg_engine, later, v2, force=True).event == "promoted"
    first, second = (p["json"] for p in webhook.wait_for(2))
    assert first["kind"] == second["kind"] == "challenger_promoted"
    assert f"Challenger v{v1} promoted to champion" in first["text"]
    assert first["numbers"]["challenger_average_precision"] > 0.01
    assert second["numbers"]["champion_average_precision"] is not None
    assert second["links"][f"model version {v2} (MLflow)"].endswith(f"/versions/{v2}")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MLFLOW_"))}
    env.update(
        FRAUD_STATE_DIR=str(s.state_dir),
        FRAUD_DATABASE_URL=s.database_url,
        MLFLOW_TRACKING_URI=s.mlflow_tracking_uri,
        FRAUD_MLFLOW_ARTIFACTS=str(s.mlflow_artifact_dir),
        FRAUD_ALERT_WEBHOOK_URL=webhook.url,
    )
    out = subprocess.run([FRAUD, "rollback", "--reason", "AP dropped in week 49"], env=env,
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert TOKEN not in out.stdout + out.stderr
    rollback = webhook.wait_for(3)[2]["json"]
    assert rollback["kind"] == "rollback" and rollback["severity"] == "warning"
    assert f"rolled back from v{v2} to v{v1}" in rollback["text"]
    assert "AP dropped in week 49" in rollback["text"]
    assert rollback["dedup_key"] == f"rollback:fraud-detector:v{v2}->v{v1}"
    config = subprocess.run([FRAUD, "config"], env=env, capture_output=True, text=True,
                            timeout=120, check=True)  # fmt: skip
    assert "alert_webhook_url = ***" in config.stdout and TOKEN not in config.stdout

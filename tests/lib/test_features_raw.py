"""The raw-transaction generator (data tests), training on raw tables (model and CLI tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_lib.errors import ConfigError
from fraud_lib.features.raw_data import EPOCH_DAY0, FRAUD_TYPES, SCENARIOS, generate_raw
from fraud_lib.features.raw_table import RAW_BASELINE_SCHEMA_PATH, RAW_SCHEMA_PATH, enrich
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model

FRAUD = str(Path(sys.executable).with_name("fraud"))


@pytest.fixture(scope="module")
def raw():
    return generate_raw(14, rows_per_day=2000, fraud_rate=0.01, seed=11)


def test_seeded_determinism(raw):
    again = generate_raw(14, rows_per_day=2000, fraud_rate=0.01, seed=11)
    pd.testing.assert_frame_equal(raw, again)
    other = generate_raw(14, rows_per_day=2000, fraud_rate=0.01, seed=12)
    assert not raw["amount"].equals(other["amount"])


def test_shape_times_and_fraud_types(raw):
    assert abs(len(raw) - 28_000) < 200
    assert raw["timestamp"].is_monotonic_increasing
    assert raw["timestamp"].min() >= EPOCH_DAY0 and raw["timestamp"].max() < EPOCH_DAY0 + 14 * 86400
    assert raw["transaction_id"].is_unique
    types = raw.loc[raw["is_fraud"] == 1, "fraud_type"].value_counts()
    assert set(types.index) == {"terminal", "takeover", "card_testing"}
    assert set(raw["fraud_type"]) <= {"", *FRAUD_TYPES}
    assert 0.006 < raw["is_fraud"].mean() < 0.014
    assert ((raw["fraud_type"] == "") == (raw["is_fraud"] == 0)).all()


def test_fraud_types_behave_as_described(raw):
    median = raw[raw.is_fraud == 0].groupby("customer_id")["amount"].median()
    take = raw[raw.fraud_type == "takeover"]
    ratio = take["amount"] / take["customer_id"].map(median)
    assert ratio.median() > 2.5
    testing = raw[raw.fraud_type == "card_testing"]
    assert testing["amount"].max() <= 3.0 and (testing["amount"] == 1.0).mean() > 0.2
    gaps = testing.groupby("customer_id")["timestamp"].diff().dropna()
    assert gaps.median() < 600
    terminal = raw[raw.fraud_type == "terminal"]
    assert terminal["terminal_id"].nunique() < 0.2 * raw["terminal_id"].nunique()
    per_customer = raw[raw.is_fraud == 0].groupby("customer_id").size()
    assert per_customer.max() > 5 * per_customer.median()  # some customers are much busier


def test_label_delay(raw):
    delay = raw["labeled_at"] - raw["timestamp"]
    np.testing.assert_allclose(delay, raw["label_delay_seconds"], atol=1e-3)
    fraud_days = delay[raw.is_fraud == 1].median() / 86400
    assert 2.0 < fraud_days < 4.5
    assert (delay > 0).all()
    now = generate_raw(2, rows_per_day=200, label_delay_days=0, seed=1)
    assert (now["labeled_at"] == now["timestamp"]).all()


def test_continuation_keeps_the_world(raw):
    later = generate_raw(7, rows_per_day=2000, fraud_rate=0.01, seed=11, start_day=14)
    assert later["timestamp"].min() >= EPOCH_DAY0 + 14 * 86400
    shared = set(later.customer_id) & set(raw.customer_id)
    assert len(shared) > 0.8 * later.customer_id.nunique()


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "none"])
def test_drift_scenarios_change_the_second_half(scenario):
    base = generate_raw(8, rows_per_day=1500, fraud_rate=0.01, seed=4)
    drift = generate_raw(8, rows_per_day=1500, fraud_rate=0.01, seed=4, scenario=scenario)
    late = lambda d: d[d.timestamp >= EPOCH_DAY0 + 4 * 86400]  # noqa: E731
    if scenario == "fraud_rate":
        assert late(drift).is_fraud.mean() > 2 * late(base).is_fraud.mean()
    elif scenario == "new_pattern":
        assert (late(drift).fraud_type == "new_pattern").sum() > 0
    else:
        assert late(drift).amount.median() > 1.25 * late(base).amount.median()


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="unknown scenario"):
        generate_raw(2, scenario="chaos")
    with pytest.raises(ConfigError, match="fraud_rate"):
        generate_raw(2, fraud_rate=0.9)


@pytest.mark.slow
def test_behavioral_model_beats_amount_and_calendar():
    """Model test: on the default raw generator, history reveals what the raw row cannot."""
    data = generate_raw(28, rows_per_day=3000, fraud_rate=0.01, seed=21)
    ap = {}
    for path in (RAW_BASELINE_SCHEMA_PATH, RAW_SCHEMA_PATH):
        schema = FeatureSchema.load(path)
        result = train_model(enrich(schema, data), schema, test_fraction=0.25)
        ap[path.stem] = result.metrics["average_precision"]
    assert ap["raw_schema"] > 0.35, ap
    assert ap["raw_schema"] > ap["raw_baseline_schema"] + 0.2, ap  # seeds 21-23: +0.29..+0.41


def _run(args, tmp_path, ok=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MLFLOW_"))}
    env.update(FRAUD_STATE_DIR=str(tmp_path / "state"),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")  # fmt: skip
    proc = subprocess.run([FRAUD, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert (proc.returncode == 0) == ok, proc.stderr
    return proc


@pytest.mark.slow
def test_cli_generates_raw_and_trains_on_it(tmp_path):
    out = tmp_path / "raw.parquet"
    _run(["generate", "--kind", "raw", "--out", str(out), "--days", "21", "--rows-per-day",
          "1500", "--fraud-rate", "0.01", "--seed", "3"], tmp_path)  # fmt: skip
    assert pd.read_parquet(out)["customer_id"].str.startswith("c").all()
    _run(["train", "--data", str(out), "--schema", str(RAW_SCHEMA_PATH), "--no-register",
          "--metrics-json", str(tmp_path / "m.json")], tmp_path)  # fmt: skip
    assert json.loads((tmp_path / "m.json").read_text())["average_precision"] > 0.2


@pytest.mark.slow
def test_cli_refuses_bad_raw_inputs_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RAW_SCHEMA_PATH.read_text().replace("windows: [1h]", "windows: [7x]"))
    raw = tmp_path / "raw.csv"
    generate_raw(2, rows_per_day=100, seed=1).drop(columns=["terminal_id"]).to_csv(raw, index=False)
    for schema, fragment in ((bad, "cannot parse window '7x'"),
                             (RAW_SCHEMA_PATH, "missing column(s) for the behavioral features")):  # fmt: skip
        proc = _run(["train", "--data", str(raw), "--schema", str(schema), "--no-register"],
                    tmp_path, ok=False)  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_behavioral_definitions_travel_with_the_model_in_mlflow(tmp_path):
    from fraud_lib import registry
    from fraud_lib.config import Settings
    from fraud_lib.features import predict_scores

    settings = Settings.from_env(
        {},
        state_dir=tmp_path / "state",
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        mlflow_artifact_dir=tmp_path / "mlartifacts",
    )
    schema = FeatureSchema.load(RAW_SCHEMA_PATH)
    data = enrich(schema, generate_raw(10, rows_per_day=800, fraud_rate=0.03, seed=2))
    result = train_model(data, schema, test_fraction=0.2)
    ref = registry.log_model(result, settings)
    loaded = registry.load_version(settings, ref.version)
    assert loaded.schema == schema and loaded.schema.behavior == schema.behavior
    test = data.tail(50)
    np.testing.assert_allclose(
        predict_scores(loaded.model, test, loaded.schema),
        predict_scores(result.model, test, schema),
    )

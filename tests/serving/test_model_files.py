"""The worker's thin model loading (serving.model_files, FRAUD_MODEL_FILES=on): the champion
read through files made by a child process, the alias read without the MLflow client, and a
worker that imports neither MLflow nor scikit-learn nor pandas (issue 17, memory per worker)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import REPO, SCHEMA, set_champion, store_settings

from fraud_lib import registry
from fraud_lib.errors import RegistryError
from fraud_lib.schema import records_to_frame
from serving.model_files import AliasLookup, ModelFiles, load_version, prepare_any
from serving.scoring import CanaryError


def test_files_score_exactly_as_the_logged_pipeline(serving_settings, model_store, frames):
    files = load_version(serving_settings, model_store["versions"]["hgb"])
    assert isinstance(files, ModelFiles) and files.model is None
    served = prepare_any(files)
    assert served.predictor == "compiled-trees"
    assert served.threshold == model_store["hgb"].threshold
    _, later = frames
    records = later[list(SCHEMA.features)].to_dict("records")
    expected = model_store["hgb"].model.predict_proba(records_to_frame(SCHEMA, records))[:, 1]
    assert np.array_equal(served.score_matrix(later[list(SCHEMA.features)].to_numpy()), expected)


def test_a_version_the_trees_do_not_serve_is_loaded_in_process(serving_settings, model_store):
    loaded = load_version(serving_settings, model_store["versions"]["other_schema"])
    assert isinstance(loaded, registry.LoadedModel)  # scaler + logistic regression
    assert prepare_any(loaded).predictor == "pipeline"


def test_refusals_keep_their_reasons(serving_settings, model_store):
    exploding = load_version(serving_settings, model_store["versions"]["exploding"])
    with pytest.raises(CanaryError, match="raised on the canary batch"):
        prepare_any(exploding)
    with pytest.raises(RegistryError, match="could not be loaded"):
        load_version(serving_settings, "999")


def test_alias_lookup_agrees_with_the_mlflow_client(serving_settings, model_store, tmp_path):
    lookup = AliasLookup()
    versions = model_store["versions"]
    assert lookup(serving_settings) == registry.alias_version(serving_settings) == versions["hgb"]
    set_champion(serving_settings, versions["hgb2"])
    assert lookup(serving_settings) == versions["hgb2"]
    assert lookup(serving_settings, "challenger") == registry.alias_version(
        serving_settings, "challenger"
    )
    assert lookup(replace(serving_settings, model_name="no-such-model")) is None
    empty = store_settings(tmp_path, serving_settings.database_url)
    assert lookup(empty) is None  # no store file yet: nothing registered, and none created
    assert not (tmp_path / "mlflow.db").exists()


def test_alias_lookup_names_an_unreachable_server_without_its_password():
    settings = _settings_with_uri("http://bob:s3cret@127.0.0.1:9/")
    with pytest.raises(RegistryError) as err:
        AliasLookup()(settings)
    assert "bob:***@127.0.0.1" in str(err.value) and "s3cret" not in str(err.value)


def _settings_with_uri(uri: str):
    from fraud_lib.config import Settings

    return Settings.from_env({"MLFLOW_TRACKING_URI": uri})


def test_a_serving_worker_imports_no_mlflow_sklearn_or_pandas(serving_settings, model_store):
    """A fresh interpreter builds the app as a gunicorn worker does, scores a batch and lists
    the heavy packages it has imported."""
    code = """
import json, sys
from fraud_lib.config import Settings
from serving.app import create_app
app = create_app(Settings.from_env())
rows = [{f"V{i}": 0.1 * i for i in range(1, 29)} | {"Amount": 12.5} for _ in range(3)]
answer = app.test_client().post("/v1/score", json={"transactions": rows})
model = app.test_client().get("/v1/model").get_json()
app.extensions["fraudloop"].close(timeout=5)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "sklearn", "pandas", "scipy.stats"})
print(json.dumps({"status": answer.status_code, "predictor": model["predictor"], "heavy": heavy}))
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "FRAUD_STATE_DIR": str(serving_settings.state_dir),
        "FRAUD_DATABASE_URL": serving_settings.database_url,
        "MLFLOW_TRACKING_URI": serving_settings.mlflow_tracking_uri,
        "FRAUD_MLFLOW_ARTIFACTS": str(serving_settings.mlflow_artifact_dir),
        "FRAUD_SPOOL_DIR": str(serving_settings.spool_dir),
        "FRAUD_MODEL_FILES": "on",
    }
    set_champion(serving_settings, model_store["versions"]["hgb"])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=True)  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "predictor": "compiled-trees", "heavy": []}

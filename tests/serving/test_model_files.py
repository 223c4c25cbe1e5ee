"""The worker's thin model loading (serving.model_files, FRAUD_MODEL_FILES=on, the default): the
champion read through the files logged with it (or, for a version logged without them, made by a
child process), the alias read without the MLflow client, and a worker that imports neither
MLflow nor scikit-learn nor pandas (issue 17, memory per worker)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import ADMIN_TOKEN, REPO, SCHEMA, rows_of, set_champion, store_settings

from fraud_lib import registry
from fraud_lib.errors import RegistryError
from fraud_lib.schema import records_to_frame
from serving.model_files import AliasLookup, ModelFiles, load_version, prepare_any, reader
from serving.model_files.artifacts import fetch_logged_files
from serving.scoring import CanaryError
from tests.mlflow_server import mlflow_server  # noqa: F401 - fixture used by name


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
    assert isinstance(loaded, ModelFiles) and loaded.in_process is not None  # scaler + LR
    assert loaded.schema.features == ("V1", "V2", "V3", "V4", "V10", "V14", "Amount")
    served = prepare_any(loaded)  # loaded through MLflow only now, after a schema check
    assert served.predictor == "pipeline" and served.version == loaded.version


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


def test_a_serving_worker_imports_no_mlflow_sklearn_or_pandas(
    serving_settings, model_store, tmp_path
):
    """A fresh interpreter builds the app as a gunicorn worker does, scores a batch and lists
    the heavy packages it has imported."""
    code = """
import json, sys, time
from fraud_lib.config import Settings
from serving.app import create_app
app = create_app(Settings.from_env())
rows = [{f"V{i}": 0.1 * i for i in range(1, 29)} | {"Amount": 12.5} for _ in range(3)]
answer = app.test_client().post("/v1/score", json={"transactions": rows})
model = app.test_client().get("/v1/model").get_json()
state = app.extensions["fraudloop"]
with open(sys.argv[1], "w") as fh:
    fh.write("ready")
while open(sys.argv[1]).read() != "moved":  # the test moves the alias to another schema
    time.sleep(0.05)
refused = state.holder.check()["status"]
state.close(timeout=5)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "sklearn", "pandas", "scipy.stats"})
print(json.dumps({"status": answer.status_code, "predictor": model["predictor"],
                  "refused": refused, "heavy": heavy}))
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "FRAUD_STATE_DIR": str(serving_settings.state_dir),
        "FRAUD_DATABASE_URL": serving_settings.database_url,
        "MLFLOW_TRACKING_URI": serving_settings.mlflow_tracking_uri,
        "FRAUD_MLFLOW_ARTIFACTS": str(serving_settings.mlflow_artifact_dir),
        "FRAUD_SPOOL_DIR": str(serving_settings.spool_dir),
    }
    set_champion(serving_settings, model_store["versions"]["hgb"])
    signal = tmp_path / "signal"
    signal.write_text("")
    worker = subprocess.Popen([sys.executable, "-c", code, str(signal)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while signal.read_text() != "ready":
            assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read()
            time.sleep(0.05)
        set_champion(serving_settings, model_store["versions"]["other_schema"])
        signal.write_text("moved")
        out, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    # a version refused for its schema (a pipeline the trees do not serve) imports nothing either
    assert result == {"status": 200, "predictor": "compiled-trees", "refused": "refused",
                      "heavy": []}  # fmt: skip


@pytest.fixture()
def fresh_state(serving_settings, tmp_path):
    """The serving settings with an empty state directory: no version's files cached yet."""
    return replace(serving_settings, state_dir=tmp_path / "fresh-state")


@pytest.fixture()
def no_child(monkeypatch):
    """Fail the test if a load runs the export child."""

    def refuse(*args):
        raise AssertionError("the export child ran")

    monkeypatch.setattr(reader, "_run_export", refuse)


def test_the_default_loads_through_model_files():
    from fraud_lib.config import Settings

    assert Settings.from_env({}).model_files is True
    assert Settings.from_env({"FRAUD_MODEL_FILES": "off"}).model_files is False


def test_a_version_logged_with_its_files_loads_without_a_child(
    fresh_state, model_store, frames, no_child
):
    files = load_version(fresh_state, model_store["versions"]["hgb"])
    assert isinstance(files, ModelFiles) and files.version == model_store["versions"]["hgb"]
    served = prepare_any(files)
    assert served.predictor == "compiled-trees"
    rows = frames[1][list(SCHEMA.features)]
    frame = records_to_frame(SCHEMA, rows.to_dict("records"))
    expected = model_store["hgb"].model.predict_proba(frame)[:, 1]
    assert np.array_equal(served.score_matrix(rows.to_numpy()), expected)
    other = load_version(fresh_state, model_store["versions"]["other_schema"])
    assert other.in_process is not None  # its logged model.json says in_process


def test_a_version_logged_without_files_loads_through_the_child(
    fresh_state, model_store, monkeypatch, tmp_path
):
    versions = model_store["versions"]
    assert not fetch_logged_files(fresh_state, versions["exploding"], tmp_path)  # canary failed
    with pytest.raises(CanaryError, match="raised on the canary batch"):
        prepare_any(load_version(fresh_state, versions["exploding"]))  # the child's verdict
    monkeypatch.setattr(reader, "fetch_logged_files", lambda *args: False)  # logged before
    files = load_version(fresh_state, versions["hgb2"])
    assert isinstance(files, ModelFiles) and prepare_any(files).predictor == "compiled-trees"


def _corrupting_fetch(damage):
    """fetch_logged_files, then ``damage(path of trees.npz)``: a bad artifact in the store."""

    def fetch(settings, version, out: Path) -> bool:
        found = fetch_logged_files(settings, version, out)
        damage(out / "trees.npz")
        return found

    return fetch


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, Path.unlink])
def test_a_damaged_trees_artifact_is_refused_with_a_clear_log_line(
    fresh_state, model_store, monkeypatch, caplog, no_child, damage
):
    version = model_store["versions"]["hgb2"]
    monkeypatch.setattr(reader, "fetch_logged_files", _corrupting_fetch(damage))
    unreadable = f"trees file of version {version} is unreadable"
    with (
        caplog.at_level(logging.ERROR, logger="serving.model_files.reader"),
        pytest.raises(RegistryError, match=unreadable),
    ):
        load_version(fresh_state, version)
    assert f"version {version} refused: its trees file" in caplog.text
    assert not reader._export_dir(fresh_state, version).exists()  # a retry fetches it again
    monkeypatch.setattr(reader, "fetch_logged_files", fetch_logged_files)
    assert prepare_any(load_version(fresh_state, version)).predictor == "compiled-trees"


def test_a_garbled_model_json_artifact_is_refused(fresh_state, model_store, monkeypatch, no_child):
    def fetch(settings, version, out: Path) -> bool:
        (out / "model.json").write_text('{"status": "fi')
        return True

    monkeypatch.setattr(reader, "fetch_logged_files", fetch)
    with pytest.raises(RegistryError, match=r"logged model\.json of version \d+ is unreadable"):
        load_version(fresh_state, model_store["versions"]["hgb2"])


def test_a_damaged_artifact_on_reload_keeps_the_champion_serving(
    make_app, fresh_state, model_store, frames, monkeypatch
):
    versions = model_store["versions"]
    client = make_app(state_dir=fresh_state.state_dir).test_client()
    row = rows_of(frames, 1)[0]
    assert client.post("/v1/score", json=row).status_code == 200
    monkeypatch.setattr(reader, "fetch_logged_files", _corrupting_fetch(_truncate))
    set_champion(fresh_state, versions["hgb2"])
    resp = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    result = resp.get_json()
    assert result["status"] == "refused" and result["error"]["reason"] == "load_failed"
    scored = client.post("/v1/score", json=row)
    assert scored.status_code == 200 and scored.get_json()["model"]["version"] == versions["hgb"]


@pytest.mark.slow
def test_files_logged_to_an_mlflow_server_are_downloaded_over_http(
    mlflow_server,  # noqa: F811 - the fixture
    serving_settings,
    model_store,
    tmp_path,
    no_child,
):
    settings = replace(serving_settings, mlflow_tracking_uri=mlflow_server.url,
                       mlflow_artifact_dir=tmp_path / "no-such-dir",
                       state_dir=tmp_path / "state",
                       experiment_name=f"model-files-{tmp_path.name}")  # fmt: skip
    ref = registry.log_model(model_store["hgb"], settings, run_name="over-http")
    assert ref is not None
    assert fetch_logged_files(settings, ref.version, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"model.json", "trees.npz"}
    files = load_version(settings, ref.version)
    assert isinstance(files, ModelFiles) and prepare_any(files).predictor == "compiled-trees"

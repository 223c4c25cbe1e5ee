"""window_store.py: the window's hand-off through the MLflow artifact store, on the embedded
store (SQLite + artifact directory) and on a real ``mlflow server --serve-artifacts`` whose
client has no access to the server's disk."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from fraud_lib import registry
from fraud_lib.config import Settings
from fraud_lib.data import generate
from fraud_lib.errors import DataError
from fraud_lib.schema import FeatureSchema
from fraud_lib.window_store import WindowIntegrityError, WindowRef, load_window, save_window
from tests.mlflow_server import mlflow_server  # noqa: F401 - fixture used by name

SCHEMA = FeatureSchema()


@pytest.fixture(params=["embedded", "server"])
def store_settings(request, tmp_path: Path) -> Settings:
    """Settings on the embedded store, or on the session's tracking server (the client's
    artifact directory setting points nowhere: only the server can hold the bytes)."""
    base = Settings.from_env({}, state_dir=tmp_path / "state", reports_dir=tmp_path / "reports")
    if request.param == "embedded":
        return replace(
            base,
            mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
            mlflow_artifact_dir=tmp_path / "mlartifacts",
        )
    server = request.getfixturevalue("mlflow_server")
    return replace(
        base,
        mlflow_tracking_uri=server.url,
        mlflow_artifact_dir=tmp_path / "no-such-dir",
        experiment_name=f"window-store-{tmp_path.name}",
    )


def _window(seed: int = 3) -> pd.DataFrame:
    df = SCHEMA.validate_frame(generate(1, rows_per_day=500, seed=seed, fraud_rate=0.02))
    return df.assign(score=0.1, source="log")


def test_round_trip_returns_the_same_frame_and_a_small_reference(store_settings, tmp_path):
    df = _window()
    ref = save_window(store_settings, df, "20250303T000000Z_7d")
    assert ref.rows == len(df) and len(ref.sha256) == 64
    assert ref.artifact_path == "window/20250303T000000Z_7d.parquet"
    assert ref.uri == f"runs:/{ref.run_id}/window/20250303T000000Z_7d.parquet"
    xcom = ref.as_dict()
    assert WindowRef.from_dict(xcom) == ref and len(str(xcom)) < 400
    pd.testing.assert_frame_equal(load_window(store_settings, ref, SCHEMA), df)
    if store_settings.mlflow_tracking_uri.startswith("http"):
        assert not (tmp_path / "no-such-dir").exists()  # the bytes went to the server only


def test_a_changed_artifact_is_refused_with_a_clear_error(store_settings):
    ref = save_window(store_settings, _window(), "k")
    save_window(store_settings, _window(seed=4), "k")  # the stored bytes change under ref
    with pytest.raises(WindowIntegrityError, match=r"sha256 .* the reference says") as err:
        load_window(store_settings, ref)
    assert err.value.fields == {"sha256": "mismatch"}
    with pytest.raises(WindowIntegrityError, match="rows"):
        load_window(store_settings, replace(ref, rows=ref.rows + 1, sha256=_current(ref)))


def _current(ref: WindowRef) -> str:
    """The sha256 the stored artifact has now (downloaded through the store)."""
    import hashlib

    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=ref.artifact_path)
    return hashlib.sha256(Path(local).read_bytes()).hexdigest()


def test_a_retry_reuses_the_run_of_its_run_key(store_settings):
    df = _window()
    first = save_window(store_settings, df, "20250303T000000Z_7d")
    again = save_window(store_settings, df, "20250303T000000Z_7d")
    assert again == first  # same run, same artifact path, same bytes
    assert registry.keyed_run(store_settings, "20250303T000000Z_7d") == first.run_id
    c = registry.client(store_settings)
    runs = c.search_runs(
        [registry.ensure_experiment(store_settings)],
        filter_string=f"tags.`{registry.RUN_KEY_TAG}` = '20250303T000000Z_7d'",
    )
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert [a.path for a in c.list_artifacts(first.run_id, "window")] == [first.artifact_path]
    other = save_window(store_settings, df, "20250310T000000Z_7d")
    assert other.run_id != first.run_id


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"artifact_path": "window/k.parquet", "rows": 1, "sha256": "0" * 64}, "run_id"),
        ({"run_id": "r", "artifact_path": "window/k.parquet", "rows": "1", "sha256": "x"}, "rows"),
        ({"run_id": "r", "artifact_path": "w", "rows": 1}, "sha256"),
    ],
)
def test_a_bad_reference_names_the_field(value, field):
    with pytest.raises(DataError, match=repr(field)) as err:
        WindowRef.from_dict(value)
    assert set(err.value.fields) == {field}


def test_a_reference_that_is_not_a_mapping_is_refused():
    with pytest.raises(DataError, match="mapping"):
        WindowRef.from_dict("/tmp/window.parquet")

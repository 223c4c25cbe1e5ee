"""Settings from the environment and the feature schema (code tests)."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from fraud_lib.config import Settings
from fraud_lib.errors import ConfigError, DataError
from fraud_lib.schema import ULB_FEATURES, FeatureSchema, records_to_frame


def test_defaults_need_no_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert s.state_dir == tmp_path / ".fraudloop"
    assert s.embedded_postgres
    assert s.sqlalchemy_url.startswith("postgresql+psycopg://fraud@127.0.0.1:")
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / '.fraudloop' / 'mlflow.db'}"
    assert s.model_name == "fraud-detector"


def test_env_values_are_parsed_and_validated():
    s = Settings.from_env({"FRAUD_MAX_BATCH": "50", "FRAUD_DATABASE_URL": "postgresql://u:pw@db/x"})
    assert s.max_batch == 50
    assert s.sqlalchemy_url == "postgresql+psycopg://u:pw@db/x"
    assert "pw" not in s.describe()["database_url"]
    with pytest.raises(ConfigError, match="FRAUD_MAX_BATCH='lots' is not a whole number"):
        Settings.from_env({"FRAUD_MAX_BATCH": "lots"})
    with pytest.raises(ConfigError, match="FRAUD_THRESHOLD_RULE"):
        Settings.from_env({"FRAUD_THRESHOLD_RULE": "vibes"})
    with pytest.raises(ConfigError, match="FRAUD_RISK_MEDIUM"):
        Settings.from_env({"FRAUD_RISK_MEDIUM": "0.9", "FRAUD_RISK_HIGH": "0.5"})


def test_admin_token_is_masked():
    assert Settings.from_env({"FRAUD_ADMIN_TOKEN": "s3cret"}).describe()["admin_token"] == "***"


def test_default_schema_is_ulb():
    s = FeatureSchema()
    assert s.time == "Time" and s.label == "Class"
    assert s.features == ULB_FEATURES and len(s.features) == 29


def test_schema_file_round_trip_json_and_yaml(tmp_path):
    spec = {
        "time": "ts",
        "label": "fraud",
        "features": ["a", "b"],
        "id": "tx",
        "categorical": ["merchant"],
    }
    (tmp_path / "s.json").write_text(json.dumps(spec))
    (tmp_path / "s.yaml").write_text(
        "time: ts\nlabel: fraud\nfeatures: [a, b]\nid: tx\ncategorical: [merchant]\n"
    )
    a = FeatureSchema.load(tmp_path / "s.json")
    assert a == FeatureSchema.load(tmp_path / "s.yaml")
    assert FeatureSchema.from_dict(a.to_dict()) == a
    assert a.model_columns == ["a", "b", "merchant"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"time": "t", "label": "y"}, "missing required keys"),
        ({"time": "t", "label": "y", "features": ["a"], "colour": 1}, "unknown keys"),
        ({"time": "t", "label": "y", "features": []}, "at least one"),
        ({"time": "t", "label": "a", "features": ["a"]}, "cannot also be a feature"),
    ],
)
def test_bad_schemas_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        FeatureSchema.from_dict(spec)


def test_missing_schema_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        FeatureSchema.load(tmp_path / "nope.json")


def _frame(n=4):
    s = FeatureSchema()
    df = pd.DataFrame({c: [0.5] * n for c in s.features})
    df["Time"] = range(n)
    df["Class"] = [0, 1] * (n // 2)
    return s, df


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda df: df.drop(columns=["V3"]), "missing column"),
        (lambda df: df.assign(V1=[0.1, math.nan, 0.2, 0.3]), "missing or infinite"),
        (lambda df: df.assign(Amount=[1, math.inf, 2, 3]), "missing or infinite"),
        (lambda df: df.assign(V2=["1", "x", "2", "3"]), "must be numeric"),
        (lambda df: df.assign(Class=[0, 2, 0, 1]), "must be 0 or 1"),
        (lambda df: df.iloc[:0], "no rows"),
    ],
)
def test_validate_frame_errors_name_the_problem(mutate, message):
    s, df = _frame()
    with pytest.raises(DataError, match=message):
        s.validate_frame(mutate(df))


def test_validate_frame_coerces_types():
    s, df = _frame()
    out = s.validate_frame(df.assign(V2=["1", "2", "3", "4"]))
    assert out["V2"].dtype == "float64" and out["Class"].tolist() == [0, 1, 0, 1]


def test_validate_record_reports_each_field():
    s = FeatureSchema()
    rec = {c: 1.0 for c in s.features}
    clean, errors = s.validate_record({**rec, "transaction_id": "t", "Time": 3})
    assert errors == {} and clean["V1"] == 1.0
    _, errors = s.validate_record({**rec, "V1": "x", "V2": math.nan, "V3": True, "bogus": 1})
    assert set(errors) == {"V1", "V2", "V3", "bogus"}
    _, errors = s.validate_record({k: v for k, v in rec.items() if k != "Amount"})
    assert errors == {"Amount": "missing"}
    assert s.validate_record([1, 2])[1] == {"": "each transaction must be a JSON object"}
    frame = records_to_frame(s, [clean])
    assert list(frame.columns) == s.model_columns


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FRAUD_READ_TIMEOUT_SECONDS": "soon"},
            "FRAUD_READ_TIMEOUT_SECONDS='soon' is not a number",
        ),
        (
            {"FRAUD_READ_TIMEOUT_SECONDS": "0"},
            "FRAUD_READ_TIMEOUT_SECONDS=0.0 must be a finite number of seconds above 0",
        ),
        ({"FRAUD_BUFFER_BYTES": "1e9"}, "FRAUD_BUFFER_BYTES='1e9' is not a whole number"),
        ({"FRAUD_BUFFER_BYTES": "1000"}, "cannot hold one body of FRAUD_MAX_BODY_BYTES"),
    ],
)
def test_transport_settings_are_validated(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
    assert Settings.from_env({}).read_timeout_seconds == 10.0


def _one_line_error(path, match: str) -> str:
    with pytest.raises(ConfigError) as info:
        FeatureSchema.load(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message and match in message, message
    return message


def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("time: t\nlabel: [y\nfeatures: [a]\n")
    message = _one_line_error(path, "line 3, column 9")
    assert message.endswith("expected ',' or ']', but got ':'")


def test_json_syntax_error_is_one_line_with_file_and_line(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"time": "t",\n "label": }')
    _one_line_error(path, "line 2, column 11: Expecting value")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("u.yaml", b"time: t\n\xff\xfe: x\n", "line 2: not UTF-8 text (byte 0xff)"),
        ("big.yaml", b"#" * 1_000_001, "larger than 1,000,000 bytes"),
        ("list.yaml", b"- time\n- label\n", "must hold a mapping"),
        ("cat.yaml", b"time: t\nlabel: y\nfeatures: [a]\ncategorical: abc\n", "'categorical' must"),
        ("time.json", b'{"time": ["t"], "label": "y", "features": ["a"]}', "'time' must be"),
        ("keys.yaml", b"time: t\nlabel: y\nfeatures: [a]\n1: x\n", "unknown keys ['1']"),
        ("dupe.yaml", b"time: t\nlabel: y\nfeatures: [a, a]\n", "columns listed twice: a"),
        # a repeated key: PyYAML and json kept the last value silently
        (
            "twice.yaml",
            b"time: t\nlabel: y\nfeatures: [a]\nfeatures: [b]\n",
            "line 4, column 1: duplicate key 'features'; give each key once",
        ),
        (
            "twice.json",
            b'{"time": "t", "label": "y", "features": ["a"], "features": ["b"]}',
            "repeats a key: 'features'",
        ),
        (
            "nested.json",
            b'{"time": "t", "features": ["a"], "behavior": {"k": 1, "k": 2}}',
            "repeats a key: 'behavior.k'",
        ),
    ],
)
def test_hostile_schema_files_give_one_line_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    _one_line_error(path, match)


def test_schema_path_that_is_a_directory_or_unreadable(tmp_path):
    _one_line_error(tmp_path, "is a directory")
    unreadable = tmp_path / "mem.yaml"
    unreadable.symlink_to("/proc/self/mem")  # opens, but reading offset 0 fails, even as root
    _one_line_error(unreadable, "cannot be read: Input/output error")


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("FRAUD_PG_PORT", "-1", "FRAUD_PG_PORT=-1 is not a TCP port"),
        ("FRAUD_PG_PORT", "70000", "FRAUD_PG_PORT=70000 is not a TCP port"),
        ("FRAUD_MAX_BODY_BYTES", "0", "FRAUD_MAX_BODY_BYTES=0 must be at least 1"),
        ("FRAUD_READ_TIMEOUT_SECONDS", "inf", "FRAUD_READ_TIMEOUT_SECONDS=inf must be a finite"),
        ("FRAUD_POLL_SECONDS", "-3", "FRAUD_POLL_SECONDS=-3.0 must be a finite"),
        ("FRAUD_DRIFT_SHARE_THRESHOLD", "7", "FRAUD_DRIFT_SHARE_THRESHOLD=7.0 must be in (0, 1]"),
        ("FRAUD_MIN_LABELED_ROWS", "-1", "FRAUD_MIN_LABELED_ROWS=-1 must be at least 1"),
        ("FRAUD_DRIFT_SAMPLE_ROWS", "0", "FRAUD_DRIFT_SAMPLE_ROWS=0 must be at least 1"),
        ("FRAUD_LOG_BATCH_SIZE", "0", "FRAUD_LOG_BATCH_SIZE=0 must be at least 1"),
        ("FRAUD_LOG_FLUSH_SECONDS", "-1", "FRAUD_LOG_FLUSH_SECONDS=-1.0 must be a finite"),
        # red-team: these ended `fraud labels import` and `fraud monitor` in a traceback
        ("FRAUD_DATABASE_URL", "postgresql://u:pw@h:notaport/db", "port that is not a number"),
        ("FRAUD_DATABASE_URL", "host=h port=1 password=pw dbname=db", "must be a URL such as"),
        ("FRAUD_DATABASE_URL", "mysql://u:pw@h/db", "must be a URL such as"),
    ],
)
def test_out_of_range_settings_are_refused(name: str, value: str, fragment: str) -> None:
    """Red-team finding: `fraud config` accepted these; the service would misbehave later."""
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Settings.from_env({name: value})


def test_an_on_off_setting_that_is_neither_is_refused() -> None:
    """Red-team finding: FRAUD_SPOOL_FSYNC=maybe was taken as off in silence."""
    with pytest.raises(ConfigError, match="FRAUD_SPOOL_FSYNC='maybe' is not on or off"):
        Settings.from_env({"FRAUD_SPOOL_FSYNC": "maybe"})
    assert Settings.from_env({"FRAUD_SPOOL_FSYNC": " ON "}).max_batch  # case and spaces ok


def test_an_mlflow_store_without_a_driver_is_a_config_error() -> None:
    """Red-team finding: mysql:// ended `fraud rollback` in a ModuleNotFoundError traceback."""
    with pytest.raises(ConfigError, match="the scheme 'mysql' has no driver") as err:
        Settings.from_env({"MLFLOW_TRACKING_URI": "mysql://u:s3cret@db/mlflow"})
    assert "s3cret" not in str(err.value)
    for uri in ("sqlite:////tmp/m.db", "http://127.0.0.1:5000", "postgresql://u@h/m", "mlruns"):
        assert Settings.from_env({"MLFLOW_TRACKING_URI": uri}).mlflow_tracking_uri == uri

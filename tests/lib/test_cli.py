"""The ``fraud`` console script end to end (real Postgres, real MLflow store in a temp dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fraud_lib.data import generate, save_transactions

FRAUD = str(Path(sys.executable).with_name("fraud"))


def run(args: list[str], env: dict[str, str], cwd: Path, ok: bool = True):
    proc = subprocess.run(
        [FRAUD, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def cli_env(tmp_path, pg_url, pg_engine):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MLFLOW_"))}
    env.update(
        FRAUD_STATE_DIR=str(tmp_path / "state"),
        FRAUD_DATABASE_URL=pg_url,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
        FRAUD_MLFLOW_ARTIFACTS=str(tmp_path / "artifacts"),
        FRAUD_MIN_AVERAGE_PRECISION="0.05",
    )
    return env


@pytest.mark.slow
def test_generate_train_promote_models_rollback(tmp_path, cli_env):
    data = tmp_path / "tx.parquet"
    run(
        [
            "generate",
            "--out",
            str(data),
            "--days",
            "10",
            "--rows-per-day",
            "4000",
            "--fraud-rate",
            "0.005",
            "--seed",
            "5",
        ],
        cli_env,
        tmp_path,
    )
    assert len(pd.read_parquet(data)) == 40_000

    metrics = tmp_path / "m.json"
    out = run(
        ["train", "--data", str(data), "--model", "lr", "--metrics-json", str(metrics)],
        cli_env,
        tmp_path,
    )
    assert "average_precision" in out.stdout and "registered fraud-detector version 1" in out.stdout
    m = json.loads(metrics.read_text())
    for key in (
        "average_precision",
        "roc_auc",
        "precision",
        "recall",
        "f1",
        "threshold",
        "n_train",
        "n_test",
        "train_seconds",
    ):
        assert key in m, key
    assert m["n_test"] == 8000

    first = run(["promote", "--data", str(data)], cli_env, tmp_path)
    assert "decision: promoted - first champion" in first.stdout
    run(["train", "--data", str(data), "--model", "hgb"], cli_env, tmp_path)
    second = run(["promote", "--data", str(data)], cli_env, tmp_path)
    assert "challenger v2" in second.stdout and "champion v1" in second.stdout
    assert "decision: promoted" in second.stdout

    listing = json.loads(run(["models", "--json"], cli_env, tmp_path).stdout)
    assert [v["aliases"] for v in listing["versions"]] == [["challenger", "champion"], []]
    assert [e["event"] for e in listing["events"]] == ["promoted", "promoted"]

    back = run(["rollback"], cli_env, tmp_path)
    assert "from version 2 back to 1" in back.stdout
    table = run(["models"], cli_env, tmp_path).stdout
    assert "rolled_back" in table


@pytest.mark.slow
def test_rollback_to_the_champion_itself_is_refused(tmp_path, cli_env):
    data = tmp_path / "tx.parquet"
    generate_args = ["--days", "6", "--rows-per-day", "2000", "--fraud-rate", "0.01"]
    run(["generate", "--out", str(data), *generate_args], cli_env, tmp_path)
    run(["train", "--data", str(data)], cli_env, tmp_path)
    assert "decision: promoted" in run(["promote", "--data", str(data)], cli_env, tmp_path).stdout
    before = json.loads(run(["models", "--json"], cli_env, tmp_path).stdout)

    proc = run(["rollback", "--to", "1"], cli_env, tmp_path, ok=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: version 1 is already the champion; nothing to roll back"
    ]
    for hostile in ("abc", "-5", "99999999999", "1" * 10_000, b"\xff\xfe"):
        proc = run(["rollback", "--to", hostile], cli_env, tmp_path, ok=False)
        assert proc.returncode == 1, hostile
        _assert_clean_error(proc, "error: a version is a whole number from 1 to 2147483647")
    assert json.loads(run(["models", "--json"], cli_env, tmp_path).stdout) == before


def test_retrain_conf_with_a_repeated_key_is_refused(tmp_path, cli_env):
    """json.loads kept the last ``dry_run``: the run would have promoted for real."""
    conf = '{"dry_run": true, "model_type": "lr", "dry_run": false}'
    proc = run(["retrain", "--conf", conf], cli_env, tmp_path, ok=False)
    _assert_clean_error(proc, "error: --conf repeats a key: 'dry_run'; send each key once")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_labels_import_reports_unknown_ids(tmp_path, cli_env):
    path = tmp_path / "labels.csv"
    path.write_text("transaction_id,label,labeled_at\nt-1,1,2026-01-02T00:00:00Z\nt-2,0,\n")
    out = run(["labels", "import", str(path)], cli_env, tmp_path)
    assert "inserted 2, updated 0, unknown transaction ids 2" in out.stdout


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"transaction_id,label\nab\x00cd,1\n", ["line 2 holds a NUL byte"]),
        (
            b"transaction_id,label\n" + b"x" * 100_000 + b",1\n",
            ["row 0 has transaction_id", "must be 1 to 200 characters (got 100,000)"],
        ),
        (
            b"transaction_id,label,labeled_at\nt-1,1,1600-01-01T00:00:00Z\n",
            ["row 0: labeled_at 1600-01-01T00:00:00+00:00 is before 2000-01-01T00:00:00Z"],
        ),
        (
            b"transaction_id,label,labeled_at\nt-1,1,9999-12-31T23:59:59-14:00\n",
            ["row 0: labeled_at", "FRAUD_MAX_CLOCK_SKEW_SECONDS"],
        ),
        (
            b"transaction_id,label,labeled_at\nt-1,1," + b"1" * 10_000 + b"\n",
            ["labeled_at is 10,000 characters long"],
        ),
        (
            b"transaction_id,label,labeled_at\nt-1,1,01/05/2024\n",
            ["labeled_at '01/05/2024' is not an ISO-8601 timestamp"],
        ),
        (b"transaction_id,label\nt-1,1\nt-2,\n", ["row 1 has no label; labels must be 0 or 1"]),
        (b"transaction_id,label\nt-1,yes\n", ["row 0 has label 'yes'; labels must be 0 or 1"]),
        (b"transaction_id,label\nt-1,1\nt-\xff2,0\n", ["line 3 is not valid UTF-8 (byte 0xff)"]),
        (  # pandas read the second label as "label.1" and stored the first one
            b"transaction_id,label,label\nt-1,0,1\n",
            ["the header names 'label' more than once; keep one column each"],
        ),
    ],
    ids=["nul", "long-id", "1600", "9999", "digits", "non-iso", "nan", "yes", "utf8", "twice"],
)
def test_labels_import_refuses_hostile_files(tmp_path, cli_env, pg_engine, content, fragments):
    path = tmp_path / "labels.csv"
    path.write_bytes(content)
    proc = run(["labels", "import", str(path)], cli_env, tmp_path, ok=False)
    _assert_clean_error(proc, "error:", *fragments)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and len(last) < 400 and "np.float64" not in last
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM labels").scalar_one() == 0


def _assert_clean_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.fixture
def good_frame():
    return generate(2, rows_per_day=200, seed=1)


@pytest.mark.parametrize(
    ("name", "mutate", "fragments"),
    [
        ("missing_col.csv", lambda df: df.drop(columns=["V7"]), ["missing column(s): V7"]),
        (
            "nan.csv",
            lambda df: df.assign(V3=[None] + [0.0] * (len(df) - 1)),
            ["'V3' has a missing or infinite value at row 0"],
        ),
        (
            "label.csv",
            lambda df: df.assign(Class=[2] + [0] * (len(df) - 1)),
            ["'Class' must be 0 or 1; row 0 has 2"],
        ),
        (
            "text.csv",
            lambda df: df.assign(Amount=["abc"] + [1.0] * (len(df) - 1)),
            ["'Amount' must be numeric"],
        ),
    ],
)
def test_bad_data_gives_one_line_error(tmp_path, cli_env, good_frame, name, mutate, fragments):
    path = tmp_path / name
    save_transactions(mutate(good_frame), path)
    proc = run(["train", "--data", str(path), "--no-register"], cli_env, tmp_path, ok=False)
    _assert_clean_error(proc, "error:", *fragments)
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")


def test_empty_missing_and_unknown_inputs(tmp_path, cli_env):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _assert_clean_error(
        run(["train", "--data", str(empty)], cli_env, tmp_path, ok=False), "is empty"
    )
    _assert_clean_error(
        run(["train", "--data", str(tmp_path / "nope.csv")], cli_env, tmp_path, ok=False),
        "does not exist",
    )
    _assert_clean_error(
        run(["train", "--data", str(empty), "--model", "xgboost"], cli_env, tmp_path, ok=False),
        "Invalid value for '--model'",
        "'xgboost' is not one of 'hgb', 'lr', 'rf'",
    )
    _assert_clean_error(
        run(
            ["generate", "--out", str(tmp_path / "x.csv"), "--scenario", "meteor"],
            cli_env,
            tmp_path,
            ok=False,
        ),
        "meteor",
    )
    bad_env = {**cli_env, "FRAUD_MAX_BATCH": "many"}
    _assert_clean_error(run(["config"], bad_env, tmp_path, ok=False), "FRAUD_MAX_BATCH")


def test_promote_without_challenger_says_what_to_do(tmp_path, cli_env, good_frame):
    path = tmp_path / "d.csv"
    save_transactions(good_frame, path)
    _assert_clean_error(
        run(["promote", "--data", str(path)], cli_env, tmp_path, ok=False), "no challenger"
    )
    _assert_clean_error(run(["rollback"], cli_env, tmp_path, ok=False), "no champion")


def test_help_explains_every_command(tmp_path, cli_env):
    top = run(["--help"], cli_env, tmp_path).stdout
    for command in ("generate", "train", "promote", "rollback", "models", "db", "labels"):
        assert command in top
    assert "--resample" in run(["train", "--help"], cli_env, tmp_path).stdout


@pytest.fixture
def hostile_files(tmp_path, good_frame) -> Path:
    """A folder of inputs that every file option must refuse with one line."""
    save_transactions(good_frame, tmp_path / "good.csv")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "mem.csv").symlink_to("/proc/self/mem")  # unreadable, even for root
    (tmp_path / "tx.json").write_text("{}")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "latin1.csv").write_bytes("Time,V1\n1,caf\u00e9\n".encode("latin-1"))
    (tmp_path / "s.yaml").write_text("time: t\nlabel: [y\nfeatures: [a]\n")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--data", "folder"], "folder is a directory"),
        (["train", "--data", "folder.csv"], "folder.csv is a directory"),
        (["train", "--data", "missing.csv"], "missing.csv does not exist"),
        (["train", "--data", "mem.csv"], "mem.csv cannot be read"),
        (["train", "--data", "tx.json"], "tx.json: unsupported file type"),
        (["train", "--data", "junk.parquet"], "junk.parquet could not be read as parquet"),
        (["train", "--data", "latin1.csv"], "latin1.csv is not UTF-8 text (byte 0xe9)"),
        (["train", "--data", "good.csv", "--schema", "s.yaml"], "s.yaml, line 3, column 9: "),
        (["train", "--data", "good.csv", "--schema", "folder"], "schema file folder is a dir"),
        (["train", "--data", "good.csv", "--schema", "mem.csv"], "mem.csv cannot be read"),
        (["train", "--data", "good.csv", "--metrics-json", "folder"], "folder is a directory"),
        (["promote", "--data", "folder"], "folder is a directory"),
        (["promote", "--data", "mem.csv"], "mem.csv cannot be read"),
        (["generate", "--out", "folder.csv", "--days", "1"], "folder.csv is a directory"),
        (["labels", "import", "folder"], "folder is a directory"),
        (["labels", "import", "latin1.csv"], "latin1.csv: line 2 is not valid UTF-8 (byte 0xe9)"),
        (["retrain", "--dags-folder", "good.csv"], "--dags-folder good.csv is a file"),
    ],
)
def test_file_options_refuse_bad_paths_with_one_error_line(cli_env, hostile_files, args, fragment):
    proc = run(args, cli_env, hostile_files, ok=False)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith(">> ")]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]

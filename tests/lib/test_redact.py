"""Credentials never reach people: ``redact``, ``fraud config``, CLI errors and log lines."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fraud_lib.config import Settings
from fraud_lib.pgserver import free_port
from fraud_lib.redact import RedactingFormatter, redact

FRAUD = str(Path(sys.executable).with_name("fraud"))
SECRET = "s3cret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:s3cret@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql+psycopg://fraud:p/w?s3cret@127.0.0.1:1/fraud",
         "postgresql+psycopg://fraud:***@127.0.0.1:1/fraud"),
        ("postgresql://db/x?password=s3cret&sslmode=require&sslpassword=s3cret",
         "postgresql://db/x?password=***&sslmode=require&sslpassword=***"),
        ("postgresql://db/x?PassWord=s3cret#frag", "postgresql://db/x?PassWord=***#frag"),
        ("host=db password=s3cret user=u", "host=db password=*** user=u"),
        ("host=db password = 's3 \\' cret' user=u", "host=db password = *** user=u"),
        ("sslpassword=s3cret dbname=x", "sslpassword=*** dbname=x"),
        ("PGPASSWORD=s3cret psql", "PGPASSWORD=*** psql"),
        ("https://bob:s3cret@mlflow.example.com/api", "https://bob:***@mlflow.example.com/api"),
        ("at 'http://bob:s3cret@h:5000' failed", "at 'http://bob:***@h:5000' failed"),
        ("a http://h/x then d://u:s3cret@h", "a http://h/x then d://u:***@h"),
    ],
)  # fmt: skip
def test_redact_masks_every_credential_form(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["postgresql://fraud@127.0.0.1:5/fraud", "sqlite:////tmp/x/mlflow.db",
     "http://127.0.0.1:8080/api", "passwords are hidden", "", "caf\udcc3 password"],
)  # fmt: skip
def test_redact_leaves_text_without_credentials_alone(text):
    assert redact(text) == text


@pytest.mark.parametrize(
    "hostile", ["a://:" * 40_000, "a." * 100_000, "x" * 1_000_000, "password='\\" * 40_000]
)
def test_redact_stays_linear_on_hostile_text(hostile):
    started = time.perf_counter()
    redact(hostile)
    assert time.perf_counter() - started < 1.0


def test_formatter_masks_messages_and_tracebacks():
    try:
        raise RuntimeError(f"cannot connect to postgresql://u:{SECRET}@h/x?sslpassword={SECRET}")
    except RuntimeError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "url %s", (f"host=h password={SECRET}",),
            sys.exc_info(),
        )  # fmt: skip
    text = RedactingFormatter("%(message)s").format(record)
    assert SECRET not in text and "RuntimeError: cannot connect to postgresql://u:***@h" in text


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MLFLOW_"))}
    env.update(FRAUD_STATE_DIR=str(tmp_path / "state"), **extra)
    return env


def test_fraud_config_never_prints_a_password(tmp_path):
    env = _env(
        tmp_path,
        FRAUD_DATABASE_URL=f"postgresql://u:pw{SECRET}@db/x?password={SECRET}&sslpassword=x{SECRET}",
        MLFLOW_TRACKING_URI=f"https://bob:{SECRET}@mlflow.example.com",
        FRAUD_ADMIN_TOKEN=SECRET,
    )
    proc = subprocess.run([FRAUD, "config"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert "database_url = postgresql://u:***@db/x?password=***&sslpassword=***" in proc.stdout
    assert "mlflow_tracking_uri = https://bob:***@mlflow.example.com" in proc.stdout
    settings = Settings.from_env(env)
    assert SECRET not in str(settings.describe())


def test_fraud_config_survives_invalid_utf8_in_a_url(tmp_path):
    env = {k.encode(): v.encode() for k, v in _env(tmp_path).items()}
    env[b"FRAUD_DATABASE_URL"] = b"postgresql://u:p\xffs3cret@db/x?password=s3\xfecret"
    proc = subprocess.run([FRAUD, "config"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"s3cret" not in proc.stdout + proc.stderr and b"s3\xfecret" not in proc.stdout


def test_database_error_line_masks_the_url(tmp_path):
    closed = free_port()  # nothing listens there: connection refused
    url = f"postgresql://u:{SECRET}@127.0.0.1:{closed}/x?password={SECRET}&sslpassword={SECRET}"
    labels = tmp_path / "labels.csv"
    labels.write_text("transaction_id,label\nt1,1\n")
    proc = subprocess.run(
        [FRAUD, "-vv", "labels", "import", str(labels)],
        env=_env(tmp_path, FRAUD_DATABASE_URL=url), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert SECRET not in proc.stdout + proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: cannot reach the database at postgresql+psycopg://u:***@")
    assert "password=***&sslpassword=***" in error

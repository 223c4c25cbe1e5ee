"""Run the project's DAGs on a local Airflow (no Airflow import here: it runs as a subprocess).

Used by ``fraud airflow``, ``fraud retrain`` and ``fraud demo``: one place knows the
environment Airflow needs (AIRFLOW_HOME under the state dir, the project's dags/ folder, no
example DAGs, absolute FRAUD_* paths because tasks may run from another working directory).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from fraud_lib import procs
from fraud_lib.config import Settings
from fraud_lib.errors import FraudError

# Seconds Airflow's processes get between SIGTERM and SIGKILL when `fraud airflow` stops
# (LocalExecutor workers were seen ignoring SIGTERM for 45 s and more).
STOP_GRACE_SECONDS = 15.0
# The repository's dags/ folder, found from the package directory (editable install / checkout).
DEFAULT_DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"


def airflow_env(settings: Settings, dags_folder: str | None = None) -> dict[str, str]:
    """Environment for Airflow commands run on the given settings."""
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(settings.state_dir / "airflow"))
    folder = dags_folder or env.get("AIRFLOW__CORE__DAGS_FOLDER") or str(DEFAULT_DAGS_FOLDER)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(folder).resolve())
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["FRAUD_STATE_DIR"] = str(settings.state_dir)
    env["FRAUD_REPORTS_DIR"] = str(settings.reports_dir)
    env["FRAUD_MLFLOW_ARTIFACTS"] = str(settings.mlflow_artifact_dir)
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    if settings.database_url:
        env["FRAUD_DATABASE_URL"] = settings.database_url
    for name, value in (("FRAUD_SCHEMA", settings.schema_path),
                        ("FRAUD_INITIAL_DATA", settings.initial_data)):  # fmt: skip
        if value:
            env[name] = str(Path(value).resolve())
    return env


def console_script(name: str) -> str:
    """The ``name`` command of this environment (next to the running Python, else on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FraudError(f"the {name} command was not found; run `make install` first")
    return found


def airflow_exe() -> str:
    """The ``airflow`` command of this environment."""
    return console_script("airflow")


def ensure_db(env: dict[str, str], say: Callable[[str], None]) -> Path:
    """Create or migrate Airflow's metadata DB once per Airflow version and DB URL."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    stamp = home / ".fraudloop-migrated"
    wanted = f"{version('apache-airflow')} {env.get('AIRFLOW__DATABASE__SQL_ALCHEMY_CONN', '')}"
    if not stamp.exists() or stamp.read_text() != wanted:
        say(f"preparing Airflow's metadata database in {home} (airflow db migrate, ~15 s)")
        proc = subprocess.run([airflow_exe(), "db", "migrate"], env=env, check=False,
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise FraudError(f"airflow db migrate failed:\n{tail}")
        stamp.write_text(wanted)
    return home


def dags_test(
    dag_id: str,
    conf: dict,
    env: dict[str, str],
    say: Callable[[str], None],
    *,
    logical_date: str | None = None,
    log_path: Path | None = None,
) -> float:
    """Run one DAG in-process with ``airflow dags test`` (no scheduler); return its seconds.

    The task logs go to ``log_path`` when given (the terminal otherwise). A failed run raises
    :class:`FraudError` naming the log.
    """
    ensure_db(env, say)
    cmd = [airflow_exe(), "dags", "test", dag_id]
    if logical_date:
        cmd.append(logical_date)
    cmd += ["-c", json.dumps(conf)]
    say(f"running {dag_id} {json.dumps(conf)} (airflow dags test)")
    started = time.monotonic()
    if log_path is None:
        proc = subprocess.run(cmd, env=env, check=False)
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as out:
            proc = subprocess.run(cmd, env=env, check=False, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    where = f"; log: {log_path}" if log_path else ""
    if proc.returncode != 0:
        raise FraudError(f"{dag_id} failed (exit code {proc.returncode}){where}")
    say(f"{dag_id} finished in {seconds:.0f}s{where}")
    return seconds


def run_standalone(env: dict[str, str], say: Callable[[str], None],
                   grace: float = STOP_GRACE_SECONDS) -> int:  # fmt: skip
    """Run ``airflow standalone`` until it exits, or until this process gets SIGTERM or SIGINT.

    It runs in a session of its own (it does not pass signals on to its scheduler, API server
    and workers; a terminal's Ctrl-C reaches only this process), and its whole tree is
    stopped on the way out (:func:`fraud_lib.procs.stop_tree`). Returns its exit code, or 0
    when stopped by a signal.
    """
    return procs.run_session([airflow_exe(), "standalone"], env, grace=grace, say=say)

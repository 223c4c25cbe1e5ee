"""A real ``mlflow server`` for the tests: its own temp working directory, SQLite backend and
artifact directory, bound to 127.0.0.1 on a free port, artifacts served through the server
(``--serve-artifacts``, default root ``mlflow-artifacts:/``), so a client reaches them over
HTTP only. Stopped with its whole process tree (uvicorn and the job runner's consumers) by pid.

Import the fixture into a test module: ``from tests.mlflow_server import mlflow_server``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fraud_lib import pgserver, procs

START_TIMEOUT = 90.0


@dataclass(frozen=True)
class MlflowServer:
    """A running tracking server: its URL, its files (the test client must not touch them)."""

    url: str
    home: Path
    pid: int

    @property
    def artifact_dir(self) -> Path:
        """Where the server keeps artifacts (for tests that tamper with a stored artifact)."""
        return self.home / "artifacts"


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT:.0f} s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    """One tracking server per test session; its files are removed at the end."""
    home = Path(tempfile.mkdtemp(prefix="fraudloop-mlflow-server-"))
    port = pgserver.free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home / 'backend.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(home / "artifacts"),
        "--default-artifact-root",
        "mlflow-artifacts:/",
    ]
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=home, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_healthy(proc, url, log)
        yield MlflowServer(url=url, home=home, pid=proc.pid)
    finally:
        procs.stop_tree(proc, grace=10)
        shutil.rmtree(home, ignore_errors=True)

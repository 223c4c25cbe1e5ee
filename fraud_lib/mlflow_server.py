"""A local ``mlflow server`` as a real process: the multi-host topology's tracking server, with
artifacts served through it (``--serve-artifacts``, default root ``mlflow-artifacts:/``), so its
clients reach the artifact store over HTTP only. Bound to 127.0.0.1; its whole process tree
(uvicorn and the job runner's consumers) is stopped by pid. Used by the tests and the benches.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fraud_lib import pgserver, procs

START_TIMEOUT = 90.0


@dataclass(frozen=True)
class MlflowServer:
    """A running tracking server: its URL, its home (backend, artifacts, log) and its pid."""

    url: str
    home: Path
    pid: int

    @property
    def artifact_dir(self) -> Path:
        """Where the server keeps artifacts (its clients never read it directly)."""
        return self.home / "artifacts"


def _argv(home: Path, port: int, backend_uri: str) -> list[str]:
    return [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(home / "artifacts"),
        "--default-artifact-root",
        "mlflow-artifacts:/",
    ]


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


def server_env() -> dict[str, str]:
    """The environment of an ``mlflow server``: without its huey job runner (~6 consumer
    processes serving MLflow features fraudloop does not use)."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextmanager
def running(home: Path, backend_uri: str = "") -> Iterator[MlflowServer]:
    """An ``mlflow server`` working in ``home`` (SQLite backend there unless ``backend_uri``),
    on a free 127.0.0.1 port, until the block exits; then its process tree is stopped."""
    home.mkdir(parents=True, exist_ok=True)
    port = pgserver.free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "server.log"
    argv = _argv(home, port, backend_uri or f"sqlite:///{home / 'backend.db'}")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=home, env=server_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_healthy(proc, url, log)
        yield MlflowServer(url=url, home=home, pid=proc.pid)
    finally:
        procs.stop_tree(proc, grace=10)

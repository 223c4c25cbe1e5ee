"""A real ``mlflow server`` for the tests (:mod:`fraud_lib.mlflow_server`): its own temp working
directory, SQLite backend and artifact directory, bound to 127.0.0.1 on a free port, artifacts
served through the server, so a client reaches them over HTTP only; stopped with its whole
process tree by pid, its files removed.

Import the fixture into a test module: ``from tests.mlflow_server import mlflow_server``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraud_lib.mlflow_server import MlflowServer, running


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    """One tracking server per test session."""
    home = Path(tempfile.mkdtemp(prefix="fraudloop-mlflow-server-"))
    try:
        with running(home) as server:
            yield server
    finally:
        shutil.rmtree(home, ignore_errors=True)

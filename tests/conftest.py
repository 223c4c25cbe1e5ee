"""Shared fixtures. The suite runs against a REAL Postgres started here (no mocks, no Docker).

- ``pg_base_dir``: a session temp dir the Postgres OS user can traverse (matters as root).
- ``pg_server`` / ``pg_url``: one embedded server per session on a free port; stopped at the
  end by its postmaster pid (pg_ctl stop, SIGKILL as a last resort) and its files removed.
- ``pg_engine``: a migrated engine with the three tables emptied before each test.
- ``redis_server``: one embedded redis-server per session on a free port, stopped by its pid.
- ``settings``: ``Settings`` pointing at that server and at per-test state/MLflow/report dirs,
  built from an empty environment so a developer's FRAUD_* variables cannot leak in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fraud_lib import pgserver, redisserver, store
from fraud_lib.config import Settings
from tests.local_settings import local_settings


def stop_by_pid(server: pgserver.EmbeddedPostgres, timeout: float = 30) -> None:
    """Stop ``server`` by its own postmaster pid: pg_ctl stop, then make sure the pid is gone."""
    pid = server.pid
    if pid is None:
        return
    with contextlib.suppress(Exception):  # whatever pg_ctl says, the process must go
        # immediate: no shutdown checkpoint (seconds of fsync); the files are deleted anyway
        server.stop(mode="immediate")
    deadline = time.monotonic() + timeout
    while pgserver.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pgserver.pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def pg_base_dir() -> Iterator[Path]:
    """Session temp dir, mode 0755 so the 'postgres' OS user can reach it when we are root
    (pytest's own basetemp under /tmp/pytest-of-root is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="fraudloop-pg-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(pg_base_dir: Path) -> Iterator[pgserver.EmbeddedPostgres]:
    """The session's embedded Postgres (outage tests may stop and start it)."""
    server = pgserver.EmbeddedPostgres(pg_base_dir / "session", pgserver.free_port())
    # The server outlives a killed pytest (pg_ctl detaches it): turn SIGTERM (e.g. from
    # `timeout`) into KeyboardInterrupt, on which pytest still runs this teardown.
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.ensure_running()
        yield server
    finally:
        stop_by_pid(server)
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def pg_url(pg_server: pgserver.EmbeddedPostgres) -> str:
    """SQLAlchemy URL of the session's Postgres."""
    return pg_server.url


@pytest.fixture()
def pg_engine(pg_server: pgserver.EmbeddedPostgres, pg_url: str) -> Iterator[sa.Engine]:
    """Migrated engine on empty tables (restarts the server if a previous test stopped it)."""
    if not pg_server.status()["running"]:
        pg_server.ensure_running()
    engine = store.make_engine(pg_url)
    store.migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE predictions, labels, model_events RESTART IDENTITY")
    yield engine


@pytest.fixture(scope="session")
def redis_server(pg_base_dir: Path) -> Iterator[redisserver.EmbeddedRedis]:
    """The session's embedded redis-server (stopped by its pid at the end)."""
    server = redisserver.EmbeddedRedis(pg_base_dir / "redis-state", pgserver.free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def settings(tmp_path: Path, pg_url: str) -> Settings:
    """Settings on the session's Postgres with per-test directories; no FRAUD_* from the shell."""
    return local_settings(tmp_path, pg_url)

"""The embedded Postgres server: binary lookup, lifecycle, crash recovery, root handling."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from fraud_lib import pgauth, pgbin, pgroot, pgserver
from fraud_lib.config import Settings
from fraud_lib.errors import DatabaseError
from fraud_lib.pgserver import EmbeddedPostgres

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="root-only behaviour")


def has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def fake_bindir(path: Path) -> Path:
    path.mkdir(parents=True)
    for exe in ("initdb", "pg_ctl", "postgres"):
        (path / exe).write_text("#!/bin/sh\n")
        (path / exe).chmod(0o755)
    return path


def connect(server: EmbeddedPostgres) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=server.port, user="fraud", dbname="fraud", autocommit=True,
        password=pgauth.read_secret(server.password_file),
    )  # fmt: skip


@pytest.fixture(scope="module")
def own_server(pg_base_dir):
    """An initialised, stopped server of this module's own (tests leave it stopped)."""
    server = EmbeddedPostgres(pg_base_dir / "own", pgserver.free_port())
    server.init()
    yield server
    server.stop()


# ------------------------------------------------------------------------------ find_bindir
def test_find_bindir_prefers_env(tmp_path, monkeypatch):
    bindir = fake_bindir(tmp_path / "bin")
    monkeypatch.setenv("FRAUD_PG_BINDIR", str(bindir))
    assert pgbin.find_bindir() == bindir
    monkeypatch.setenv("FRAUD_PG_BINDIR", str(tmp_path / "missing"))
    with pytest.raises(DatabaseError, match=r"FRAUD_PG_BINDIR=.*initdb, pg_ctl and postgres"):
        pgbin.find_bindir()
    (tmp_path / "bin" / "postgres").unlink()  # a partial install is no server
    monkeypatch.setenv("FRAUD_PG_BINDIR", str(bindir))
    with pytest.raises(DatabaseError, match=r"FRAUD_PG_BINDIR=.*initdb, pg_ctl and postgres"):
        pgbin.find_bindir()


@pytest.mark.parametrize("hostile", ["/nonexistent/\udcff\udcfe", "/etc/passwd", "x" * 5000])
def test_find_bindir_explains_a_hostile_env_value(hostile, monkeypatch):
    monkeypatch.setenv("FRAUD_PG_BINDIR", hostile)
    with pytest.raises(DatabaseError, match=r"FRAUD_PG_BINDIR=.*holds no executable") as info:
        pgbin.find_bindir()
    assert len(str(info.value)) < 600 and str(info.value).isascii()


def test_find_bindir_picks_the_highest_version(tmp_path, monkeypatch):
    for version in ("9.6", "15", "16", "12"):
        fake_bindir(tmp_path / "postgresql" / version / "bin")
    monkeypatch.delenv("FRAUD_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no pg_config, no initdb on PATH
    monkeypatch.setattr(pgbin, "SEARCH_GLOBS", [str(tmp_path / "postgresql/*/bin")])
    assert pgbin.find_bindir() == tmp_path / "postgresql" / "16" / "bin"


def test_find_bindir_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("FRAUD_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pgbin, "SEARCH_GLOBS", [])
    monkeypatch.setattr(pgbin, "WHEEL_PACKAGE", "fraudloop_no_such_wheel")  # wheel not installed
    with pytest.raises(DatabaseError) as info:
        pgbin.find_bindir()
    message = str(info.value)
    hints = ("apt-get install postgresql", pgbin.WHEEL_PIN, "FRAUD_PG_BINDIR", "FRAUD_DATABASE_URL")
    for hint in hints:
        assert hint in message


def test_find_bindir_finds_this_machines_postgres():
    bindir = pgbin.find_bindir()
    assert (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file()


# ------------------------------------------------------------------------------ lifecycle
@pytest.mark.slow
def test_status_is_truthful_through_init_start_and_stop(pg_base_dir):
    server = EmbeddedPostgres(pg_base_dir / "lifecycle", pgserver.free_port())
    before = server.status()
    assert before["running"] is False and before["pid"] is None
    assert before["initialized"] is False and server.pid is None

    url = server.ensure_running()
    try:
        password = pgauth.read_secret(server.password_file)
        assert url == f"postgresql+psycopg://fraud:{password}@127.0.0.1:{server.port}/fraud"
        st = server.status()
        assert password not in str(st) and st["url"] == url.replace(password, "***")
        pidfile_pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        assert st["running"] and st["ready"] and st["initialized"]
        assert st["pid"] == pidfile_pid == server.pid
        assert st["port"] == server.port

        started = time.perf_counter()
        assert server.ensure_running() == url  # second call: a no-op
        assert time.perf_counter() - started < 1.0
        assert server.pid == pidfile_pid

        with connect(server) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("fraud",)
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SHOW max_connections").fetchone() == ("200",)
    finally:
        assert server.stop() is True
    assert not pgserver.pid_alive(pidfile_pid)
    after = server.status()
    assert after["running"] is False and after["pid"] is None and after["initialized"]
    assert server.stop() is False  # stopping a stopped server is a no-op


def test_context_manager_starts_and_stops(own_server):
    with EmbeddedPostgres(own_server.data_dir, own_server.port) as server:
        pid = server.pid
        assert pid and server.status()["running"]
    assert not pgserver.pid_alive(pid)
    assert own_server.status()["running"] is False


def test_stale_pid_file_is_not_running(own_server):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (own_server.data_dir / "postmaster.pid").write_text(f"{dead.pid}\n{own_server.data_dir}\n")
    assert own_server.status()["running"] is False
    own_server.ensure_running()
    try:
        assert own_server.status()["running"] and own_server.pid != dead.pid
    finally:
        own_server.stop()


@pytest.mark.slow
def test_restarts_after_the_postmaster_is_killed_without_losing_rows(own_server):
    own_server.ensure_running()
    try:
        with connect(own_server) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS crash (x int)")
            conn.execute("INSERT INTO crash VALUES (42)")
        pid = own_server.pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while own_server.status()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert own_server.status()["running"] is False
        own_server.ensure_running()
        assert own_server.pid not in (None, pid)
        with connect(own_server) as conn:
            assert conn.execute("SELECT x FROM crash").fetchall() == [(42,)]
    finally:
        own_server.stop()


def test_busy_port_gives_a_clear_error(own_server):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = EmbeddedPostgres(own_server.data_dir, port)
        with pytest.raises(DatabaseError, match=f"port {port} .*in use.*FRAUD_PG_PORT"):
            server.start()
    assert server.status()["running"] is False


def test_running_on_another_port_is_reported(own_server):
    own_server.ensure_running()
    try:
        other = EmbeddedPostgres(own_server.data_dir, pgserver.free_port())
        with pytest.raises(DatabaseError, match=f"already runs on port {own_server.port}"):
            other.ensure_running()
    finally:
        own_server.stop()


def test_refuses_a_non_postgres_directory(pg_base_dir):
    data = pg_base_dir / "not-a-cluster"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    with pytest.raises(DatabaseError, match="not a Postgres data directory"):
        EmbeddedPostgres(data, pgserver.free_port()).init()


# ------------------------------------------------------------------------------ root
@as_root
def test_as_root_the_server_runs_as_the_postgres_user(own_server):
    # 'postgres' where PostgreSQL packages made it, else the user fraudloop creates
    postgres = pwd.getpwnam("postgres" if has_user("postgres") else pgroot.CREATED_OS_USER)
    assert own_server.data_dir.stat().st_uid == postgres.pw_uid
    own_server.ensure_running()
    try:
        uid_line = next(
            line
            for line in Path(f"/proc/{own_server.pid}/status").read_text().splitlines()
            if line.startswith("Uid:")
        )
        assert int(uid_line.split()[1]) == postgres.pw_uid
    finally:
        own_server.stop()


@as_root
def test_as_root_an_unreachable_data_dir_is_explained():
    private = Path(tempfile.mkdtemp())  # 0700, owned by root
    try:
        with pytest.raises(DatabaseError) as info:
            EmbeddedPostgres(private / "pg", pgserver.free_port()).init()
        message = str(info.value)
        user = "postgres" if has_user("postgres") else pgroot.CREATED_OS_USER
        assert f"not reachable by OS user {user!r}" in message
        assert str(private) in message and "FRAUD_STATE_DIR" in message
    finally:
        subprocess.run(["rm", "-rf", str(private)], check=True)


@as_root
def test_as_root_a_missing_or_root_os_user_is_explained(pg_base_dir, monkeypatch):
    for hostile in ("no-such-user-fraudloop", "bad;name $(id)\n", "\udcff", "x" * 5000):
        server = EmbeddedPostgres(pg_base_dir / "nouser", pgserver.free_port())
        monkeypatch.setenv("FRAUD_PG_OS_USER", hostile)
        with pytest.raises(DatabaseError, match=r"does not exist.*FRAUD_PG_OS_USER") as info:
            server.init()
        assert len(str(info.value)) < 600 and str(info.value).isascii()
    server = EmbeddedPostgres(pg_base_dir / "rootuser", pgserver.free_port())
    monkeypatch.setenv("FRAUD_PG_OS_USER", "root")
    with pytest.raises(DatabaseError, match="refuse to run as root"):
        server.init()


# ------------------------------------------------------------------------------ settings
def test_database_url_uses_the_external_database_without_starting_anything(tmp_path):
    settings = Settings.from_env(
        {"FRAUD_DATABASE_URL": "postgresql://u:pw@db.example:5432/x"}, state_dir=tmp_path / "s"
    )
    assert pgserver.database_url(settings) == "postgresql+psycopg://u:pw@db.example:5432/x"
    assert not (tmp_path / "s").exists()


def test_database_url_without_start_only_computes_the_url(tmp_path):
    settings = Settings.from_env({}, state_dir=tmp_path / "s", pg_port=55999)
    server = pgserver.embedded_from_settings(settings)
    assert server.data_dir == settings.postgres_dir and server.port == 55999
    url = pgserver.database_url(settings, start=False)
    assert url == settings.sqlalchemy_url == "postgresql+psycopg://fraud@127.0.0.1:55999/fraud"
    assert not (tmp_path / "s").exists()

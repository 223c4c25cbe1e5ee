"""An embedded Postgres server run from Python with the machine's own Postgres binaries (no Docker;
found by :mod:`fraud_lib.pgbin`).

Layout, for a data directory ``<base>/<name>`` (the state dir's ``postgres/`` by default)::

    <base>/<name>/          the cluster (initdb), owned by the OS user that runs the server
    <base>/<name>.log       server log (pg_ctl -l)
    <base>/<name>-socket/   unix socket directory (skipped when the path would be too long)
    <base>/.<name>.lock     flock held while a process initialises or starts the server

The server listens on 127.0.0.1 only, with ``trust`` authentication and a superuser named
``fraud``. ``fsync`` stays on: the prediction log promises that no acknowledged row is lost.

Running as root (CI does): ``initdb`` and ``pg_ctl`` refuse root, so the data directory is
chowned to a non-root OS user and the binaries run through ``runuser -u USER --``. The user is
``$FRAUD_PG_OS_USER``, else the owner of an existing cluster, else ``postgres``. Every parent of
the data directory must be searchable by that user (``/root/...`` is not): this is checked and
reported rather than worked around.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from fraud_lib import pgbin
from fraud_lib.errors import DatabaseError

log = logging.getLogger(__name__)

# Settings written to <data>/fraudloop.conf at every start (ALTER SYSTEM still overrides them).
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "128MB",
    "max_connections": "200",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS


def pid_alive(pid: int, data_dir: Path | None = None) -> bool:
    """True if ``pid`` is a live (non-zombie) process and, where /proc tells, a postgres in
    ``data_dir``: a stale postmaster.pid whose pid was reused by something else reads False."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to another user
    proc = Path(f"/proc/{pid}")
    try:
        text = (proc / "stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we have
    comm, state = text[text.find("(") + 1 : text.rfind(")")], text[text.rfind(")") + 2 :][:1]
    if state in ("Z", "X") or comm not in ("postgres", "postmaster"):
        return False
    if data_dir is not None:
        with contextlib.suppress(OSError):
            return Path(os.readlink(proc / "cwd")) == data_dir
    return True


def _port_in_use(port: int) -> bool:
    """Would the server fail to bind 127.0.0.1:port? (Same SO_REUSEADDR bind as postgres.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for tests and demos)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        self._bindir = Path(bindir) if bindir else None
        self._os_user: pwd.struct_passwd | None = None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r}, port={self.port})"

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database on the configured port."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    @property
    def pid(self) -> int | None:
        """Postmaster pid when the server runs, else None."""
        return self.status()["pid"]

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            major = None
            if self.initialized:
                major = (self.data_dir / "PG_VERSION").read_text().strip()
            self._bindir = pgbin.find_bindir(prefer_major=major)
        return self._bindir

    def server_user(self) -> pwd.struct_passwd | None:
        """The OS user the binaries run as when we are root; None when not root."""
        if os.geteuid() != 0:
            return None
        if self._os_user is None:
            name = os.environ.get("FRAUD_PG_OS_USER", "").strip()
            if not name and self.initialized and self.data_dir.stat().st_uid != 0:
                with contextlib.suppress(KeyError):
                    name = pwd.getpwuid(self.data_dir.stat().st_uid).pw_name
            name = name or "postgres"
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                raise DatabaseError(
                    f"running as root: initdb and pg_ctl refuse root, so the server runs as OS "
                    f"user {name!r}, which does not exist. Create it (`useradd --system "
                    f"--user-group {name}`; PostgreSQL packages create 'postgres'), or set "
                    "FRAUD_PG_OS_USER to an existing non-root user, or run as a non-root user"
                ) from None
            if pw.pw_uid == 0:
                raise DatabaseError(
                    f"FRAUD_PG_OS_USER={name} is root; initdb and pg_ctl refuse to run as root"
                )
            self._os_user = pw
        return self._os_user

    # ------------------------------------------------------------------ processes
    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in args]
        extra: dict[str, Any] = {}
        pw = self.server_user()
        if pw is not None:
            if shutil.which("runuser"):
                argv = ["runuser", "-u", pw.pw_name, "--", *argv]
            else:  # e.g. macOS: let Python drop privileges in the child
                groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
                extra = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        log.debug("running %s", " ".join(argv))
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=env, cwd="/", **extra
            )
        except subprocess.TimeoutExpired:
            raise DatabaseError(f"{Path(argv[-1]).name}: {' '.join(argv)} timed out") from None
        except OSError as exc:
            raise DatabaseError(f"could not run {argv[0]}: {exc}") from None

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
        """Create data/socket dirs and the log file, owned by the server user when root."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self.socket_dir is not None:
            self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        pw = self.server_user()
        if pw is None:
            return
        self._check_reachable(pw)
        for path in (self.data_dir, self.socket_dir, self.log_file):
            if path is not None and path.stat().st_uid != pw.pw_uid:
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def _check_reachable(self, pw: pwd.struct_passwd) -> None:
        groups = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        for parent in reversed(self.data_dir.parents):
            st = parent.stat()
            if st.st_uid == pw.pw_uid:
                ok = st.st_mode & stat.S_IXUSR
            elif st.st_gid in groups:
                ok = st.st_mode & stat.S_IXGRP
            else:
                ok = st.st_mode & stat.S_IXOTH
            if not ok:
                raise DatabaseError(
                    f"the Postgres data directory {self.data_dir} is not reachable by OS user "
                    f"{pw.pw_name!r}, which runs the server because we are root: {parent} "
                    f"(mode {stat.filemode(st.st_mode)}) is not searchable by it. Set "
                    "FRAUD_STATE_DIR to a directory that user can reach (e.g. under /var/lib "
                    f"or /tmp), or `chmod o+x {parent}`"
                )

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
        log.info("initialising a Postgres cluster in %s", self.data_dir)
        proc = self._run(
            [
                self.bindir / "initdb",
                "-D", self.data_dir,
                "-U", self.user,
                "--auth=trust",
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
            "url": self.url,
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
            info["url"] = self.url.replace(f":{self.port}/", f":{info['port']}/")
        info["ready"] = len(lines) > 7 and lines[7].strip() == "ready"
        return info

    def _live_processes_in_data_dir(self) -> list[int]:
        """Pids of live processes whose cwd is the data dir (Linux; [] elsewhere)."""
        pids = []
        for entry in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                if Path(os.readlink(entry / "cwd")) == self.data_dir and pid_alive(int(entry.name)):
                    pids.append(int(entry.name))
        return pids

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
        while pids := self._live_processes_in_data_dir():
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
        if _port_in_use(self.port):
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

    def create_database(self) -> bool:
        """Create ``dbname`` if missing; True if it was created."""
        if self.dbname == "postgres":
            return False
        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                autocommit=True, connect_timeout=10,
            ) as conn:  # fmt: skip
                if conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)
                ).fetchone():
                    return False
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
                    log.info("created database %s", self.dbname)
                    return True
                return False
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"cannot connect to the embedded Postgres: {exc}") from None

    def ensure_running(self) -> str:
        """Initialise if needed, start if not running, create the database; return the URL."""
        with self._locked():
            self.init()
            self.start()
            self.create_database()
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

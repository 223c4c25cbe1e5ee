"""An embedded redis-server run from Python (no Docker), the way :mod:`fraud_lib.pgserver` runs
Postgres: Debian's ``redis-server`` binary, one server per state directory.

Layout, for a directory ``<base>/<name>`` (the state dir's ``redis/`` by default)::

    <base>/<name>/              mode 0700: redis.conf (holds the password, 0600), the
                                append-only file, redis.pid and redis.log
    <base>/<name>.password      the server's password, mode 0600

The server listens on 127.0.0.1 only, in protected mode, and wants the password from every
client. It daemonizes and writes its pid file, so it outlives the command that started it;
:meth:`EmbeddedRedis.stop` ends it by that pid. The append-only file (fsync every second)
keeps a Celery broker's queue across restarts; fraudloop's own state in Redis can always be
rebuilt from Postgres.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

from fraud_lib.errors import ConfigError, DatabaseError
from fraud_lib.pgauth import ensure_secret, read_secret

__all__ = ["EmbeddedRedis", "embedded_from_settings", "redis_binary", "redis_url"]

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `apt-get install redis-server` (`make system-deps` does it as root)"


def redis_binary() -> str:
    """Path of ``redis-server`` (``FRAUD_REDIS_SERVER`` or PATH), else a ConfigError."""
    found = os.environ.get("FRAUD_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
            if os.access(candidate, os.X_OK):
                return candidate
        raise ConfigError(f"redis-server not found; {INSTALL_HINT}")
    return found


class EmbeddedRedis:
    """One local redis-server under ``base``, on 127.0.0.1:``port``."""

    def __init__(self, base: Path, port: int, name: str = "redis") -> None:
        self.dir = Path(base) / name
        self.password_file = Path(base) / f"{name}.password"
        self.port = port

    def __repr__(self) -> str:
        return f"EmbeddedRedis({self.dir}, port={self.port})"

    @property
    def pid_file(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "redis.log"

    def _url(self, password: str) -> str:
        return f"redis://:{password}@127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:
        """The connection URL with the password (never log it; see :attr:`display_url`)."""
        return self._url(quote(ensure_secret(self.password_file)[0], safe=""))

    @property
    def display_url(self) -> str:
        return self._url("***")

    @property
    def pid(self) -> int | None:
        """The server's pid when it is running, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_redis_pid(pid) else None

    def _write_conf(self, password: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        conf = self.dir / "redis.conf"
        text = "\n".join(
            [
                "bind 127.0.0.1",
                "protected-mode yes",
                f"port {self.port}",
                "daemonize yes",
                f"pidfile {self.pid_file}",
                f"logfile {self.log_file}",
                f"dir {self.dir}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                f'requirepass "{password}"',
                "",
            ]
        )
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text)
        return conf

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A client of this server (a new connection pool)."""
        password = read_secret(self.password_file) or ""
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=password, socket_timeout=timeout
        )

    def ping(self) -> bool:
        """True when the server answers an authenticated PING."""
        try:
            return bool(self.client(timeout=1.0).ping())
        except (redis.RedisError, OSError):
            return False

    def status(self) -> dict[str, Any]:
        """Whether it runs, with pid, port, directory and the masked URL."""
        pid = self.pid
        return {
            "running": pid is not None and self.ping(),
            "pid": pid,
            "port": self.port,
            "dir": str(self.dir),
            "url": self.display_url,
        }

    def start(self, timeout: float = 20.0) -> bool:
        """Start the server unless it already runs; True when this call started it."""
        if self.pid is not None and self.ping():
            return False
        password, _ = ensure_secret(self.password_file)
        conf = self._write_conf(password)
        self.pid_file.unlink(missing_ok=True)
        result = subprocess.run(
            [redis_binary(), str(conf)], capture_output=True, text=True, timeout=timeout
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid is not None and self.ping():
                log.info("redis-server running on 127.0.0.1:%d (pid %s)", self.port, self.pid)
                return True
            time.sleep(0.05)
        raise DatabaseError(
            f"redis-server did not start on 127.0.0.1:{self.port} within {timeout:.0f} s "
            f"(exit {result.returncode}); its log {self.log_file} says:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 10) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the server by its pid (SIGTERM, then SIGKILL); True if it was running."""
        pid = self.pid
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and is_redis_pid(pid):
            time.sleep(0.05)
        if is_redis_pid(pid):
            log.warning(
                "redis-server (pid %d) ignored SIGTERM for %.0f s: killing it", pid, timeout
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def ensure_running(self) -> str:
        """Start the server if needed; its URL."""
        self.start()
        return self.url

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_redis_pid(pid: int) -> bool:
    """True if ``pid`` is a live redis-server (a stale pid file's reused pid reads False)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = text[text.find("(") + 1 : text.rfind(")")], text[text.rfind(")") + 2 :][:1]
    return state not in ("Z", "X") and comm.startswith("redis-server")


def embedded_from_settings(settings: Any) -> EmbeddedRedis:
    """The embedded server of ``settings`` (state dir, ``FRAUD_REDIS_PORT``)."""
    return EmbeddedRedis(settings.state_dir, settings.redis_port)


def redis_url(settings: Any, *, start: bool = True) -> str:
    """``FRAUD_REDIS_URL`` when set, else the embedded server's URL (started if ``start``)."""
    if settings.redis_url:
        return settings.redis_url
    server = embedded_from_settings(settings)
    return server.ensure_running() if start else server.url

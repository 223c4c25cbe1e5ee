"""Processes and ports of the embedded Postgres: liveness of a postmaster pid, free ports, and
running the server binaries (as the server's OS user when we are root)."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from fraud_lib.errors import DatabaseError

log = logging.getLogger(__name__)


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


def port_in_use(port: int) -> bool:
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


def processes_in(data_dir: Path) -> list[int]:
    """Pids of live processes whose cwd is ``data_dir`` (Linux; [] elsewhere)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if Path(os.readlink(entry / "cwd")) == data_dir and pid_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def run(
    args: list[Any], pw: pwd.struct_passwd | None, *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a server binary (as ``pw`` when given), without the caller's PG* variables."""
    argv = [str(a) for a in args]
    extra: dict[str, Any] = {}
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

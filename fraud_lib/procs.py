"""Stopping processes this process started: a gunicorn master (the demo, the benchmarks, the
tests) and a server run in its own process group (``fraud ui``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def child_pids(pid: int) -> list[int]:
    """The pids of ``pid``'s children (a gunicorn master's workers); [] once it is gone."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stop_master(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the master (graceful: workers finish their requests and drain their logs) and
    wait up to ``timeout`` s; past that, SIGKILL its workers and then the master."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for pid in child_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(10)


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the process group led by ``proc`` and wait up to ``timeout`` s for ``proc``;
    past that, SIGKILL the group. Members left after ``proc`` exited are stopped too."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # is any member of the group left?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def run_group(
    argv: Sequence[str], env: Mapping[str, str] | None = None, stop_timeout: float = 10.0
) -> int:
    """Run ``argv`` in its own process group until it exits, or until this process gets
    SIGTERM or SIGINT: then stop the whole group (:func:`stop_group`) and return 0.
    Otherwise return the command's exit code. Call from the main thread."""
    stop: list[int] = []
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for signum in handlers:
        signal.signal(signum, lambda signum, frame: stop.append(signum))
    try:
        proc = subprocess.Popen(list(argv), env=None if env is None else dict(env),
                                start_new_session=True)  # fmt: skip
        try:
            while not stop and proc.poll() is None:
                time.sleep(0.1)
        finally:
            stop_group(proc, stop_timeout)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return 0 if stop else proc.returncode

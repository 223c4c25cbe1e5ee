"""Stopping a gunicorn master this process started (the demo, the benchmarks, the tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
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

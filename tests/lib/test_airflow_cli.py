"""``fraud airflow`` as people run it: a real ``airflow standalone`` that listens on 127.0.0.1
only, and that SIGTERM or Ctrl-C stops completely (exit 0, no process left, port free)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from fraud_lib.pgserver import free_port

FRAUD = str(Path(sys.executable).with_name("fraud"))
LISTEN = "0A"  # TCP state in /proc/net/tcp


def listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == LISTEN and int(hex_port, 16) == port:
                found.add(address)
    return found


def alive(snapshot: dict[int, float]) -> list[str]:
    """The processes of ``snapshot`` (pid: create time) still running, with their commands."""
    left = []
    for pid, created in snapshot.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return left


def tree(proc: subprocess.Popen) -> dict[int, float]:
    out = {}
    for p in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            out[p.pid] = p.create_time()
    return out


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    """An environment with a throw-away state dir and AIRFLOW_HOME (migrated by the first run)."""
    base = tmp_path_factory.mktemp("airflow-cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "AIRFLOW", "MLFLOW"))}
    env.update(FRAUD_STATE_DIR=str(base / "state"), AIRFLOW_HOME=str(base / "airflow"))
    return env


def wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"fraud airflow exited:\n{log.read_text()[-4000:]}"
        try:
            if requests.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"Airflow not healthy in {timeout}s:\n{log.read_text()[-4000:]}")


def wait_scheduler(proc: subprocess.Popen, timeout: float = 120) -> dict[int, float]:
    """The tree once the scheduler runs and the tree stopped growing for 3 s."""
    deadline, last, stable_since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        pids = tree(proc)
        scheduler = any("scheduler" in " ".join(c) for c in _cmdlines(pids))
        if len(pids) != last:
            last, stable_since = len(pids), time.monotonic()
        elif scheduler and time.monotonic() - stable_since >= 3:
            return pids
        time.sleep(0.5)
    raise AssertionError(f"the scheduler did not settle in {timeout}s: {len(tree(proc))} pids")


def _cmdlines(pids: dict[int, float]) -> list[list[str]]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(psutil.Process(pid).cmdline())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_airflow_binds_loopback_and_a_signal_stops_the_whole_tree(sig, airflow_env, tmp_path):
    port = free_port()
    log = tmp_path / "airflow.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [FRAUD, "airflow", "--port", str(port)], env=airflow_env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    snapshot: dict[int, float] = {}
    try:
        wait_healthy(proc, port, log)
        assert listeners(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0 or ::
        snapshot = wait_scheduler(proc)
        started = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        stopped_in = time.monotonic() - started
        assert code == 0, log.read_text()[-4000:]
        assert alive(snapshot) == [], f"left running after {stopped_in:.1f}s"
        assert listeners(port) == set()
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for entry in alive(snapshot):  # never leave a process behind, even on failure
            os.kill(int(entry.split()[0]), signal.SIGKILL)

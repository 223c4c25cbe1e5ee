"""``fraud ui`` as a user runs it: bad options are one ``error:`` line, and Ctrl-C (SIGINT)
stops the Evidently UI it started, with its whole process group, and exits 0. (SIGTERM and
the pages themselves: tests/e2e/test_dashboard_browser.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fraud_lib import pgserver, procs

FRAUD = str(Path(sys.executable).with_name("fraud"))


@pytest.fixture
def ui_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MLFLOW_"))}
    env["FRAUD_STATE_DIR"] = str(tmp_path / "state")
    return env


def _fail(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([FRAUD, "ui", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith(">> ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_a_port_in_use_is_one_error_line(ui_env):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert "cannot listen on 127.0.0.1:" in _fail(["--port", str(port)], ui_env)


@pytest.mark.parametrize("host", [" ", "bad host", "x" * 300, "256.1.1.1"])
def test_a_bad_host_is_one_error_line(ui_env, host):
    assert _fail(["--host", host], ui_env).startswith("error: ")


def test_an_unwritable_workspace_is_one_error_line(ui_env, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = {**ui_env, "FRAUD_EVIDENTLY_WORKSPACE": str(blocked)}
    assert "FRAUD_EVIDENTLY_WORKSPACE" in _fail(["--port", str(pgserver.free_port())], env)


def test_an_out_of_range_port_is_a_usage_error(ui_env):
    proc = subprocess.run([FRAUD, "ui", "--port", "70000"], env=ui_env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2 and "70000 is not in the range" in proc.stderr


@pytest.mark.slow
def test_sigint_stops_the_whole_tree_and_exits_0(ui_env):
    port = pgserver.free_port()
    proc = subprocess.Popen([FRAUD, "ui", "--port", str(port)], env=ui_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    children: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        children = procs.child_pids(proc.pid)
        assert proc.poll() is None and len(children) == 1
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in children:
            if Path(f"/proc/{pid}").exists():
                os.killpg(pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert out.startswith(f"monitoring dashboard: http://127.0.0.1:{port}/projects/")
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)

"""`fraud stack down` stops recorded processes by pid (fraud_lib.stack.runner), on real
processes: a session whose leader and child ignore SIGTERM is killed, a recorded pid whose
start time does not match (a reused pid) is left alone, and the CLI reports an empty stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from fraud_lib import procs
from fraud_lib.cli import cli
from fraud_lib.stack import runner
from fraud_lib.stack.plan import SERVICE_NAMES, StackPlan

STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
print(child.pid, flush=True)
time.sleep(300)
"""


def test_down_kills_a_session_that_ignores_sigterm(tmp_path: Path) -> None:
    plan = StackPlan(tmp_path, {})
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    runner._record(plan, "nginx", {"pid": proc.pid, "start": procs.start_time(proc.pid)})
    messages: list[str] = []
    started = time.monotonic()
    assert runner.down(plan, messages.append, grace=1) == {}
    assert time.monotonic() - started < 20
    proc.wait(5)
    assert procs.start_time(child) is None
    assert any("killed: nginx" in m for m in messages), messages
    assert not (tmp_path / "stack.json").exists()


def test_a_reused_pid_is_not_signalled(tmp_path: Path) -> None:
    plan = StackPlan(tmp_path, {})
    me = os.getpid()
    runner._record(plan, "scoring-1", {"pid": me, "start": (procs.start_time(me) or 0) + 1})
    assert runner.leftovers(plan) == {}
    assert runner.down(plan, lambda _m: None, grace=1) == {}  # and we are still here


def test_cli_status_and_down_of_an_empty_stack(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["stack", "status", "--dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in SERVICE_NAMES)
    result = CliRunner().invoke(cli, ["stack", "down", "--dir", str(tmp_path / "s")])
    assert result.exit_code == 0 and "no stack recorded" in result.output

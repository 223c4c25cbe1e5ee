"""Stopping processes this process started: a gunicorn master (the demo, the bench harness,
the tests) and a whole process tree run in a session of its own (``fraud airflow``, ``fraud
ui``). Linux: read from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
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


def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """(parent pid, session id, state, start time) of a live process; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[1]), int(fields[3]), fields[0], int(fields[19])


def start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, None if it is gone or a
    zombie: with the pid, it names a process that a reused pid cannot impersonate."""
    stat = _stat(pid)
    return stat[3] if stat and stat[2] != "Z" else None


def process_tree(pid: int, *, descendants: bool = True) -> dict[int, int]:
    """``pid``, its descendants and every process of the session ``pid`` leads (members that
    lost their parent or moved to a process group of their own stay in it), as
    {pid: start time}; zombies left out. ``descendants=False`` once ``pid`` is reaped (its
    number may be reused): the session only."""
    stats = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := _stat(int(e)))}
    children: dict[int, list[int]] = {}
    for p, (ppid, _, _, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    tree, todo = set(), [pid] if descendants else []
    while todo:
        p = todo.pop()
        if p in stats and p not in tree:
            tree.add(p)
            todo += children.get(p, [])
    tree |= {p for p, st in stats.items() if st[1] == pid}
    return {p: stats[p][3] for p in tree if stats[p][2] != "Z"}


def _alive(known: dict[int, int]) -> dict[int, int]:
    """The processes of ``known`` that still run (same pid and start time, not zombies)."""
    return {p: t for p, t in known.items() if (st := _stat(p)) and st[3] == t and st[2] != "Z"}


def _signal_all(pids: dict[int, int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _members(proc: subprocess.Popen) -> dict[int, int]:
    """``proc``'s tree now (``proc`` itself reaped once it has exited)."""
    return process_tree(proc.pid, descendants=proc.poll() is None)


def stop_tree(proc: subprocess.Popen, grace: float) -> int:
    """Stop ``proc`` (started with ``start_new_session=True``) and its whole tree: SIGTERM to
    every member, SIGKILL to whatever still runs ``grace`` s later; returns how many needed
    SIGKILL. Members started meanwhile are found again on every pass."""
    known = _members(proc)
    _signal_all(known, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        known = _alive(known) | _members(proc)
        if not known or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    killed = len(known)
    while known and time.monotonic() < deadline + 10:
        _signal_all(known, signal.SIGKILL)
        time.sleep(0.1)
        known = _alive(known) | _members(proc)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    return killed


def run_session(argv: Sequence[str], env: Mapping[str, str] | None = None, *, grace: float = 10.0,
                say: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """Run ``argv`` in a session of its own until it exits, or until this process gets SIGTERM
    or SIGINT; its whole tree is stopped on the way out (:func:`stop_tree`: SIGKILL for what
    still runs ``grace`` s after SIGTERM). Returns its exit code, or 0 when stopped by a signal.
    Call from the main thread."""
    stop: list[str] = []
    watched = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda n, _f: stop.append(signal.Signals(n).name))
                for sig in watched}  # fmt: skip
    name = Path(argv[0]).name
    try:
        proc = subprocess.Popen(list(argv), env=None if env is None else dict(env),
                                start_new_session=True)  # fmt: skip
        while proc.poll() is None and not stop:
            time.sleep(0.2)
        if stop and say:
            say(f"{stop[0]}: stopping {name} and its processes (SIGKILL after {grace:.0f} s)")
        killed = stop_tree(proc, grace)
        if killed and say:
            say(f"{killed} processes of {name} ignored SIGTERM for {grace:.0f} s: killed")
        return 0 if stop else int(proc.returncode)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Start, stop and inspect the stack's processes.

``up`` starts each service in a session of its own (so that its whole tree can be found
again), with its output in ``<service>/service.log``, and records every pid with its start
time in ``stack.json`` as soon as it is started; ``down`` stops each recorded session by
that pid (SIGTERM, then SIGKILL for what still runs after the grace time) and Postgres with
``pg_ctl stop``, and reports any process of the stack still alive afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from fraud_lib import airflow_local, procs
from fraud_lib.errors import FraudError
from fraud_lib.stack import configs
from fraud_lib.stack import plan as plan_mod
from fraud_lib.stack.plan import DATABASES, Service, StackPlan

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 240.0
STOP_GRACE_SECONDS = 30.0  # gunicorn's graceful drain, a Celery warm shutdown
DAEMONS = ("postgres", "redis")  # they detach; stopped with pg_ctl and by the Redis pid file
Say = Callable[[str], None]


def _state_file(plan: StackPlan) -> Path:
    return plan.base / "stack.json"


def recorded(plan: StackPlan) -> dict[str, dict[str, Any]]:
    """{service: {"pid", "start", "port", ...}} of the last ``up``; {} if none."""
    path = _state_file(plan)
    return json.loads(path.read_text()) if path.exists() else {}


def _record(plan: StackPlan, name: str, entry: dict[str, Any]) -> None:
    state = recorded(plan)
    state[name] = entry
    _state_file(plan).write_text(json.dumps(state, indent=2) + "\n")


def alive(entry: dict[str, Any]) -> bool:
    """True while the recorded process runs (same pid, same start time)."""
    return entry.get("pid") is not None and procs.start_time(entry["pid"]) == entry["start"]


def _start_postgres(plan: StackPlan, say: Say) -> None:
    say(f"postgres: databases {', '.join(DATABASES)} on 127.0.0.1:{plan.ports['postgres']}")
    for database in DATABASES:
        server = plan.postgres(database)
        server.ensure_running()
    pid = plan.postgres("fraud").pid
    assert pid is not None
    _record(plan, "postgres", {"pid": pid, "start": procs.start_time(pid),
                               "port": plan.ports["postgres"]})  # fmt: skip


def _start_redis(plan: StackPlan, say: Say) -> None:
    """The Celery broker (fraud_lib.redisserver), unless FRAUD_REDIS_URL names one."""
    if plan.external_redis_url:
        say("redis: the external broker of FRAUD_REDIS_URL")
        return
    server = plan.redis()
    server.start()
    say(f"redis: the Celery broker on 127.0.0.1:{server.port}")
    pid = server.pid
    assert pid is not None
    _record(plan, "redis", {"pid": pid, "start": procs.start_time(pid), "port": server.port})


def _prepare_airflow(plan: StackPlan, say: Say) -> None:
    """``airflow db migrate`` (compose's airflow-init) and the UI user's password file."""
    home = plan.home("airflow-apiserver")
    env = plan_mod.base_env() | plan_mod.airflow_env(plan, home)
    airflow_local.ensure_db(env, say)
    passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({plan_mod.ADMIN_USER: plan.secret("admin-password")}, fh)


def _spawn(plan: StackPlan, svc: Service) -> None:
    svc.home.mkdir(parents=True, exist_ok=True)
    with (svc.home / "service.log").open("ab") as out:
        proc = subprocess.Popen(
            list(svc.argv), cwd=svc.home, env=plan_mod.base_env() | svc.env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    _record(plan, svc.name, {"pid": proc.pid, "start": procs.start_time(proc.pid), "port": svc.port,
                             "argv0": svc.argv[0]})  # fmt: skip


def _ready(svc: Service) -> bool:
    if svc.ready_url:
        with contextlib.suppress(requests.RequestException):
            return requests.get(svc.ready_url, timeout=2).status_code < 500
        return False
    if svc.port:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", svc.port), timeout=1).close()
            return True
        return False
    return True


def _log_tail(svc: Service, lines: int = 12) -> str:
    path = svc.home / "service.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _wait_ready(plan: StackPlan, todo: list[Service], say: Say, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = recorded(plan)
    while todo:
        for svc in list(todo):
            if not alive(state[svc.name]):
                raise FraudError(f"{svc.name} exited during start-up; the end of "
                                 f"{svc.home / 'service.log'}:\n{_log_tail(svc)}")  # fmt: skip
            if _ready(svc):
                say(f"{svc.name}: ready (pid {state[svc.name]['pid']})")
                todo.remove(svc)
        if todo and time.monotonic() > deadline:
            names = ", ".join(s.name for s in todo)
            raise FraudError(f"not ready after {timeout:.0f} s: {names}; see their service.log")
        time.sleep(0.5)


def up(plan: StackPlan, say: Say, *, timeout: float = READY_TIMEOUT_SECONDS) -> float:
    """Start every service (or what of it is not running) and wait until each serves;
    return the seconds it took. On failure, everything started is stopped again."""
    started = time.monotonic()
    plan.save()
    running = {name for name, entry in recorded(plan).items() if alive(entry)}
    try:
        _start_postgres(plan, say)
        _start_redis(plan, say)
        configs.write_all(plan)
        _prepare_airflow(plan, say)
        todo = []
        for svc in plan_mod.services(plan):
            if svc.name not in running:
                _spawn(plan, svc)
            todo.append(svc)
        _wait_ready(plan, todo, say, timeout)
    except BaseException:
        say("start-up failed: stopping what was started")
        down(plan, say)
        raise
    return time.monotonic() - started


def _stop_sessions(state: dict[str, dict[str, Any]], grace: float) -> list[str]:
    """SIGTERM every live recorded leader, wait, then SIGTERM and SIGKILL what is left of
    their sessions; return the services that needed SIGKILL."""
    leaders = {name: e for name, e in state.items() if name not in DAEMONS and alive(e)}
    for entry in leaders.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry["pid"], signal.SIGTERM)

    def members() -> dict[str, dict[int, int]]:
        return {name: procs.process_tree(e["pid"], descendants=alive(e))
                for name, e in state.items() if name not in DAEMONS}  # fmt: skip

    deadline = time.monotonic() + grace
    while any(members().values()) and time.monotonic() < deadline:
        time.sleep(0.3)
    killed = []
    for sig, pause in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        left = {name: pids for name, pids in members().items() if pids}
        for name, pids in left.items():
            if sig == signal.SIGKILL:
                killed.append(name)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        if left:
            time.sleep(pause)
    return killed


def leftovers(plan: StackPlan) -> dict[str, list[int]]:
    """Processes of the recorded services that still run: {service: [pids]}."""
    found = {}
    for name, entry in recorded(plan).items():
        if name in DAEMONS:  # their own children are in sessions of their own
            pids = [entry["pid"]] if alive(entry) else []
        else:
            pids = sorted(procs.process_tree(entry["pid"], descendants=alive(entry)))
        if pids:
            found[name] = pids
    return found


def down(plan: StackPlan, say: Say, *, grace: float = STOP_GRACE_SECONDS) -> dict[str, list[int]]:
    """Stop every recorded process by its pid; return what still runs afterwards ({} when
    all stopped). Redis and Postgres stop last, after their clients."""
    state = recorded(plan)
    if not state:
        say(f"no stack recorded in {plan.base}")
        return {}
    killed = _stop_sessions(state, grace)
    if killed:
        say(f"still running {grace:.0f} s after SIGTERM, killed: {', '.join(killed)}")
    if "redis" in state and alive(state["redis"]):
        plan.redis().stop()
    if "postgres" in state and alive(state["postgres"]):
        plan.postgres("fraud").stop()
    deadline = time.monotonic() + 10  # pg_ctl returns once the pid file is gone, not the pid
    while (left := leftovers(plan)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        say(f"still running: {left}")
    else:
        say(f"stopped {len(state)} services; none of their processes is left")
        _state_file(plan).unlink()
    return left


def status(plan: StackPlan) -> list[dict[str, Any]]:
    """One row per service: running?, pid, port, ready?."""
    state = recorded(plan)
    by_name = {svc.name: svc for svc in plan_mod.services(plan)}
    rows = []
    for name in plan_mod.SERVICE_NAMES:
        entry = state.get(name, {})
        running = bool(entry) and alive(entry)
        svc = by_name.get(name)
        ready = running and (svc is None or _ready(svc))
        rows.append({"service": name, "running": running, "ready": ready,
                     "pid": entry.get("pid"), "port": plan.ports.get(name)})  # fmt: skip
    return rows

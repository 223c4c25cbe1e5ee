"""docker-compose.yaml and `make stack` (fraud_lib.stack) describe one topology: the same
services (compose's replicas as numbered processes), the same Airflow, Celery, MLflow and
scoring settings, the same Prometheus jobs and nginx balancing. Compose is only parsed here
(no Docker engine); the stack is what tests/stack/test_stack.py runs. Kept apart from
tests/test_compose.py (compose's own wiring) for size; it reuses that file's helpers.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from fraud_lib.stack import configs
from fraud_lib.stack import plan as plan_mod
from fraud_lib.stack.plan import Service, StackPlan
from tests.test_compose import (
    NGINX,
    PROMETHEUS,
    SERVICES,
    command_of,
    environment,
    flag,
    interpolate,
    one_shot,
)

# Settings that must be equal in compose's Airflow services and the stack's.
SAME_AIRFLOW = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__CORE__PARALLELISM",
    "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__CORE__AUTH_MANAGER",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
)
# URLs whose scheme (driver), user and database must match; hosts and ports differ by design.
SAME_URLS = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "FRAUD_DATABASE_URL",
    "MLFLOW_TRACKING_URI",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "FRAUD_SCORING_URL",
)
# Which compose service each kind of URL must name (the stack names 127.0.0.1 ports).
URL_TARGETS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgres",
    "AIRFLOW__CELERY__BROKER_URL": "redis",
    "AIRFLOW__CELERY__RESULT_BACKEND": "postgres",
    "FRAUD_DATABASE_URL": "postgres",
    "MLFLOW_TRACKING_URI": "mlflow",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "airflow-apiserver",
    "FRAUD_SCORING_URL": "nginx",
}


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> StackPlan:
    base = tmp_path_factory.mktemp("stack")
    ports = dict.fromkeys([*plan_mod.PUBLISHED_PORTS, *plan_mod.INTERNAL_PORTS], 0)
    return StackPlan(base, {name: 40000 + n for n, name in enumerate(ports)})


@pytest.fixture(scope="module")
def stack(plan: StackPlan) -> dict[str, Service]:
    return {svc.name: svc for svc in plan_mod.services(plan)}


def replicas(name: str) -> int:
    return int((SERVICES[name].get("deploy") or {}).get("replicas", 1))


def compose_processes() -> dict[str, str]:
    """{process name as the stack calls it: compose service} (replicas numbered from 1)."""
    found = {}
    for name in SERVICES:
        if one_shot(name):
            continue
        count = replicas(name)
        for i in range(1, count + 1):
            found[name if count == 1 else f"{name}-{i}"] = name
    return found


def test_same_services_and_replicas() -> None:
    assert set(compose_processes()) == set(plan_mod.SERVICE_NAMES)
    assert replicas("scoring") == len(plan_mod.SCORING_REPLICAS) == 2
    assert replicas("airflow-worker") == len(plan_mod.CELERY_WORKERS) == 2


@pytest.mark.parametrize("name", plan_mod.AIRFLOW_SERVICES)
def test_airflow_settings_match(stack: dict[str, Service], name: str) -> None:
    compose_env = {k: interpolate(v) for k, v in environment(compose_processes()[name]).items()}
    env = stack[name].env
    for key in SAME_AIRFLOW:
        assert env[key] == compose_env[key], f"{name} {key}: {env[key]} vs {compose_env[key]}"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for key in SAME_URLS:
        ours, theirs = urlsplit(env[key]), urlsplit(compose_env[key])
        assert (ours.scheme, ours.username, ours.path) == (
            theirs.scheme, theirs.username, theirs.path
        ), f"{name} {key}"  # fmt: skip
        assert ours.hostname == "127.0.0.1"
        assert theirs.hostname == URL_TARGETS[key], f"compose {key} -> {theirs.hostname}"


def test_airflow_commands_match(stack: dict[str, Service]) -> None:
    for name in plan_mod.AIRFLOW_SERVICES:
        ours, theirs = list(stack[name].argv[1:]), command_of(compose_processes()[name])[1:]
        assert ours[0] == theirs[0], name
        for option in ("--queues", "--concurrency"):
            assert flag(ours, option) == flag(theirs, option), f"{name} {option}"
        assert ("--skip-serve-logs" in ours) == ("--skip-serve-logs" in theirs), name
    workers = [stack[w] for w in plan_mod.CELERY_WORKERS]
    hostnames = {flag(list(w.argv), "--celery-hostname") for w in workers}
    assert len(hostnames) == 2, "each worker needs its own Celery host name"
    assert {w.env["FRAUD_STACK_HOSTNAME"] for w in workers} == {"worker-1", "worker-2"}


def test_mlflow_serves_artifacts_from_postgres_in_both(stack: dict[str, Service]) -> None:
    ours, theirs = list(stack["mlflow"].argv), command_of("mlflow")
    for argv in (ours, theirs):
        assert "--serve-artifacts" in argv and flag(argv, "--artifacts-destination")
    store = urlsplit(stack["mlflow"].env["MLFLOW_BACKEND_STORE_URI"])
    compose_store = urlsplit(interpolate(environment("mlflow")["MLFLOW_BACKEND_STORE_URI"]))
    assert (store.scheme, store.username, store.path) == (
        compose_store.scheme, compose_store.username, compose_store.path
    )  # fmt: skip


def test_scoring_replicas_match_and_keep_their_own_spool(stack: dict[str, Service]) -> None:
    compose_env = environment("scoring")
    spools = set()
    for name in plan_mod.SCORING_REPLICAS:
        env = stack[name].env
        assert env["FRAUD_WORKERS"] == interpolate(compose_env["FRAUD_WORKERS"])
        assert Path(env["FRAUD_SPOOL_DIR"]).is_relative_to(stack[name].home)
        spools.add(env["FRAUD_SPOOL_DIR"])
    assert len(spools) == 2


def test_no_two_stack_services_share_a_directory(stack: dict[str, Service]) -> None:
    homes = [svc.home for svc in stack.values()]
    assert len(set(homes)) == len(homes)
    for svc in stack.values():
        for key in ("FRAUD_STATE_DIR", "FRAUD_REPORTS_DIR", "AIRFLOW_HOME", "FRAUD_SPOOL_DIR"):
            if key in svc.env:
                assert Path(svc.env[key]).is_relative_to(svc.home), f"{svc.name} {key}"


def test_every_stack_listener_binds_loopback(plan: StackPlan, stack: dict[str, Service]) -> None:
    assert flag(list(stack["mlflow"].argv), "--host") == "127.0.0.1"
    for name in plan_mod.SCORING_REPLICAS:
        assert flag(list(stack[name].argv), "--host") == "127.0.0.1"
    for name in plan_mod.AIRFLOW_SERVICES:
        env = stack[name].env
        assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
        assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"
    for name in ("prometheus", "alertmanager"):
        addresses = [a for a in stack[name].argv if a.startswith("--web.listen-address=")]
        assert addresses == [f"--web.listen-address=127.0.0.1:{plan.ports[name]}"]
    assert "--cluster.listen-address=" in stack["alertmanager"].argv  # no gossip port
    configs.write_all(plan)
    nginx_conf = (plan.home("nginx") / "conf" / "nginx.conf").read_text()
    assert re.findall(r"^\s*listen (\S+);", nginx_conf, re.M) == [
        f"127.0.0.1:{plan.ports['nginx']}"
    ]
    assert urlsplit(plan.broker_url()).hostname == "127.0.0.1"  # fraud_lib.redisserver's


def test_generated_nginx_and_prometheus_follow_the_compose_files(plan: StackPlan) -> None:
    configs.write_all(plan)
    nginx_conf = (plan.home("nginx") / "conf" / "nginx.conf").read_text()
    servers = re.findall(r"^\s*server (127\.0\.0\.1:\d+);", nginx_conf, re.M)
    assert servers == [f"127.0.0.1:{plan.ports[r]}" for r in plan_mod.SCORING_REPLICAS]
    body_limit = re.compile(r"client_max_body_size (\S+);")
    assert body_limit.findall(nginx_conf) == body_limit.findall(NGINX.read_text())
    ours = yaml.safe_load((plan.home("prometheus") / "conf" / "prometheus.yml").read_text())
    theirs = yaml.safe_load(PROMETHEUS.read_text())
    assert [j["job_name"] for j in ours["scrape_configs"]] == [
        j["job_name"] for j in theirs["scrape_configs"]
    ]
    assert ours["rule_files"] == theirs["rule_files"]
    assert (plan.home("prometheus") / "conf" / "alerts.yml").is_file()
    scoring = next(j for j in ours["scrape_configs"] if j["job_name"] == "scoring")
    assert scoring["static_configs"][0]["targets"] == servers
    alerting = ours["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alerting == [f"127.0.0.1:{plan.ports['alertmanager']}"]

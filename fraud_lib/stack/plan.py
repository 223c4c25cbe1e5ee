"""What ``make stack`` runs: ports, secrets and one :class:`Service` per process.

The services and the settings they share are the ones of ``docker-compose.yaml`` (held equal
by tests/test_compose.py): the CeleryExecutor with a Redis broker, two Celery workers on the
``default`` queue, two scoring replicas behind nginx. What differs is only what one machine
forces: ports (each compose service has its own host; here each gets its own 127.0.0.1 port)
and the host name each worker reports (:mod:`fraud_lib.stack.hostname`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fraud_lib import pgauth
from fraud_lib.airflow_local import DEFAULT_DAGS_FOLDER, console_script
from fraud_lib.pgproc import free_port
from fraud_lib.pgserver import EmbeddedPostgres
from fraud_lib.redisserver import EmbeddedRedis

# The services, in start order (down stops them in reverse). Same names as in compose.
SCORING_REPLICAS = ("scoring-1", "scoring-2")
CELERY_WORKERS = ("airflow-worker-1", "airflow-worker-2")
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    *CELERY_WORKERS,
)
SERVICE_NAMES = (
    "postgres",
    "redis",
    "mlflow",
    *AIRFLOW_SERVICES,
    *SCORING_REPLICAS,
    "nginx",
    "alertmanager",
    "prometheus",
)
# Published ports of compose (HOST_BIND:port); `fraud stack up --free-ports` picks free ones.
PUBLISHED_PORTS = {
    "nginx": 8000,
    "airflow-apiserver": 8080,
    "mlflow": 5000,
    "prometheus": 9090,
    "alertmanager": 9093,
}
INTERNAL_PORTS = ("postgres", "redis", *SCORING_REPLICAS, "airflow-scheduler")
# Settings the stack and compose must agree on (tests/test_compose.py compares them).
CELERY_QUEUE = "default"
WORKER_CONCURRENCY = "1"
SCORING_WORKERS = "2"
# Seconds without a task heartbeat before the scheduler fails the task (retried elsewhere):
# Airflow's default is 300; a worker killed mid-task is noticed within this.
TASK_HEARTBEAT_TIMEOUT = "30"
ADMIN_USER = "admin"
DATABASES = ("fraud", "airflow", "mlflow")


@dataclass(frozen=True)
class Service:
    """One process of the stack: its command, environment and working directory."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    home: Path
    ready_url: str | None = None  # GET answers < 500 once it serves; None: the port listens
    port: int | None = None


@dataclass
class StackPlan:
    """Ports, secrets and directories of one stack under ``base``."""

    base: Path
    ports: dict[str, int] = field(default_factory=dict)
    webhook_url: str = ""  # FRAUD_ALERT_WEBHOOK_URL of the caller: Alertmanager's and the tasks'
    external_redis_url: str = ""  # FRAUD_REDIS_URL of the caller: the broker; none started

    @classmethod
    def create(cls, base: Path, *, free_ports: bool = False, webhook_url: str = "",
               redis_url: str = "") -> StackPlan:  # fmt: skip
        """A plan under ``base``: the ports of an earlier ``up`` if recorded, else the compose
        ports (or free ones with ``free_ports``) plus free internal ports."""
        base = base.resolve()
        saved = base / "ports.json"
        if saved.exists():
            ports = {k: int(v) for k, v in json.loads(saved.read_text()).items()}
            return cls(base, ports, webhook_url, redis_url)
        ports = {name: free_port() if free_ports else port
                 for name, port in PUBLISHED_PORTS.items()}  # fmt: skip
        ports |= {name: free_port() for name in INTERNAL_PORTS}
        return cls(base, ports, webhook_url, redis_url)

    def save(self) -> None:
        """Record the ports, so that a restart and ``status`` find the same ones."""
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "ports.json").write_text(json.dumps(self.ports, indent=2) + "\n")

    def home(self, name: str) -> Path:
        """The working directory of service ``name``."""
        return self.base / name

    def secret(self, name: str) -> str:
        """A generated secret of the stack (a 0600 file under secrets/), made on first use."""
        if name == "fernet-key":
            path = self.base / "secrets" / name
            if not path.exists():
                from cryptography.fernet import Fernet

                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(Fernet.generate_key().decode())
        (self.base / "secrets").mkdir(parents=True, exist_ok=True, mode=0o700)
        return pgauth.ensure_secret(self.base / "secrets" / name)[0]

    def postgres(self, database: str) -> EmbeddedPostgres:
        """The embedded cluster as seen by ``database``'s own role (its own password file)."""
        server = EmbeddedPostgres(self.home("postgres") / "data", self.ports["postgres"],
                                  user=database, dbname=database)  # fmt: skip
        server.password_file = self.home("postgres") / f"{database}.password"
        return server

    def url(self, name: str) -> str:
        """http://127.0.0.1:<port> of a service with a published port."""
        return f"http://127.0.0.1:{self.ports[name]}"

    def database_url(self, database: str, driver: str) -> str:
        """A URL of ``database`` (a secret) with the given SQLAlchemy driver."""
        url = self.postgres(database).url
        return url.replace("postgresql+psycopg://", f"{driver}://", 1)

    def redis(self) -> EmbeddedRedis:
        """The stack's own redis-server (fraud_lib.redisserver) in ``redis/server``."""
        return EmbeddedRedis(self.home("redis"), self.ports["redis"], name="server")

    def broker_url(self) -> str:
        """The Celery broker: FRAUD_REDIS_URL, else the stack's Redis (database 0), with its
        password: a secret."""
        return self.external_redis_url or self.redis().url

    def state_redis_url(self) -> str:
        """The online feature state's Redis: the broker's server, database 1 (a secret)."""
        return urlsplit(self.broker_url())._replace(path="/1").geturl()


def base_env() -> dict[str, str]:
    """The caller's environment without its fraudloop, Airflow and MLflow settings: each
    service gets exactly the ones the plan gives it."""
    prefixes = ("FRAUD_", "AIRFLOW", "MLFLOW_", "PROMETHEUS_MULTIPROC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def fraud_env(plan: StackPlan, home: Path) -> dict[str, str]:
    """What fraud_lib reads, for the scoring replicas and the Airflow tasks (compose's
    ``x-fraud-env``): state and reports in the service's own directory."""
    alerts = {"FRAUD_ALERT_WEBHOOK_URL": plan.webhook_url} if plan.webhook_url else {}
    return {
        **alerts,
        "FRAUD_DATABASE_URL": plan.database_url("fraud", "postgresql"),
        "MLFLOW_TRACKING_URI": plan.url("mlflow"),
        "FRAUD_ADMIN_TOKEN": plan.secret("admin-token"),
        "FRAUD_SCORING_URL": plan.url("nginx"),
        "FRAUD_STATE_DIR": str(home / "state"),
        "FRAUD_REPORTS_DIR": str(home / "drift_reports"),
        "FRAUD_REDIS_URL": plan.state_redis_url(),
        "FRAUD_POLL_SECONDS": "2",
    }


def airflow_env(plan: StackPlan, home: Path) -> dict[str, str]:
    """Airflow's settings (compose's ``x-airflow-env``), AIRFLOW_HOME in ``home``."""
    api = plan.home("airflow-apiserver")
    return {
        **fraud_env(plan, home),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DEFAULT_DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": plan.database_url("airflow", "postgresql+psycopg2"),
        "AIRFLOW__CORE__FERNET_KEY": plan.secret("fernet-key"),
        "AIRFLOW__API_AUTH__JWT_SECRET": plan.secret("jwt-secret"),
        "AIRFLOW__API__SECRET_KEY": plan.secret("api-secret-key"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(plan.ports["airflow-apiserver"]),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{plan.url('airflow-apiserver')}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
        "simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(api / "passwords.json"),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "fraud_lib.stack.hostname.stack_hostname",
        "AIRFLOW__CELERY__BROKER_URL": plan.broker_url(),
        "AIRFLOW__CELERY__RESULT_BACKEND": plan.database_url("airflow", "db+postgresql"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": WORKER_CONCURRENCY,
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": CELERY_QUEUE,
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": TASK_HEARTBEAT_TIMEOUT,
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(
            plan.ports["airflow-scheduler"]
        ),
    }


def _airflow(plan: StackPlan, name: str) -> Service:
    home = plan.home(name)
    env = airflow_env(plan, home)
    airflow = console_script("airflow")
    port = str(plan.ports.get(name, ""))
    args = {
        "airflow-apiserver": ("api-server", "--port", port, "--workers", "1"),
        "airflow-scheduler": ("scheduler",),
        "airflow-dag-processor": ("dag-processor",),
        "airflow-triggerer": ("triggerer", "--skip-serve-logs"),
    }.get(name)
    ready = None
    if name in CELERY_WORKERS:
        host = name.removeprefix("airflow-")
        env["FRAUD_STACK_HOSTNAME"] = host
        # the log server binds every interface: the stack keeps task logs in each worker's dir
        args = ("celery", "worker", "--celery-hostname", f"{host}@%h", "--queues", CELERY_QUEUE,
                "--concurrency", WORKER_CONCURRENCY, "--skip-serve-logs")  # fmt: skip
    elif name == "airflow-apiserver":
        ready = f"{plan.url(name)}/api/v2/monitor/health"
    elif name == "airflow-scheduler":
        ready = f"http://127.0.0.1:{plan.ports[name]}/health"
    assert args is not None, name
    return Service(name, (airflow, *args), env, home, ready, plan.ports.get(name))


def _scoring(plan: StackPlan, name: str) -> Service:
    home = plan.home(name)
    env = {**fraud_env(plan, home), "FRAUD_SPOOL_DIR": str(home / "spool"),
           "FRAUD_WORKERS": SCORING_WORKERS}  # fmt: skip
    port = plan.ports[name]
    argv = (console_script("fraud"), "serve", "--host", "127.0.0.1", "--port", str(port))
    return Service(name, argv, env, home, f"http://127.0.0.1:{port}/healthz", port)


def _mlflow(plan: StackPlan) -> Service:
    home = plan.home("mlflow")
    env = {
        "MLFLOW_BACKEND_STORE_URI": plan.database_url("mlflow", "postgresql+psycopg2"),
        # the huey job runner (~6 consumer processes) serves features the project does not use
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    argv = (console_script("mlflow"), "server", "--host", "127.0.0.1",
            "--port", str(plan.ports["mlflow"]), "--serve-artifacts",
            "--artifacts-destination", str(home / "mlartifacts"), "--workers", "1")  # fmt: skip
    return Service("mlflow", argv, env, home, f"{plan.url('mlflow')}/health", plan.ports["mlflow"])


def _system(plan: StackPlan, name: str) -> Service:
    """nginx, Prometheus and Alertmanager, on configs written by :mod:`fraud_lib.stack.configs`."""
    home = plan.home(name)
    port = plan.ports[name]
    conf = home / "conf"
    argv = {
        "nginx": ("/usr/sbin/nginx", "-p", str(home), "-c", str(conf / "nginx.conf"),
                  "-g", "daemon off;"),
        "prometheus": ("prometheus", f"--config.file={conf / 'prometheus.yml'}",
                       f"--storage.tsdb.path={home / 'data'}",
                       f"--web.listen-address=127.0.0.1:{port}"),
        "alertmanager": ("prometheus-alertmanager", f"--config.file={conf / 'alertmanager.yml'}",
                         f"--storage.path={home / 'data'}", "--cluster.listen-address=",
                         f"--web.listen-address=127.0.0.1:{port}"),
    }[name]  # fmt: skip
    ready = {
        "nginx": f"http://127.0.0.1:{port}/lb-healthz",
        "prometheus": f"http://127.0.0.1:{port}/-/healthy",
        "alertmanager": f"http://127.0.0.1:{port}/-/healthy",
    }.get(name)
    return Service(name, argv, {}, home, ready, port)


def services(plan: StackPlan) -> list[Service]:
    """Every process of the stack but Postgres and Redis (they daemonize: see
    :mod:`fraud_lib.stack.runner`), in start order."""
    found: list[Service] = []
    for name in SERVICE_NAMES[2:]:
        if name == "mlflow":
            found.append(_mlflow(plan))
        elif name in AIRFLOW_SERVICES:
            found.append(_airflow(plan, name))
        elif name in SCORING_REPLICAS:
            found.append(_scoring(plan, name))
        else:
            found.append(_system(plan, name))
    return found

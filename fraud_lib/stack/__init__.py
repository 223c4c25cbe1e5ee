"""``make stack``: the docker-compose topology as real local processes (no Docker).

One embedded Postgres (databases ``fraud``, ``airflow`` and ``mlflow``, each owned by its own
role), Redis (the Celery broker), ``mlflow server`` (Postgres backend, artifacts served
through the server), Airflow 3 (api-server, scheduler, dag-processor, triggerer) on the
CeleryExecutor with two ``airflow celery worker`` processes, two scoring replicas (``fraud
serve``, each its own gunicorn and spool) behind nginx, Prometheus scraping both replicas and
Alertmanager. Every service runs in a working directory of its own under the stack directory
(its ``FRAUD_STATE_DIR`` and ``AIRFLOW_HOME`` too), so no two share local disk, and every port
binds 127.0.0.1.

- :mod:`fraud_lib.stack.plan`: ports, secrets and the services (argv, environment, directory)
- :mod:`fraud_lib.stack.configs`: the generated nginx, Prometheus and Alertmanager configs
- :mod:`fraud_lib.stack.runner`: ``up`` / ``down`` / ``status``; pids in ``stack.json``
- :mod:`fraud_lib.stack.hostname`: the host name Airflow records for each worker
"""

from fraud_lib.stack.plan import SERVICE_NAMES, StackPlan
from fraud_lib.stack.runner import down, status, up

__all__ = ["SERVICE_NAMES", "StackPlan", "down", "status", "up"]

"""The DAG arguments the daily monitor DAGs share (plain values: no Airflow import here)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any


def monitor_dag_args() -> dict[str, Any]:
    """``@dag`` keyword arguments of a daily monitor (fraud_drift_monitor,
    fraud_performance_monitor): one run at a time, 30 minutes, two retries with backoff."""
    return {
        "catchup": False,
        "max_active_runs": 1,
        "dagrun_timeout": timedelta(minutes=30),
        "tags": ["fraudloop", "ml", "monitoring"],
        "default_args": {
            "owner": "fraudloop",
            "retries": 2,
            "retry_delay": timedelta(seconds=30),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=5),
        },
    }

"""The Airflow assets the project's DAGs emit and schedule on: one definition of each.

Names and URIs only, so library code can name an asset without importing Airflow;
:func:`airflow_asset` builds the ``airflow.sdk.Asset`` for a DAG file (cheap to import).
"""

from __future__ import annotations

from typing import Any

DRIFT = "fraudloop_drift"
PERFORMANCE = "fraudloop_performance"

URIS = {
    DRIFT: "fraudloop://drift/fraud-detector",
    PERFORMANCE: "fraudloop://performance/fraud-detector",
}


def airflow_asset(name: str) -> Any:
    """The Airflow ``Asset`` called ``name`` (one of :data:`URIS`)."""
    from airflow.sdk import Asset

    return Asset(name=name, uri=URIS[name])

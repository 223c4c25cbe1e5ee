"""Which version holds an alias, read without the MLflow client (whose import brings pandas and
pyarrow, ~130 MB, into every worker).

- ``sqlite:`` and ``postgresql:`` tracking stores: MLflow's own ``registered_model_aliases``
  table (name, alias, version; MLflow >= 2.3), read-only, through SQLAlchemy;
- ``http(s):`` tracking servers: MLflow's REST call ``GET /api/2.0/mlflow/registered-models/
  alias`` with MLflow's auth variables (``MLFLOW_TRACKING_TOKEN``, ``..._USERNAME`` /
  ``..._PASSWORD``, ``..._INSECURE_TLS``, ``..._SERVER_CERT_PATH``);
- any other store (a local ``mlruns`` directory): :func:`fraud_lib.registry.alias_version`.

No alias, no model or no registry tables yet are ``None``, as for the MLflow client.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import sqlalchemy as sa

from fraud_lib.config import Settings
from fraud_lib.errors import RegistryError
from fraud_lib.redact import redact

REST_PATH = "/api/2.0/mlflow/registered-models/alias"
REST_TIMEOUT_SECONDS = 10
ALIAS_TABLE = "registered_model_aliases"
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # as registry.alias_version


class AliasLookup:
    """``lookup(settings, alias)``: the version holding ``alias``, or None (one engine kept)."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._engine_uri: str | None = None
        self._lock = threading.Lock()

    def __call__(self, settings: Settings, alias: str = "champion") -> str | None:
        uri = settings.mlflow_tracking_uri
        scheme = uri.partition(":")[0].lower()
        try:
            if scheme in ("http", "https"):
                return _rest_alias(uri, settings.model_name, alias)
            if scheme == "sqlite" or scheme.startswith("postgresql"):
                return self._sql_alias(uri, settings.model_name, alias)
        except (requests.RequestException, sa.exc.DBAPIError) as exc:
            raise RegistryError(
                f"cannot read the registry at {redact(uri)}: {type(exc).__name__}"
            ) from None
        from fraud_lib import registry

        return registry.alias_version(settings, alias)

    def _engine_for(self, uri: str) -> Any | None:
        with self._lock:
            if self._engine_uri != uri:
                self._engine, self._engine_uri = read_only_engine(uri), uri
            return self._engine

    def _sql_alias(self, uri: str, name: str, alias: str) -> str | None:
        engine = self._engine_for(uri)
        if engine is None:  # a SQLite store not created yet: nothing registered
            return None
        query = sa.text(f"SELECT version FROM {ALIAS_TABLE} WHERE name = :name AND alias = :alias")
        try:
            with engine.connect() as conn:
                version = conn.execute(query, {"name": name, "alias": alias}).scalar()
        except sa.exc.DBAPIError:
            if _has_no_alias_table(engine):
                return None
            raise
        return None if version is None else str(version)


def read_only_engine(uri: str) -> Any | None:
    """An engine on the tracking store; None for a SQLite file that does not exist (opening
    it read-only leaves it to MLflow to create)."""
    if uri.lower().startswith("sqlite:"):
        path = Path(uri.split(":///", 1)[1]) if ":///" in uri else None
        if path is None or not path.exists():
            return None
        target = f"{path.resolve().as_uri()}?mode=ro"
        return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(target, uri=True))
    return sa.create_engine(uri, pool_pre_ping=True, pool_size=1, max_overflow=0,
                            connect_args={"connect_timeout": 10})  # fmt: skip


def _has_no_alias_table(engine: Any) -> bool:
    try:
        return not sa.inspect(engine).has_table(ALIAS_TABLE)
    except sa.exc.DBAPIError:
        return False


def rest_get(uri: str, path: str, params: dict[str, str]) -> requests.Response:
    """``GET path`` on the MLflow server at ``uri``, with MLflow's auth and TLS variables."""
    env = os.environ
    headers = {}
    auth = None
    if env.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    elif env.get("MLFLOW_TRACKING_USERNAME"):
        auth = (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))
    verify: bool | str = env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        verify = False
    parts = urlsplit(uri)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))
    return requests.get(url, params=params, headers=headers, auth=auth, verify=verify,
                        timeout=REST_TIMEOUT_SECONDS)  # fmt: skip


def _rest_alias(uri: str, name: str, alias: str) -> str | None:
    resp = rest_get(uri, REST_PATH, {"name": name, "alias": alias})
    if resp.status_code == 200:
        return str(resp.json()["model_version"]["version"])
    try:
        code = resp.json().get("error_code")
    except ValueError:
        code = None
    if code in _NOT_FOUND:
        return None
    raise RegistryError(f"the MLflow server answered HTTP {resp.status_code} ({code or 'no code'})")

"""The served model: loaded at worker start, replaced when the ``champion`` alias moves.

A background thread asks the registry which version holds ``champion`` every
``settings.poll_seconds`` (~4 ms on SQLite); ``/admin/reload`` asks at once. A new version is
loaded (with ``FRAUD_MODEL_FILES=on`` in a child process: :mod:`serving.model_files`) and
checked off the request path, then swapped in with one attribute assignment, so a
request that already read :attr:`ModelHolder.current` finishes on the model it started with.
A version is refused, and the old one kept, when it fails to load, when its input schema
differs from the served model's, or when it fails the canary batch (:mod:`serving.scoring`).
A refused version is not retried by the poller (it would fail the same way every few seconds);
``/admin/reload`` retries it, and moving the alias to another version is picked up as usual.
A refusal is also an alert (:mod:`fraud_lib.monitoring`), sent from a background thread and
deduplicated per version and reason, so a flapping reload pages once per cooldown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fraud_lib.config import Settings
from fraud_lib.monitoring.alerts import AlertQueue
from fraud_lib.monitoring.events import model_refused_alert
from fraud_lib.redact import redact
from serving import model_files
from serving.gc_tuning import freeze_loaded
from serving.model_files import AliasLookup, prepare_any
from serving.scoring import CanaryError, ServedModel
from serving.validation import SEE_LOG

log = logging.getLogger(__name__)


class ModelHolder:
    """One worker's current model and the poller that replaces it."""

    def __init__(
        self,
        settings: Settings,
        metrics: Any,
        *,
        alias_version: Callable[[Settings], str | None] | None = None,
        load_version: Callable[[Settings, str], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        if settings.model_files:  # the worker never imports MLflow, scikit-learn, pandas
            self._alias_version = alias_version or AliasLookup()
            self._load_version = load_version or model_files.load_version
        else:
            from fraud_lib import registry

            self._alias_version = alias_version or registry.alias_version
            self._load_version = load_version or registry.load_version
        self.current: ServedModel | None = None
        self.champion_version: str | None = None  # what the registry said last
        self.last_check_at: float | None = None
        self.last_error: dict[str, Any] | None = None  # the last refused version, until a swap
        self.registry_error: str | None = None
        self._refused: set[str] = set()
        self._check_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.alerts = AlertQueue(settings)  # a refusal pages from its own thread, once

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the champion now (if there is one) and start polling."""
        self.check()
        self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.check()
            except Exception:  # never let the poller die
                log.exception("model check failed unexpectedly")

    # ------------------------------------------------------------------ checks
    def unavailable_message(self) -> str:
        """Why there is no model to score with, for a 503: no exception text, path or URL
        (those are in the server log)."""
        if self.registry_error:
            return f"no model loaded: the model registry cannot be read; {SEE_LOG}"
        if self.last_error:
            return (
                f"no model loaded: version {self.last_error['version']} was refused "
                f"({self.last_error['reason']}); {SEE_LOG}"
            )
        return (
            f"no model loaded: no version of {self.settings.model_name!r} holds the alias "
            "'champion' yet; train and promote one (fraud train ... && fraud promote ...)"
        )

    def check(self, *, retry_refused: bool = False) -> dict[str, Any]:
        """Look up the champion; load, check and swap in a new version. Returns what happened."""
        with self._check_lock:
            before = self.current.version if self.current else None
            result = self._check(retry_refused)
            result.setdefault("version", self.current.version if self.current else None)
            result["previous_version"] = before
            result["changed"] = result["version"] != before
            return result

    def _check(self, retry_refused: bool) -> dict[str, Any]:
        self.last_check_at = time.time()
        try:
            version = self._alias_version(self.settings)
        except Exception as exc:
            first = redact((str(exc).strip().splitlines() or [type(exc).__name__])[0])
            if self.registry_error is None:
                log.warning("cannot read the champion alias from the registry: %s", first)
            self.registry_error = f"{type(exc).__name__}: {first}"
            return {"status": "registry_unavailable", "error": self.registry_error}
        self.registry_error = None
        self.champion_version = version
        if version is None:
            return {"status": "no_champion"}
        if self.current is not None and version == self.current.version:
            return {"status": "unchanged"}
        if version in self._refused and not retry_refused:
            return {"status": "refused_before", "error": self.last_error}
        started = time.perf_counter()
        try:
            loaded = self._load_version(self.settings, version)
        except Exception as exc:
            return self._refuse(version, "load_failed", f"{type(exc).__name__}: {exc}")
        if self.current is not None and loaded.schema != self.current.schema:
            return self._refuse(
                version,
                "schema_mismatch",
                f"its input schema differs from version {self.current.version}'s "
                f"({_schema_diff(self.current.schema, loaded.schema)}); a schema change needs "
                "a new deployment, not a hot reload",
            )
        loaded_in = time.perf_counter() - started
        try:
            served = prepare_any(loaded)
        except CanaryError as exc:
            return self._refuse(version, "canary_failed", str(exc))
        except Exception as exc:
            return self._refuse(version, "canary_failed", f"{type(exc).__name__}: {exc}")
        self._swap(served, loaded_in, time.perf_counter() - started - loaded_in)
        return {"status": "loaded"}

    def _swap(self, served: ServedModel, load_seconds: float, check_seconds: float) -> None:
        old = self.current
        self.current = served  # the swap: one reference, atomic for readers
        self._refused.discard(served.version)
        self.last_error = None
        m = self.metrics
        if old is not None:
            m.model_info.labels(old.name, old.version, old.predictor).set(0)
        m.model_info.labels(served.name, served.version, served.predictor).set(1)
        try:
            m.model_version.set(float(served.version))
        except ValueError:
            m.model_version.set(0)
        m.model_loaded_at.set(served.loaded_at)
        m.reloads.labels("success", "").inc()
        freeze_loaded()  # the new model's objects: out of the worker's later collections
        log.info(
            "serving %s version %s (was %s; predictor %s; loaded in %.2fs, checked in %.2fs)",
            served.name, served.version, old.version if old else "none", served.predictor,
            load_seconds, check_seconds,
        )  # fmt: skip

    def _refuse(self, version: str, reason: str, message: str) -> dict[str, Any]:
        self._refused.add(version)
        message = redact(message)
        self.last_error = {"version": version, "reason": reason, "message": message[:2000],
                           "at": time.time()}  # fmt: skip
        self.metrics.reloads.labels("failure", reason).inc()
        log.error(
            "refused %s version %s (%s): %s; still serving version %s",
            self.settings.model_name, version, reason, message,
            self.current.version if self.current else "none",
        )  # fmt: skip
        serving = self.current.version if self.current else None
        self.alerts.submit_built(model_refused_alert, version, reason, message, serving)
        return {"status": "refused", "error": self.last_error}

    def status(self) -> dict[str, Any]:
        """The holder's state for clients (/readyz, /v1/model): the reason of a refusal, not
        its message, and whether the registry answers, not its error."""
        cur = self.current
        refused = self.last_error
        return {
            "loaded": cur is not None,
            "version": cur.version if cur else None,
            "champion_version": self.champion_version,
            "predictor": cur.predictor if cur else None,
            "last_check_at": self.last_check_at,
            "last_error": {k: refused[k] for k in ("version", "reason", "at")} if refused else None,
            "registry_readable": self.registry_error is None,
        }


def _schema_diff(old: Any, new: Any) -> str:
    return "; ".join(_dict_diff(old.to_dict(), new.to_dict(), "")) or "different"


def _dict_diff(a: dict, b: dict, where: str) -> list[str]:
    """What changed between two schema dicts, per key (nested blocks such as ``behavior``
    per sub-key, lists as entries added and removed)."""
    parts = []
    for k in dict.fromkeys([*a, *b]):
        x, y = a.get(k), b.get(k)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            parts += _dict_diff(x, y, f"{where}{k}.")
        elif isinstance(x, list) and isinstance(y, list):
            added = [c for c in y if c not in x]
            removed = [c for c in x if c not in y]
            parts.append(
                f"{where}{k}: +{added} -{removed}" if added or removed else f"{where}{k}: order"
            )
        else:
            parts.append(f"{where}{k}: {x!r} -> {y!r}")
    return parts

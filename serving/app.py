"""The Flask application factory of the scoring service.

``create_app(settings)`` builds one app per process (per gunicorn worker: the app is not
preloaded in the master, so the model, threads and connections all belong to the worker). It
loads the champion, starts the model poller and the prediction-log shipper, and registers the
``api`` and ``ops`` blueprints and JSON error handlers: every error body is
``{"error": {"code", "message", "fields"}}``. ``app.wsgi_app`` is wrapped by
:class:`serving.fast_path.FastScore`, which answers clean JSON ``/v1/score`` requests itself
and hands everything else to Flask.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from fraud_lib import pgserver, store
from fraud_lib.config import Settings
from serving.fast_path import FAILED_KEY, REQUEST_ID_KEY, STARTED_KEY, FastScore, request_id
from serving.http_errors import body_too_large, error_code
from serving.metrics import Metrics
from serving.model_holder import ModelHolder
from serving.prediction_log import PredictionLog
from serving.validation import ApiError

log = logging.getLogger(__name__)


class Database:
    """The Postgres engine, created and migrated on first use (never at import or start-up,
    so the service starts and scores while Postgres is down). The service never starts the
    embedded server itself: ``fraud serve`` does that before starting gunicorn."""

    def __init__(self, settings: Settings) -> None:
        self.url = pgserver.database_url(settings, start=False)
        self._engine: Any = None
        self._lock = threading.Lock()

    def engine(self) -> Any:
        """A migrated engine; raises :class:`fraud_lib.errors.DatabaseError` if unreachable."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    engine = store.make_engine(self.url)
                    store.migrate(engine)
                    self._engine = engine
        return self._engine


class ServiceState:
    """Everything one app instance owns; ``app.extensions["fraudloop"]``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.db = Database(settings)
        self.holder = ModelHolder(settings, self.metrics)
        self.log = PredictionLog(settings, self.metrics, self.db.engine)
        self._online: Any = None
        self._online_lock = threading.Lock()
        self._closed = False

    @property
    def online(self) -> Any:
        """The online feature computer (:class:`serving.raw_scoring.OnlineService`), created
        on the first raw request: it imports pandas and Redis, which a worker serving a
        model on ready-made features never needs (issue 17, memory)."""
        if self._online is None:
            with self._online_lock:
                if self._online is None:
                    from serving.raw_scoring import OnlineService

                    self._online = OnlineService(self.settings, self.db.engine, self.metrics)
        return self._online

    def warm_raw_path(self) -> None:
        """Import the raw-transaction path now when the champion is behavioral (pandas, Redis
        and the feature code, ~1 s), so the worker's first raw request does not wait for it."""
        served = self.holder.current
        if served is not None and served.schema.behavior is not None:
            _ = self.online

    def start(self) -> None:
        self.log.start()
        self.holder.start()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop polling and drain the prediction log (idempotent); True if fully drained."""
        if self._closed:
            return True
        self._closed = True
        self.holder.close()
        if self._online is not None:
            self._online.close()
        return self.log.close(timeout)


def _error(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "fields": fields or {}}})
    response.status_code = status
    return response


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return _error(exc.status, exc.code, exc.message, exc.fields)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = body_too_large(app.config["MAX_CONTENT_LENGTH"])
        response = _error(status, error_code(status), message)
        if status == 405 and exc.get_headers():
            for key, value in exc.get_headers():
                if key.lower() == "allow":
                    response.headers["Allow"] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(
            500,
            "internal_error",
            f"internal error; the server log has the details (request id {g.get('request_id')})",
        )


def _register_request_metrics(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def start_timer() -> None:
        environ = request.environ  # a request the fast path handed over has both already
        g.started = environ.get(STARTED_KEY) or time.perf_counter()
        g.request_id = environ.get(REQUEST_ID_KEY) or request_id(
            request.headers.get("X-Request-ID", "")
        )
        failed = environ.get(FAILED_KEY)
        if failed is not None:  # the fast path kept something, then failed: answer, not re-run
            raise failed

    @app.after_request
    def record(response: Response) -> Response:
        started = g.get("started")
        if started is not None:
            rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
            status = str(response.status_code)
            metrics.observe_request(rule, request.method, status, time.perf_counter() - started)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response


def create_app(settings: Settings | None = None, *, start: bool = True) -> Flask:
    """Build the app. ``settings`` default: :meth:`Settings.from_env`. With ``start`` (the
    default) the champion is loaded and the background threads run before this returns."""
    from serving import api, docs, ops

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["FRAUD_SETTINGS"] = settings
    state = ServiceState(settings)
    app.extensions["fraudloop"] = state
    _register_errors(app)
    _register_request_metrics(app, state.metrics)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(docs.swagger_ui())
    app.wsgi_app = FastScore(app.wsgi_app, state, settings.max_body_bytes)  # type: ignore[method-assign]
    if start:
        state.start()
        atexit.register(state.close)
    return app

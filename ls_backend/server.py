"""HTTP server of the ML backend: Label Studio's ML protocol as a small Flask app.

Endpoints: ``GET /`` and ``/health``, ``POST /setup``, ``POST /predict``,
``POST /webhook``, ``GET /metrics``.  Bad input gets a 4xx JSON ``{"status", "detail"}``
saying what is wrong; an unexpected failure gets a 500 JSON and the server keeps serving.

Production: ``gunicorn --workers 1 --threads 4 'promptmoe_cli.wsgi:app_factory()'`` (the
model is loaded and warmed up when the worker starts, never inside ``/setup``).
Development: ``promptmoe serve``.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import defaultdict

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .config import Settings, load_settings, make_engine
from .images import ImageFetchError
from .label_config import LabelConfigError
from .model import PromptMoEModel
from .tasks import TaskError

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request the backend rejects with a 4xx status and a message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class _Metrics:
    """Request counts and total seconds per endpoint, for ``/metrics``."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.errors: dict[str, int] = defaultdict(int)

    def record(self, endpoint: str, seconds: float, status: int) -> None:
        with self._lock:
            self.counts[endpoint] += 1
            self.seconds[endpoint] += seconds
            if status >= 400:
                self.errors[endpoint] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                e: {"requests": n, "errors": self.errors[e], "mean_seconds": self.seconds[e] / n}
                for e, n in self.counts.items()
            }


def _error(status: int, detail: str) -> Response:
    """A JSON error whose HTTP reason phrase is also the message: Label Studio shows only
    ``"<status> Client Error: <reason> for url: ..."`` to the annotator."""
    resp = jsonify(status=status, detail=detail)
    reason = " ".join(detail.split()).encode("latin-1", "replace").decode("latin-1")[:300]
    resp.status = f"{status} {reason}"
    return resp


def _body(*required: str) -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    missing = [k for k in required if k not in data]
    if missing:
        raise BadRequest(f"missing field(s) {', '.join(missing)} in the request body")
    return data


def create_app(model: PromptMoEModel) -> Flask:
    """The backend's Flask app around one loaded ``model``."""
    app = Flask(__name__)
    settings = model.settings
    metrics = _Metrics()

    @app.before_request
    def _auth():
        request.environ["promptmoe.start"] = time.perf_counter()
        if not settings.basic_auth_user:
            return None
        auth = request.authorization
        ok = (
            auth is not None
            and hmac.compare_digest(auth.username or "", settings.basic_auth_user)
            and hmac.compare_digest(auth.password or "", settings.basic_auth_pass or "")
        )
        if ok:
            return None
        resp = _error(
            401, "basic auth required: set the ML backend's user and password in Label Studio"
        )
        resp.headers["WWW-Authenticate"] = 'Basic realm="promptmoe"'
        return resp

    @app.after_request
    def _record(resp: Response):
        start = request.environ.get("promptmoe.start")
        if start is not None and request.url_rule is not None:
            metrics.record(request.url_rule.rule, time.perf_counter() - start, resp.status_code)
        return resp

    @app.errorhandler(BadRequest)
    def _bad(exc: BadRequest):
        return _error(exc.status, str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("request failed")
        return _error(500, f"{type(exc).__name__}: {exc}")

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(
            status="UP",
            model_class=type(model).__name__,
            model_version=model.model_version,
            sam_model=model.engine.model_id,
        )

    @app.post("/setup")
    def setup():
        data = _body("schema")
        try:
            version = model.setup(str(data.get("project", "")), data["schema"])
        except LabelConfigError as exc:
            raise BadRequest(str(exc), 422) from exc
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict():
        data = _body("tasks")
        tasks = data["tasks"]
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("tasks must be a non-empty list of task objects")
        config = data.get("label_config")
        if not isinstance(config, str):
            raise BadRequest("label_config (the project's labeling config XML) is required")
        params = data.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        if context is not None and not isinstance(context, dict):
            raise BadRequest("params.context must be an object or null")
        if context and not isinstance(context.get("result", []), list):
            raise BadRequest("params.context.result must be a list of regions")
        try:
            results = model.predict(
                tasks, context=context, project=data.get("project"), label_config=config
            )
        except LabelConfigError as exc:
            raise BadRequest(str(exc), 422) from exc
        if context and len(results) == 1 and "error" in results[0]:
            # An interactive call: say why in the editor instead of silently doing nothing.
            raise BadRequest(results[0]["error"], 422)
        return jsonify(results=results, model_version=model.model_version)

    @app.post("/webhook")
    def webhook():
        data = _body("action")
        action = data["action"]
        if action not in model.EVENTS:
            return jsonify(status="Unknown event"), 200
        try:
            result = model.fit(action, data)
        except (TaskError, ImageFetchError, LabelConfigError) as exc:
            raise BadRequest(f"{action}: {exc}", 422) from exc
        return jsonify(result=result, status="ok"), 201

    @app.get("/metrics")
    def metrics_view():
        stats = model.engine.stats()
        return jsonify(
            requests=metrics.snapshot(),
            model_version=model.model_version,
            engine={
                "encodes": stats.encodes,
                "encode_seconds": stats.encode_seconds,
                "decode_calls": stats.decode_calls,
                "cache_entries": stats.cache.entries,
                "cache_mb": stats.cache.bytes / 2**20,
                "cache_capacity_mb": stats.cache.capacity_bytes / 2**20,
            },
            references=model.store.count(),
        )

    return app


def load_model(settings: Settings) -> PromptMoEModel:
    """Build the engine and the model from ``settings`` and warm it up."""
    model = PromptMoEModel(make_engine(settings.engine), settings)
    start = time.perf_counter()
    model.warm_up()
    log.info(
        "model %s warmed up in %.1fs (MODEL_DIR=%s)",
        model.model_version,
        time.perf_counter() - start,
        settings.model_dir,
    )
    return model


def app_factory() -> Flask:
    """Gunicorn entry point: settings from the environment, model loaded at start.

    Logging is the caller's to configure (the command line does); under bare gunicorn the
    backend's warnings and errors still reach stderr."""
    return create_app(load_model(load_settings()))


def serve(settings: Settings, host: str = "0.0.0.0", port: int = 9090) -> None:
    """Load the model once (warm-up), then serve with Flask's development server."""
    model = load_model(settings)
    log.info("serving %s on http://%s:%d", model.model_version, host, port)
    create_app(model).run(host=host, port=port, threaded=True)

"""HTTP server of the ML backend: Label Studio's ML protocol as a small Flask app.

Endpoints: ``GET /`` and ``/health``, ``POST /setup``, ``POST /predict``,
``POST /webhook``, ``GET /metrics``, ``GET /jobs`` (the pre-annotation job's progress).
Bad input gets a 4xx JSON ``{"status", "detail"}`` saying what is wrong; an unexpected
failure gets a 500 JSON and the server keeps serving.

Every request body goes through one validation layer before the model sees it: the body
must be UTF-8 JSON of at most ``MAX_REQUEST_MB`` (413 above) nested at most
:data:`MAX_JSON_DEPTH` levels (checked before parsing; 400), with no NaN or infinity;
then each endpoint's payload shape is checked (``_check_setup``, ``_check_predict``,
``_check_webhook``): ids are integers, objects are objects, lists are lists, and every
brush region's declared size is a positive integer size of at most ``MAX_MASK_PIXELS``
(413 above), so no mask is decoded at a size the request chose freely.

Production: ``gunicorn --workers 1 --threads 4 'promptmoe_cli.wsgi:app_factory()'`` (the
model is loaded and warmed up when the worker starts, never inside ``/setup``).
Development: ``promptmoe serve``.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from collections import defaultdict
from typing import Any

import numpy as np
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .config import Settings, load_settings, make_engine
from .images import ImageFetchError
from .label_config import LabelConfigError, parse_label_config
from .model import PromptMoEModel
from .rle import RLEError
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


#: Request bodies nested deeper than this are refused before they are parsed (Label
#: Studio's payloads are about 8 levels deep).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_WEBHOOK_WRITES = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
_WEBHOOK_DELETES = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")


def _json_depth(raw: bytes) -> int:
    """The deepest nesting of ``[`` / ``{`` in a UTF-8 JSON text, outside its strings;
    linear time and memory bounded by 1M brackets at a time, without parsing."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    arr = np.frombuffer(brackets, np.uint8)
    deepest = level = 0
    for start in range(0, arr.size, 1 << 20):
        part = arr[start : start + (1 << 20)]
        steps = np.where((part == ord("[")) | (part == ord("{")), 1, -1).astype(np.int32)
        levels = level + np.cumsum(steps)
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _body(*required: str) -> dict:
    """The request's JSON object: UTF-8, size and depth bounded before parsing (413 / 400),
    no NaN or infinity, with the ``required`` keys."""
    if not request.is_json:
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    raw = request.get_data(cache=True)  # 413 above MAX_CONTENT_LENGTH (MAX_REQUEST_MB)
    depth = _json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"the request body is nested {depth} levels deep, above {MAX_JSON_DEPTH}")
    try:
        data = json.loads(
            raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    missing = [k for k in required if k not in data]
    if missing:
        raise BadRequest(f"missing field(s) {', '.join(missing)} in the request body")
    return data


# ---------------------------------------------------------------------- payload shapes
def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_id(value: Any, where: str, status: int) -> None:
    """An id Label Studio sends: an integer (or a string of digits) that fits 64 bits."""
    ok = (isinstance(value, int) and not isinstance(value, bool) and -(2**63) < value < 2**63) or (
        isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value) is not None
    )
    if not ok:
        raise BadRequest(f"{where} must be an integer id, got {_show(value)}", status)


def _check_regions(items: Any, where: str, max_pixels: int, need_size: bool, status: int) -> None:
    """A result list: objects; each brush region's ``original_width`` / ``original_height``
    (required when ``need_size``, else optional: the image's size is used) positive
    integers whose product is at most ``max_pixels`` (413 above)."""
    if items is None:
        return
    if not isinstance(items, list):
        raise BadRequest(f"{where} must be a list of regions, got {_show(items)}", status)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"{where}[{i}] must be a region object, got {_show(item)}", status)
        kind = str(item.get("type", "")).lower()
        if kind in ("keypointlabels", "rectanglelabels"):
            _check_geometry(item.get("value"), f"{where}[{i}].value", status)
        if kind != "brushlabels":
            continue
        sizes = {}
        for key in ("original_width", "original_height"):
            if key not in item and not need_size:
                continue
            if not _is_size(item.get(key)):
                raise BadRequest(
                    f"{where}[{i}].{key} must be a positive integer (the image's size in "
                    f"pixels), got {_show(item.get(key))}",
                    status,
                )
            sizes[key] = item[key]
        if len(sizes) == 2 and sizes["original_width"] * sizes["original_height"] > max_pixels:
            w, h = sizes["original_width"], sizes["original_height"]
            raise BadRequest(
                f"{where}[{i}]: a {w}x{h} brush mask is {w * h / 1e6:.1f} MP, above "
                f"MAX_MASK_PIXELS={max_pixels}",
                413,
            )


#: Bound of a keypoint's or rectangle's percentages (and a rectangle's rotation, degrees):
#: far beyond any region on the image, small enough that no geometry overflows.
_MAX_PERCENT = 1e6


def _check_geometry(value: Any, where: str, status: int) -> None:
    """A keypoint's or rectangle's numbers, when numbers, within :data:`_MAX_PERCENT`
    (the model reports other types itself)."""
    if not isinstance(value, dict):
        return
    for key in ("x", "y", "width", "height", "rotation"):
        v = value.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > _MAX_PERCENT:
            raise BadRequest(
                f"{where}.{key} = {_show(v)} is not a percentage of the image (|value| must be "
                f"at most {_MAX_PERCENT:g})",
                status,
            )


def _check_setup(data: dict) -> None:
    if not isinstance(data["schema"], str):
        raise BadRequest(
            f"schema must be the labeling config XML (a string), got {_show(data['schema'])}"
        )


def _check_predict(data: dict, max_pixels: int, mask_key: str) -> dict | None:
    """Validate a ``/predict`` body; returns its ``params.context`` (None for batch)."""
    tasks = data["tasks"]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise BadRequest("tasks must be a non-empty list of task objects")
    if not isinstance(data.get("label_config"), str):
        raise BadRequest("label_config (the project's labeling config XML) is required")
    try:
        url_keys = (parse_label_config(data["label_config"]).image_key, mask_key)
    except LabelConfigError:
        url_keys = (mask_key,)  # the model reports the config
    for i, task in enumerate(tasks):
        if "id" in task:
            _check_id(task["id"], f"tasks[{i}].id", 400)
        task_data = task.get("data")
        for key in url_keys if isinstance(task_data, dict) else ():
            if task_data.get(key) is not None and not isinstance(task_data[key], str):
                raise BadRequest(
                    f"tasks[{i}].data.{key} must be a URL (a string), got {_show(task_data[key])}"
                )
        for key in ("annotations", "predictions"):
            sources = task.get(key)
            if sources is None:
                continue
            if not isinstance(sources, list):
                raise BadRequest(f"tasks[{i}].{key} must be a list, got {_show(sources)}")
            for j, source in enumerate(sources):
                if not isinstance(source, dict):
                    raise BadRequest(f"tasks[{i}].{key}[{j}] must be an object")
                where = f"tasks[{i}].{key}[{j}].result"
                _check_regions(source.get("result"), where, max_pixels, False, 400)
    params = data.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest(f"params must be an object or null, got {_show(params)}")
    context = (params or {}).get("context")
    if context is not None and not isinstance(context, dict):
        raise BadRequest("params.context must be an object or null")
    if context and not isinstance(context.get("result", []), list):
        raise BadRequest("params.context.result must be a list of regions")
    if context:
        _check_regions(context.get("result"), "params.context.result", max_pixels, False, 400)
    return context


def _check_webhook(action: str, data: dict, max_pixels: int) -> None:
    """Validate the payload of a webhook ``action`` the model handles (422 when wrong)."""
    if action in _WEBHOOK_WRITES:
        project = data.get("project")
        if not isinstance(project, dict) or not isinstance(project.get("label_config"), str):
            raise BadRequest(
                f"{action}: project must be an object with the project's label_config, got "
                f"{_show(project)}",
                422,
            )
        if project.get("id") is not None:
            _check_id(project["id"], f"{action}: project.id", 422)
        ann, task = data.get("annotation"), data.get("task")
        if not (isinstance(ann, dict) and "id" in ann and isinstance(task, dict) and "id" in task):
            raise BadRequest(f"{action}: the webhook payload needs annotation.id and task.id", 422)
        _check_id(ann["id"], f"{action}: annotation.id", 422)
        _check_id(task["id"], f"{action}: task.id", 422)
        if not isinstance(task.get("data"), dict):
            raise BadRequest(f"{action}: task.data must be an object", 422)
        _check_regions(ann.get("result"), f"{action}: annotation.result", max_pixels, True, 422)
    elif action in _WEBHOOK_DELETES:
        anns, ann = data.get("annotations"), data.get("annotation")
        if anns is not None and not isinstance(anns, list):
            raise BadRequest(f"{action}: annotations must be a list, got {_show(anns)}", 422)
        if ann is not None and not isinstance(ann, dict):
            raise BadRequest(f"{action}: annotation must be an object, got {_show(ann)}", 422)
        named = [("annotation", ann)] if ann is not None else []
        named += [(f"annotations[{i}]", a) for i, a in enumerate(anns or [])]
        for where, a in named:
            if not isinstance(a, dict):
                raise BadRequest(f"{action}: {where} must be an object, got {_show(a)}", 422)
            if "id" in a:
                _check_id(a["id"], f"{action}: {where}.id", 422)


def _same(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two strings as UTF-8 bytes (any characters)."""
    return hmac.compare_digest(
        (given or "").encode("utf-8", "surrogatepass"),
        (expected or "").encode("utf-8", "surrogatepass"),
    )


def create_app(model: PromptMoEModel) -> Flask:
    """The backend's Flask app around one loaded ``model``."""
    app = Flask(__name__)
    settings = model.settings
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_request_mb * 2**20)
    metrics = _Metrics()

    @app.before_request
    def _auth():
        request.environ["promptmoe.start"] = time.perf_counter()
        if not settings.basic_auth_user:
            return None
        auth = request.authorization
        # Both compared every time, as UTF-8 bytes: any characters, no early exit.
        user_ok = _same(auth.username if auth else None, settings.basic_auth_user)
        pass_ok = _same(auth.password if auth else None, settings.basic_auth_pass)
        if auth is not None and user_ok & pass_ok:
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
            sam_runtime=model.engine.runtime_info.as_dict(),
            sam_decoder_runtime=model.engine.decoder_info.as_dict(),
            training=model.training_status()["state"],
        )

    @app.post("/setup")
    def setup():
        data = _body("schema")
        _check_setup(data)
        try:
            version = model.setup(str(data.get("project", "")), data["schema"])
        except LabelConfigError as exc:
            raise BadRequest(str(exc), 422) from exc
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict():
        data = _body("tasks")
        context = _check_predict(data, settings.max_mask_pixels, settings.mask_data_key)
        config = data["label_config"]
        try:
            results = model.predict(
                data["tasks"], context=context, project=data.get("project"), label_config=config
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
        if not isinstance(action, str) or action not in model.EVENTS:
            return jsonify(status="Unknown event"), 200
        _check_webhook(action, data, settings.max_mask_pixels)
        try:
            result = model.fit(action, data)
        except (TaskError, ImageFetchError, LabelConfigError, RLEError) as exc:
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
            training=_training_summary(model.training_status()),
            jobs=_jobs_status(model),
        )

    @app.get("/jobs")
    def jobs_view():
        return jsonify(_jobs_status(model))

    return app


def _jobs_status(model: PromptMoEModel) -> dict:
    """The pre-annotation job's counts, ETA and latest failures (``GET /jobs``), or why
    there is no job."""
    if model.jobs is None:
        return {"enabled": False, "reason": model.no_jobs_reason}
    return {"enabled": True, "model_version": model.model_version, **model.jobs.status()}


def _training_summary(status: dict) -> dict:
    """The training worker's state for ``/metrics``: whether the last run trained, not its
    figures (which may hold NaN, which is not JSON)."""
    last = status.get("last_result") or {}
    summary = {k: v for k, v in status.items() if k != "last_result"}
    return {**summary, "last_trained": last.get("trained")}


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
    """Gunicorn entry point: settings from the environment, model loaded and the
    pre-annotation job started (resuming its queue) when the worker starts.

    Logging is the caller's to configure (the command line does); under bare gunicorn the
    backend's warnings and errors still reach stderr."""
    model = load_model(load_settings())
    model.start_jobs()
    return create_app(model)


def serve(settings: Settings, host: str = "0.0.0.0", port: int = 9090) -> None:
    """Load the model once (warm-up), start the pre-annotation job, then serve with
    Flask's development server."""
    model = load_model(settings)
    model.start_jobs()
    log.info("serving %s on http://%s:%d", model.model_version, host, port)
    create_app(model).run(host=host, port=port, threaded=True)

"""Draft sources of batch pre-annotation: brush regions, polygons, rectangles, and which
wins (``ls_backend.tasks.task_prompts``); ``PromptMoEModel.annotate`` on them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import LS_CONFIG as CONFIG
from conftest import blocky_draft
from ls_backend.config import load_settings
from ls_backend.jobs import JobBusyError, PreAnnotationJob
from ls_backend.label_config import LabelConfigError, parse_label_config
from ls_backend.model import PromptMoEModel
from ls_backend.polygons import mask_to_polygons
from ls_backend.results import brush_masks, brush_result
from ls_backend.server import create_app
from ls_backend.tasks import TaskError, failure_reason, has_drafts, polygon_region, task_prompts
from ls_backend.writeback import LabelStudioWriter
from promptmoe_plugin.eval.metrics import iou

#: The tests' config plus a PolygonLabels tag (polygon drafts are read with any config).
POLY_CONFIG = CONFIG.replace(
    "</View>",
    '<PolygonLabels name="poly" toName="image"><Label value="Person"/></PolygonLabels></View>',
)
LABELS = parse_label_config(CONFIG)


def _rect(x0: float, y0: float, x1: float, y1: float, label: str, h: int, w: int) -> dict:
    """A rectangle from pixel corners, in percent."""
    value = {"x": 100 * x0 / w, "y": 100 * y0 / h, "width": 100 * (x1 - x0) / w}
    value.update(height=100 * (y1 - y0) / h, rectanglelabels=[label])
    return {"type": "rectanglelabels", "from_name": "rect", "to_name": "image", "value": value}


def _poly(points_px: np.ndarray, label: str, h: int, w: int) -> dict:
    return {
        "type": "polygonlabels",
        "from_name": "poly",
        "to_name": "image",
        "value": {
            "points": (points_px * [100 / w, 100 / h]).tolist(),
            "polygonlabels": [label],
            "closed": True,
        },
    }


def _square(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _brush(mask: np.ndarray, label: str) -> dict:
    return brush_result(mask, label, from_name="brush", to_name="image")


def test_polygon_covers_the_pixels_whose_centres_are_inside():
    h, w = 100, 200
    label, mask = polygon_region(
        _poly(_square(20, 10, 100, 50), "Person", h, w)["value"], LABELS, h, w
    )
    expected = np.zeros((h, w), bool)
    expected[10:50, 20:100] = True
    assert label == "Person" and np.array_equal(mask, expected)
    with pytest.raises(TaskError, match="at least 3"):
        polygon_region({"points": [[1, 1], [2, 2]], "polygonlabels": ["Person"]}, LABELS, h, w)
    with pytest.raises(TaskError, match="not a BrushLabels label"):
        polygon_region({"points": [[1, 1], [2, 2], [1, 3]], "polygonlabels": ["Cat"]}, LABELS, h, w)


def test_one_object_one_prompt_brush_over_polygon_over_rectangle():
    """Of one source, per object: brush > polygon > rectangle (same label, bounding boxes
    overlapping with IoU >= 0.5); other objects and other labels are all kept."""
    h, w = 120, 160
    a = np.zeros((h, w), bool)
    a[10:50, 10:50] = True
    result = [
        _rect(11, 9, 52, 50, "Person", h, w),  # object a again: dropped
        _poly(_square(12, 12, 48, 48), "Person", h, w),  # object a again: dropped
        _brush(a, "Person"),
        _poly(_square(70, 10, 110, 50), "Table", h, w),  # object b: kept
        _rect(70, 10, 110, 50, "Table", h, w),  # object b again: dropped
        _rect(70, 10, 110, 50, "Person", h, w),  # another label: kept
        _rect(10, 70, 60, 110, "Person", h, w),  # object c: kept
    ]
    task = {"data": {"image": "x"}, "predictions": [{"model_version": "det", "result": result}]}
    assert has_drafts(task, "mask")
    prompts = task_prompts(task, LABELS, h, w)
    assert [(label, int(m.sum())) for label, m in prompts.drafts] == [
        ("Person", 1600),
        ("Table", 1600),
    ]
    assert [(b.label, b.bounds.round().tolist()) for b in prompts.boxes] == [
        ("Person", [70, 10, 110, 50]),
        ("Person", [10, 70, 60, 110]),
    ]


def test_the_newest_source_with_a_region_wins():
    h, w = 60, 80
    older = {
        "created_at": "2026-01-01T00:00:00Z",
        "result": [_brush(np.ones((h, w), bool), "Person")],
    }
    newer = {
        "model_version": "detector",
        "created_at": "2026-02-01T00:00:00Z",
        "result": [_rect(5, 5, 40, 40, "Table", h, w)],
    }
    newest_empty = {"created_at": "2026-03-01T00:00:00Z", "result": []}
    ours = {"model_version": "promptmoe-full-r0", "result": [_rect(0, 0, 9, 9, "Person", h, w)]}
    task = {"data": {}, "annotations": [older, newest_empty], "predictions": [newer, ours]}
    prompts = task_prompts(task, LABELS, h, w)
    assert prompts.drafts == [] and [b.label for b in prompts.boxes] == ["Table"]
    assert not has_drafts({"data": {}, "predictions": [ours]}, "mask")
    assert not task_prompts({"data": {}, "predictions": [ours]}, LABELS, h, w)


@pytest.fixture(scope="module")
def scene(voc, engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    Image.fromarray(voc["rgb"]).save(root / "voc.png")
    settings = load_settings(
        {},
        {
            "model_dir": str(root / "model_dir"),
            "local_files_root": str(root),
            "refine_variant": "sam-box",
        },
    )
    return PromptMoEModel(engine, settings), voc["masks"]


def test_annotate_segments_rectangles_and_refines_polygons(scene):
    model, masks = scene
    left, right = masks[15], masks[17]
    h, w = left.shape
    ys, xs = np.nonzero(right)
    (outline,) = mask_to_polygons(blocky_draft(left), tolerance=4.0)[:1]
    result = [
        _rect(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, "Person", h, w),
        _poly(outline, "Person", h, w),
    ]
    task = {
        "id": 1,
        "data": {"image": "/data/local-files/?d=voc.png"},
        "annotations": [{"result": result}],
    }
    config = parse_label_config(POLY_CONFIG)
    pred = model.annotate(task, config, "1")
    assert pred["model_version"] == model.model_version and 0 < pred["score"] <= 1
    (poly_label, poly_mask), (box_label, box_mask) = brush_masks(pred["result"])
    assert poly_label == box_label == "Person"
    assert iou(poly_mask, left) > 0.8 and iou(box_mask, right) > 0.8
    assert any(r["type"] == "polygonlabels" for r in pred["result"])  # the config asks for them
    assert (
        model.annotate({"id": 2, "data": {"image": "/data/local-files/?d=voc.png"}}, config, "1")
        is None
    )
    with pytest.raises(TaskError, match="does not overlap"):
        model.annotate(
            {**task, "annotations": [{"result": [_rect(-50, -50, -10, -10, "Person", h, w)]}]},
            config,
            "1",
        )


def test_batch_and_job_settings():
    settings = load_settings({"BATCH_SECONDS": "0.5", "JOB_WORKERS": "2"})
    assert (settings.batch_seconds, settings.job_workers) == (0.5, 2)
    assert (load_settings({}).batch_seconds, load_settings({}).job_workers) == (3.0, 1)
    with pytest.raises(ValueError, match="BATCH_SECONDS must be in 0..60"):
        load_settings({"BATCH_SECONDS": "100"})
    with pytest.raises(ValueError, match="JOB_WORKERS must be >= 1"):
        load_settings({"JOB_WORKERS": "0"})
    assert load_settings({}).embed_delay == 0.5
    assert load_settings({"EMBED_DELAY": "0"}).embed_delay == 0.0
    with pytest.raises(ValueError, match="EMBED_DELAY must be in 0..60"):
        load_settings({"EMBED_DELAY": "-1"})


def test_without_label_studio_there_is_no_job_and_jobs_says_why(scene):
    model, _ = scene
    client = create_app(model).test_client()
    assert client.get("/jobs").json["enabled"] is False  # a model that does not serve
    model.start_jobs()
    r = client.get("/jobs")
    assert r.status_code == 200 and r.json["enabled"] is False and model.jobs is None
    assert "LABEL_STUDIO_URL" in r.json["reason"]
    assert client.get("/metrics").json["jobs"] == r.json


def test_one_process_owns_a_job_queue(tmp_path):
    writer = LabelStudioWriter("http://127.0.0.1:9", "0" * 40)
    job = PreAnnotationJob(tmp_path / "jobs.sqlite3", lambda *_: None, writer, 1)
    with pytest.raises(JobBusyError, match="one process per MODEL_DIR"):
        PreAnnotationJob(tmp_path / "jobs.sqlite3", lambda *_: None, writer, 1)
    job.record("1", {"id": 5, "data": {}}, "v1", "skipped", "nothing")
    status = job.status()
    assert status["counts"] == {"queued": 0, "running": 0, "done": 0, "failed": 0, "skipped": 1}
    assert status["eta_seconds"] is None and status["writes_to"] == "http://127.0.0.1:9"


def test_failure_reason_gives_a_tasks_own_error_and_logs_a_bug(caplog):
    """A task's own error is its message; anything else is an internal error, logged with
    its traceback (the reason the job, the Ray pool and the request all report)."""
    bad_config = LabelConfigError("no brush labels")
    assert failure_reason(TaskError("no image in task data"), 7) == "no image in task data"
    assert failure_reason(bad_config, 7) == "no brush labels"
    assert not caplog.records
    try:
        raise KeyError("tail")
    except KeyError as exc:
        assert failure_reason(exc, 8) == "internal error KeyError: 'tail'"
    (record,) = caplog.records
    assert record.exc_info and "task 8 failed" in record.getMessage()

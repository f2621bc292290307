"""What the real Label Studio 1.23.2 editor sends, replayed through the backend's HTTP app.

The request bodies were captured between Label Studio and the backend while a person's
actions were replayed in the editor (``../shared/notes/ls-editor-requests/``, README
there); their images are GrabCut photos (``../shared/data/GrabCut``), written to a
temporary local-files root under the names the tasks use.  Both live beside the project:
the tests skip when they are absent.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, data_dir
from ls_backend.config import load_settings
from ls_backend.label_config import LabelConfigError, parse_label_config
from ls_backend.model import BackgroundEmbedder, PromptMoEModel
from ls_backend.results import brush_masks, calibrated_score
from ls_backend.server import create_app
from ls_backend.tasks import context_regions
from promptmoe_plugin.eval.metrics import iou

REQUESTS = Path(
    os.environ.get("PROMPTMOE_LS_REQUESTS", REPO.parent / "shared" / "notes" / "ls-editor-requests")
)


def _request(name: str) -> dict:
    """The request body of a captured call (a fresh copy)."""
    path = REQUESTS / name
    if not path.is_file():
        pytest.skip(f"captured editor requests {REQUESTS} not present")
    return copy.deepcopy(json.loads(path.read_text())["request_json"])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The captured tasks' images as local files, and their ground-truth masks."""
    grabcut = data_dir("GrabCut")
    root = tmp_path_factory.mktemp("editor_files")
    (root / "imgs").mkdir()
    gt = {}
    for name in ("banana1", "llama"):
        Image.open(grabcut / "data_GT" / f"{name}.bmp").convert("RGB").save(
            root / "imgs" / f"{name}.png"
        )
        gt[name] = np.array(Image.open(grabcut / "boundary_GT" / f"{name}.bmp")) == 255
    return root, gt


@pytest.fixture(scope="module")
def model(engine, photos, tmp_path_factory):
    settings = load_settings(
        {},
        {
            "model_dir": str(tmp_path_factory.mktemp("editor_model")),
            "local_files_root": str(photos[0]),
            "intent": "sam",
        },
    )
    return PromptMoEModel(engine, settings)


@pytest.fixture()
def client(model):
    return create_app(model).test_client()


def _one_region(response) -> tuple[str, np.ndarray, dict]:
    assert response.status_code == 200, response.json
    (pred,) = response.json["results"]
    ((label, mask),) = brush_masks(pred["result"])
    for r in pred["result"]:
        assert 0.0 <= r["score"] <= 1.0 and math.isfinite(r["score"])
    return label, mask, pred


def test_tilted_rectangle_prompts_with_its_bounding_box(client, photos):
    """051: a 3-point rectangle drawn tilted (rotation 315 around its top-left corner)."""
    _, gt = photos
    body = _request("051_POST_predict.json")
    (item,) = body["params"]["context"]["result"]
    assert item["value"]["rotation"] == 315
    config = parse_label_config(body["label_config"])
    (box,) = context_regions([item], config, 371, 513).boxes
    # Rotated around (x, y) = (150.5, 330.6) px: width 254.5 px up-right, height 56.2 px
    # down-right; the bounding box spans both.
    assert np.allclose(box.corners[0], [150.5, 330.6], atol=0.1)
    assert np.allclose(box.bounds, [150.5, 150.6, 370.3, 370.4], atol=0.2)
    label, mask, _ = _one_region(client.post("/predict", json=body))
    ys, xs = np.nonzero(mask)
    assert label == "Object" and iou(mask, gt["llama"]) > 0.8  # the llama it frames
    assert xs.min() >= 150 - 20 and ys.min() >= 150 - 20 and xs.max() <= 370 + 20


def test_only_the_newest_rectangle_is_segmented(client, photos):
    """X1: two plain rectangles, then a smart tilted one: the context holds all three; the
    answer is the newest one's mask only."""
    _, gt = photos
    body = _request("X1_three_rectangles_in_one_context.json")
    items = body["params"]["context"]["result"]
    assert [i["type"] for i in items] == ["rectanglelabels"] * 3
    # What tells the new region apart: it is the last one, and the only one not already in
    # the task's saved draft (all three are "manual").
    saved = {r["id"] for d in body["tasks"][0]["drafts"] for r in d["result"]}
    assert [i["id"] in saved for i in items] == [True, True, False]
    assert {i["origin"] for i in items} == {"manual"}
    _, mask, _ = _one_region(client.post("/predict", json=body))
    assert iou(mask, gt["llama"]) > 0.8


def test_editor_clicks_and_alt_click(client, model, photos):
    """011: the first smart-keypoint click; 013: a second click and an Alt-click."""
    _, gt = photos
    _, first, _ = _one_region(client.post("/predict", json=_request("011_POST_predict.json")))
    assert iou(first, gt["banana1"]) > 0.9
    encodes = model.engine.stats().encodes
    _, mask, _ = _one_region(client.post("/predict", json=_request("013_POST_predict.json")))
    assert iou(mask, gt["banana1"]) > 0.9 and model.engine.stats().encodes == encodes


def test_on_open_call_returns_at_once_and_stores_nothing(client, model, photos, engine):
    """Opening a task sends a batch call for it (no context): the answer comes at once and
    is ``[]`` (Label Studio stores no prediction), the image is embedded in the background
    so the first click does not encode."""
    body = _request("051_POST_predict.json")
    body["params"]["context"] = None
    task = body["tasks"][0]
    task["predictions"], task["data"]["image"] = [], "/data/local-files/?d=imgs/banana1.png"
    engine.cache.clear()
    model.fetcher.cache.clear()
    start = time.perf_counter()
    r = client.post("/predict", json=body)
    seconds = time.perf_counter() - start
    assert r.status_code == 200 and r.json["results"] == [[]] and seconds < 0.5
    model.embedder.wait()
    encodes = engine.stats().encodes
    click = _request("011_POST_predict.json")
    click["tasks"][0]["id"] = task["id"]
    _one_region(client.post("/predict", json=click))
    assert engine.stats().encodes == encodes  # the background embedding was there


def test_background_embedding_waits_its_delay(model, engine, photos):
    """An image submitted for background embedding is fetched and encoded only after
    ``EMBED_DELAY`` (the editor shows the image first), then once."""
    assert model.embedder.delay == 0.5  # EMBED_DELAY's default
    embedder = BackgroundEmbedder(engine, model.fetcher, delay=1.0)
    url = "/data/local-files/?d=imgs/llama.png"
    engine.cache.clear()
    encodes = engine.stats().encodes
    start = time.monotonic()
    assert embedder.submit(url) and not embedder.submit(url)  # waiting: not queued twice
    embedder.wait()
    assert time.monotonic() - start >= 1.0
    assert engine.stats().encodes == encodes + 1


def test_retrieve_predictions_refines_drafts_only(client, photos):
    """034: Retrieve Predictions on tasks whose annotation holds a brush region: refined
    (a prediction); a task without drafts in the same batch gets none."""
    _, gt = photos
    body = _request("034_POST_predict.json")
    with_draft = body["tasks"][0]
    assert with_draft["data"]["image"].endswith("banana1.png")
    without = {"id": 99, "data": {"image": with_draft["data"]["image"]}, "annotations": []}
    body["tasks"] = [with_draft, without]
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    refined, nothing = r.json["results"]
    ((label, mask),) = brush_masks(refined["result"])
    assert label == "Object" and iou(mask, gt["banana1"]) > 0.9
    assert 0 < refined["score"] <= 1 and nothing == []


def test_setup_reports_smart_labels_that_are_not_brush_labels(client):
    """X1's config gives the smart keypoints a label ('Thing') that is no brush label: a
    click could never become a mask, so /setup says so (Label Studio shows it when the
    model is connected and on the Model settings page)."""
    good = _request("001_POST_setup.json")
    r = client.post("/setup", json=good)
    assert r.status_code == 200 and r.json["model_version"].startswith("promptmoe-")
    bad = dict(good, schema=_request("X1_three_rectangles_in_one_context.json")["label_config"])
    r = client.post("/setup", json=bad)
    assert r.status_code == 422
    assert "'Thing' that are not brush labels" in r.json["detail"] and "Object" in r.status
    with pytest.raises(LabelConfigError, match="KeyPointLabels"):
        parse_label_config(bad["schema"]).check_smart_tools()


def test_rectangle_outside_the_image_is_a_clear_4xx(client):
    body = _request("019_POST_predict.json")
    (item,) = body["params"]["context"]["result"]
    item["value"].update(x=400.0, y=-300.0)
    r = client.post("/predict", json=body)
    assert r.status_code == 422 and "does not overlap" in r.json["detail"]
    item["value"].update(x=90.0, y=90.0, width=50.0, height=50.0)  # partly outside: clipped
    _, mask, _ = _one_region(client.post("/predict", json=body))
    ys, xs = np.nonzero(mask)
    assert mask.any() and xs.min() >= 0.85 * 513 and ys.min() >= 0.85 * 371


def test_scores_are_calibrated_and_spread():
    """Raw SAM scores pass 1.0 (011's click answered 1.00, tied with every confident mask);
    the calibrated score stays below 1, keeps their order and maps NaN to 0."""
    raw = [0.5, 0.8, 0.95, 1.0, 1.02, 1.05]
    for source in ("click", "box", "draft", "kept"):
        scores = [calibrated_score(r, source) for r in raw]
        assert all(0 < s < 1 for s in scores) and scores == sorted(set(scores))
        assert calibrated_score(float("nan"), source) == 0.0

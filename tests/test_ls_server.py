"""The ML backend's HTTP protocol through Flask's test client, with the real MobileSAM."""

from __future__ import annotations

import base64
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import LS_CONFIG as CONFIG
from conftest import blocky_draft as _coarse
from conftest import keypoint as _kp
from conftest import seam_image
from ls_backend.config import load_settings
from ls_backend.model import PromptMoEModel
from ls_backend.results import brush_masks, brush_result
from ls_backend.server import create_app
from ls_backend.tasks import Click
from ls_backend.tracks import ClickTracks
from promptmoe_plugin.eval.coarse import make_coarse
from promptmoe_plugin.eval.metrics import iou

IMAGE = "/data/local-files/?d=voc.png"


@pytest.fixture(scope="module")
def scene(voc, tmp_path_factory):
    """The VOC photo as a local file, and ground-truth masks of a few objects."""
    root = tmp_path_factory.mktemp("files")
    Image.fromarray(voc["rgb"]).save(root / "voc.png")
    masks = voc["masks"]
    gt = {"person_left": masks[15], "person_right": masks[17], "table": masks[18]}
    return root, gt


def _settings(**overrides: str):
    """Settings through the loader ``promptmoe serve`` and gunicorn use (no environment)."""
    return load_settings({}, overrides)


@pytest.fixture(scope="module")
def model(engine, scene, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model_dir")
    settings = _settings(model_dir=str(model_dir), local_files_root=str(scene[0]), intent="sam")
    return PromptMoEModel(engine, settings)


@pytest.fixture()
def client(model):
    return create_app(model).test_client()


def _brush(mask: np.ndarray, label: str) -> dict:
    return brush_result(mask, label, from_name="brush", to_name="image")


def _predict(client, tasks, context=None, config=CONFIG):
    body = {
        "tasks": tasks,
        "project": "1.1700000000",
        "label_config": config,
        "params": {"login": None, "password": None, "context": context},
    }
    return client.post("/predict", json=body)


def _masks(prediction: dict) -> list[tuple[str, np.ndarray]]:
    for r in prediction["result"]:
        assert r["type"] == "brushlabels" and r["from_name"] == "brush" and r["to_name"] == "image"
        assert 0 <= r["score"] <= 1 and r["readonly"] is False
    return brush_masks(prediction["result"])


def test_health_setup_metrics(client):
    r = client.get("/health")
    assert (
        r.status_code == 200
        and r.json["status"] == "UP"
        and r.json["model_class"] == "PromptMoEModel"
    )
    r = client.post(
        "/setup",
        json={
            "project": "1.1700000000",
            "schema": CONFIG,
            "hostname": "http://x",
            "access_token": "t",
        },
    )
    assert r.status_code == 200 and r.json["model_version"].startswith("promptmoe-")
    assert client.get("/metrics").json["requests"]["/setup"]["requests"] >= 1


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/setup", None, 400, "JSON object"),
        ("/setup", {"project": "1"}, 400, "missing field(s) schema"),
        (
            "/setup",
            {"schema": "<View><Image name='i' value='$i'/></View>"},
            422,
            "no <BrushLabels>",
        ),
        ("/setup", {"schema": "<View"}, 422, "cannot parse"),
        ("/predict", {}, 400, "missing field(s) tasks"),
        ("/predict", {"tasks": [], "label_config": CONFIG}, 400, "non-empty list"),
        ("/predict", {"tasks": "x", "label_config": CONFIG}, 400, "non-empty list"),
        ("/predict", {"tasks": [{"data": {}}]}, 400, "label_config"),
        (
            "/predict",
            {"tasks": [{"data": {}}], "label_config": CONFIG, "params": {"context": 3}},
            400,
            "context",
        ),
        (
            "/predict",
            {"tasks": [{"data": {}}], "label_config": CONFIG, "params": {"context": {"result": 1}}},
            400,
            "result",
        ),
        ("/webhook", {"project": {}}, 400, "missing field(s) action"),
        (
            "/webhook",
            {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": CONFIG}},
            422,
            "annotation.id",
        ),
        (
            "/webhook",
            {"action": "ANNOTATIONS_DELETED", "annotations": []},
            422,
            "without annotation ids",
        ),
    ],
)
def test_bad_requests_get_4xx_json(client, path, body, status, message):
    r = client.post(path, json=body) if body is not None else client.post(path, data="not json")
    assert r.status_code == status and r.json["status"] == status
    assert message in r.json["detail"]
    assert client.get("/health").status_code == 200  # still serving
    assert client.get("/nope").status_code == 404 and client.get("/nope").json["status"] == 404


@pytest.mark.parametrize(
    "items, message",
    [
        ([_kp(10, 10, "Cat")], "keypointlabels label 'Cat' is not a BrushLabels label"),
        (
            [{"type": "choices", "value": {"choices": ["x"]}}],
            "no keypoint, rectangle or brush region",
        ),
        (
            [dict(_kp(10, 10, "Person"), value={"x": "a", "y": 1, "keypointlabels": ["Person"]})],
            "value.x must be a number",
        ),
    ],
)
def test_interactive_errors_reach_the_editor(client, items, message):
    """Label Studio shows only the status line of a failed interactive call: it carries the
    reason."""
    r = _predict(client, [{"id": 1, "data": {"image": IMAGE}}], {"result": items})
    assert r.status_code == 422 and message in r.json["detail"] and message in r.status


def test_unknown_webhook_event(client):
    r = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert r.status_code == 200 and r.json == {"status": "Unknown event"}


def test_keypoints_box_and_labels_never_merged(client, model, scene):
    _, gt = scene
    task = {"id": 1, "data": {"image": IMAGE}}
    ctx = {"result": [_kp(80, 300, "Person"), _kp(430, 200, "Person"), _kp(300, 340, "Table")]}
    (pred,) = _predict(client, [task], ctx).json["results"]
    masks = _masks(pred)
    assert sorted(label for label, _ in masks) == ["Person", "Person", "Table"]
    persons = [m for label, m in masks if label == "Person"]
    table = next(m for label, m in masks if label == "Table")
    assert max(iou(m, gt["person_left"]) for m in persons) > 0.6
    assert max(iou(m, gt["person_right"]) for m in persons) > 0.6
    assert iou(table, gt["table"]) > 0.35 and pred["model_version"].startswith("promptmoe-")
    # A later negative click reuses the cached sessions: no new encode, one object changes.
    encodes = model.engine.stats().encodes
    ctx["result"].append(_kp(60, 370, "Person", positive=False))
    (pred2,) = _predict(client, [task], ctx).json["results"]
    assert model.engine.stats().encodes == encodes and len(pred2["result"]) == 3

    y0, x0, y1, x1 = 64, 377, 239, 500
    box = {
        "original_width": 500,
        "original_height": 375,
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {
            "x": x0 / 5,
            "y": y0 / 3.75,
            "width": (x1 - x0) / 5,
            "height": (y1 - y0) / 3.75,
            "rectanglelabels": ["Person"],
        },
    }
    (pred,) = _predict(client, [task], {"result": [box]}).json["results"]
    ((label, mask),) = _masks(pred)
    assert label == "Person" and iou(mask, gt["person_right"]) > 0.7


def test_polygons_alongside_brush_when_configured(client, scene):
    _, gt = scene
    config = CONFIG.replace(
        "</View>",
        '<PolygonLabels name="poly" toName="image"><Label value="Person"/>'
        '<Label value="Table"/></PolygonLabels></View>',
    )
    box = {
        "original_width": 500,
        "original_height": 375,
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {
            "x": 75.4,
            "y": 17.07,
            "width": 24.6,
            "height": 46.67,
            "rectanglelabels": ["Person"],
        },
    }
    (pred,) = _predict(
        client, [{"id": 9, "data": {"image": IMAGE}}], {"result": [box]}, config=config
    ).json["results"]
    kinds = [r["type"] for r in pred["result"]]
    assert kinds[0] == "brushlabels" and "polygonlabels" in kinds
    poly = next(r for r in pred["result"] if r["type"] == "polygonlabels")
    assert poly["from_name"] == "poly" and poly["value"]["polygonlabels"] == ["Person"]
    xs, ys = np.array(poly["value"]["points"]).T
    assert 70 < xs.mean() < 100 and 15 < ys.mean() < 65  # percent, inside the person's box


def test_brush_draft_is_refined(client, scene):
    _, gt = scene
    draft = _coarse(gt["person_left"])
    task = {"id": 2, "data": {"image": IMAGE}}
    (pred,) = _predict(client, [task], {"result": [_brush(draft, "Person")]}).json["results"]
    ((label, mask),) = _masks(pred)
    assert label == "Person" and iou(mask, gt["person_left"]) > max(
        0.7, iou(draft, gt["person_left"]) - 0.05
    )
    assert 0 < pred["score"] <= 1


def test_a_near_correct_brush_draft_comes_back_unchanged(client, voc):
    """The largest VOC object's ``lowres`` draft (IoU 0.98, one piece; its hole is the
    object's own, SAM leaves it open): the draft check keeps it, pixel for pixel."""
    gt = voc["masks"][np.argmax(voc["masks"].sum(axis=(1, 2)))]
    draft = make_coarse(gt, voc["rgb"], "lowres")
    task = {"id": 3, "data": {"image": IMAGE}}
    (pred,) = _predict(client, [task], {"result": [_brush(draft, "Person")]}).json["results"]
    ((label, mask),) = _masks(pred)
    assert label == "Person" and 0 < pred["score"] < 1
    np.testing.assert_array_equal(mask, draft)


def test_batch_predictions_refine_drafts_and_isolate_bad_tasks(client, scene):
    root, gt = scene
    Image.fromarray(np.where(gt["table"], 2, 0).astype(np.uint8)).save(root / "labels.png")
    tasks = [
        {
            "id": 3,
            "data": {"image": IMAGE},
            "predictions": [
                {
                    "model_version": "drafts",
                    "result": [_brush(_coarse(gt["person_right"]), "Person")],
                }
            ],
        },
        {
            "id": 4,
            "data": {"image": "/data/local-files/?d=missing.png"},
            "predictions": [{"model_version": "drafts", "result": [_brush(gt["table"], "Table")]}],
        },
        {"id": 5, "data": {"image": IMAGE, "mask": "/data/local-files/?d=labels.png"}},
        {"id": 6, "data": {"image": IMAGE}},
        {
            "id": 7,
            "data": {"image": IMAGE},
            "predictions": [{"result": [dict(_brush(gt["table"], "Table"), original_width=10)]}],
        },
    ]
    r = _predict(client, tasks)
    assert r.status_code == 200
    p3, p4, p5, p6, p7 = r.json["results"]
    ((label, mask),) = _masks(p3)
    assert label == "Person" and iou(mask, gt["person_right"]) > 0.7 and p3["score"] > 0
    assert p4["result"] == [] and "missing.png" in p4["error"] and "no file" in p4["error"]
    ((label, mask),) = _masks(p5)
    assert label == "Table" and iou(mask, gt["table"]) > 0.6
    assert p6 == []  # no drafts: no prediction (Label Studio stores none), embedded later
    assert "10x375" in p7["error"]


def _annotation_event(action: str, ann_id: int, results: list) -> dict:
    return {
        "action": action,
        "project": {"id": 1, "label_config": CONFIG},
        "task": {"id": 3, "data": {"image": IMAGE}},
        "annotation": {"id": ann_id, "result": results},
    }


def test_webhook_stores_references_and_pairs_then_trains(client, model, scene):
    _, gt = scene
    results = [_brush(gt["person_right"], "Person"), _brush(gt["table"], "Table")]
    r = client.post("/webhook", json=_annotation_event("ANNOTATION_CREATED", 100, results))
    assert r.status_code == 201 and r.json["status"] == "ok"
    assert r.json["result"]["references"] == 2 and r.json["result"]["features"] == 2
    assert r.json["result"]["pairs"] == 1  # task 3's Person draft was refined above
    assert model.store.count("1") == {"Person": 1, "Table": 1}
    r = client.post("/webhook", json=_annotation_event("ANNOTATION_UPDATED", 100, results[:1]))
    assert r.status_code == 201 and model.store.count("1") == {"Person": 1}
    version = model.model_version
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert r.status_code == 201 and r.json["result"]["queued"] is True
    assert r.json["result"]["model_version"] == version  # answered before the training ran
    assert model.training.wait(600) and model.training_status()["last_result"]["trained"]
    assert model.model_version != version and model.model_version.endswith("-r1")
    assert (
        client.post("/setup", json={"schema": CONFIG}).json["model_version"] == model.model_version
    )
    r = client.post(
        "/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 100}]}
    )
    assert (
        r.status_code == 201
        and r.json["result"]["deleted_references"] == 1
        and model.store.count("1") == {}
    )


def test_basic_auth(engine, tmp_path):
    settings = _settings(model_dir=str(tmp_path), basic_auth_user="u", basic_auth_pass="p")
    app = create_app(PromptMoEModel(engine, settings))
    c = app.test_client()
    assert c.get("/health").status_code == 401
    good = base64.b64encode(b"u:p").decode()
    assert c.get("/health", headers={"Authorization": f"Basic {good}"}).status_code == 200


def test_concurrent_requests(client, scene):
    task = {"id": 8, "data": {"image": IMAGE}}
    statuses = []

    def call(x: float):
        r = _predict(client, [task], {"result": [_kp(x, 300, "Person")]})
        statuses.append((r.status_code, len(r.json["results"][0]["result"])))

    threads = [threading.Thread(target=call, args=(60 + 10 * i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [(200, 1)] * 4


def test_stale_reference_features_are_recomputed(model, scene):
    _, gt = scene
    model.store.replace_annotation("7", 1, 1, IMAGE, [("0:a", "Person", gt["person_left"])])
    (ref,) = model.store.references("7", "Person", 8)
    model.store.put_features(ref, "sam", np.ones(3, np.float32))  # an older intent's
    features = model.references(ref)
    assert features.shape == model.references.shape() and features.shape != (3,)
    assert np.array_equal(model.store.features(ref, "sam"), features)


class _FakeSession:
    """A click session whose mask is a disc of radius 5 around its first click."""

    def __init__(self, image: np.ndarray):
        self.mask = np.zeros(image.shape[:2], bool)
        self.score = 0.5
        self.clicks: list[tuple[float, float, bool]] = []

    def click(self, x: float, y: float, positive: bool = True) -> np.ndarray:
        if not self.clicks:
            rows, cols = np.ogrid[: self.mask.shape[0], : self.mask.shape[1]]
            self.mask = (rows - y) ** 2 + (cols - x) ** 2 <= 25
        self.clicks.append((x, y, positive))
        return self.mask


def test_click_tracks_continue_and_stay_within_their_byte_bound(engine):
    image = np.zeros((40, 40, 3), np.uint8)
    image[24:37, 24:37] = 255  # an object far from the first clicks
    started: list[str] = []

    def apply(tracks: ClickTracks, label: str, clicks: tuple[Click, ...]) -> list:
        def new_session():
            started.append(label)
            return _FakeSession(image)

        return tracks.apply(engine, image, "1", label, clicks, new_session)

    first, second = Click(10, 10, True), Click(12, 11, False)
    tracks = ClickTracks(capacity_mb=19)  # room for two one-object tracks (~9 MB each)
    for label in ("A", "B", "C"):
        apply(tracks, label, (first,))
    assert started == ["A", "B", "C"]
    (session,) = apply(tracks, "C", (first, second))  # C continues: only the new click
    assert started == ["A", "B", "C"] and session.clicks == [(10, 10, True), (12, 11, False)]
    apply(tracks, "A", (first, second))  # A was the least recently used: dropped, redone
    assert started == ["A", "B", "C", "A"]
    # A positive click on no object whose own SAM mask touches no object starts a second
    # object; a negative click before any object does nothing.
    assert len(apply(tracks, "C", (first, second, Click(30, 30, True)))) == 2
    assert apply(tracks, "D", (Click(5, 5, False),)) == []


def test_hold_area_setting_keeps_sams_first_click_answer(engine, tmp_path):
    """``SMARTSAM_HOLD_AREA`` reaches the editor's clicks: on the seam image SAM's half
    (about 11% of the image) stands with the default (0.08), the chains' whole comes back
    with ``none``."""
    image, obj = seam_image()
    Image.fromarray(image).save(tmp_path / "seam.png")
    task = {"id": 1, "data": {"image": "/data/local-files/?d=seam.png"}}
    ctx = {"result": [_kp(128, 128, "Person", h=256, w=256)]}
    env = {"MODEL_DIR": str(tmp_path / "m"), "LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path)}
    answers = {}
    for hold in ("", "none"):
        model = PromptMoEModel(engine, load_settings({**env, "SMARTSAM_HOLD_AREA": hold}))
        (pred,) = _predict(create_app(model).test_client(), [task], ctx).json["results"]
        ((_, answers[hold]),) = _masks(pred)
    assert iou(answers[""], obj) < 0.6 and iou(answers["none"], obj) > 0.95


def test_intent_and_depth_model_come_from_the_settings(engine, tmp_path, monkeypatch):
    from transformers import Dinov2Config, Dinov2Model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "dinov2"
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
    )
    Dinov2Model(cfg).save_pretrained(path)
    env = {
        "SMARTSAM_SELECTOR": "dinov2",
        "DINOV2_MODEL": str(path),
        "MODEL_DIR": str(tmp_path / "m"),
        "PROMPTMOE_DEPTH_MODEL": str(tmp_path / "depth"),
    }
    model = PromptMoEModel(engine, load_settings(env))
    assert model.intent.name == "dinov2" and model.intent.model_id == str(path)
    assert model.depth is not None and model.depth.model == str(tmp_path / "depth")
    model = PromptMoEModel(engine, _settings(model_dir=str(tmp_path / "m"), intent="none"))
    assert model.intent.name == "none" and model.depth is None

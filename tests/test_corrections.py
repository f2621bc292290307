"""Later clicks (:mod:`promptmoe_plugin.corrections`): constructed cases for the choice and
the guard, then the real MobileSAM through the click session and the backend."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import clicks_on as _clicks_on
from conftest import data_dir
from promptmoe_plugin.corrections import (
    PLAIN,
    CorrectionConfig,
    choose,
    click_values,
    consistency,
    correct_click,
    correction_zone,
    local_edit,
    paint_click,
)
from promptmoe_plugin.sam import Prompt
from promptmoe_plugin.sam.frames import LOW_RES

SHAPE = (LOW_RES, LOW_RES)


def _disk(cx: float, cy: float, r: float) -> np.ndarray:
    """``(256, 256) bool`` disk in the low-res frame."""
    rows, cols = np.ogrid[:LOW_RES, :LOW_RES]
    return (cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 <= r**2


def _logits(mask: np.ndarray) -> np.ndarray:
    """Confident ``(256, 256) float32`` logits of a mask (+8 inside, -8 outside)."""
    return np.where(mask, 8.0, -8.0).astype(np.float32)


def _xy(*points: tuple[float, float]) -> np.ndarray:
    """Low-res (x, y) click coordinates at pixel centres."""
    return np.array(points, np.float64) + 0.5


def test_click_values_and_consistency_weigh_recent_clicks_more():
    a, b = _disk(60, 60, 30), _disk(60, 60, 30) | _disk(150, 60, 20)
    xy = _xy((60, 60), (150, 60))  # a positive click on the disk, then a negative beside it
    inside = click_values(np.stack([_logits(a), _logits(b)]), xy) > 0
    assert inside.tolist() == [[True, False], [True, True]]
    agree = consistency(inside, np.array([1, 0]), recency=0.5)
    np.testing.assert_allclose(agree, [1.0, 0.5 / 1.5])
    # Violating only the older click costs less than violating only the newest one.
    older, newest = consistency(np.array([[False, False], [True, True]]), np.array([1, 0]), 0.5)
    assert older > newest


def test_consistency_choice_on_a_constructed_case():
    """Without the guard and the bonus of plain SAM's answer, the candidate that agrees with
    every click wins over a better-scored one that leaves out a positive click."""
    previous = _disk(80, 80, 30)
    whole = previous | _disk(140, 80, 25)
    clicks = _xy((80, 80), (140, 80))
    pool = np.stack([_logits(previous), _logits(whole)])
    config = CorrectionConfig(guard=False, single_bonus=0.0)
    best, zone, *_ = choose(
        pool,
        np.array([0.99, 0.80]),
        clicks,
        np.array([1, 1]),
        _logits(previous),
        0.9,
        SHAPE,
        config,
    )
    assert (best, zone) == (1, None)
    # With plain SAM's bonus its own answer (index 0) stands when the guard allows it.
    best, *_ = choose(
        pool, np.array([0.99, 0.80]), clicks, np.array([1, 1]), _logits(previous), 0.9, SHAPE, PLAIN
    )
    assert best == 0


def test_negative_click_near_the_edge_does_not_empty_a_good_mask():
    """SAM's single mask for a negative click near the edge of a good mask is empty (a
    typical failure); the guard passes over it to the candidate that only trims the edge."""
    good = _disk(120, 120, 60)
    trimmed = good & ~_disk(172, 120, 14)
    clicks = _xy((120, 120), (170, 120))  # positive in the middle, negative near the edge
    labels = np.array([1, 0])
    pool = np.stack([_logits(np.zeros(SHAPE, bool)), _logits(trimmed)])
    best, zone, clean, small, _ = choose(
        pool, np.array([0.95, 0.90]), clicks, labels, _logits(good), 0.9, SHAPE, CorrectionConfig()
    )
    assert (best, zone, clean, small) == (1, None, False, True)
    # Guard off (plain SAM's answer kept): the mask is emptied.
    best, *_ = choose(
        pool, np.array([0.95, 0.90]), clicks, labels, _logits(good), 0.9, SHAPE, PLAIN
    )
    assert best == 0


def test_guard_keeps_an_earlier_positive_click_and_edits_near_the_click_only():
    """Every candidate loses the object's left part holding the first click: the guard
    applies the new click's change near it only, so the first click stays inside."""
    previous = _disk(90, 120, 40) | _disk(160, 120, 40)
    gap = previous | _disk(125, 148, 10)  # positive click just below the mask's waist
    right_only = _disk(160, 120, 40) | _disk(125, 148, 10)
    clicks = _xy((70, 120), (125, 146))
    labels = np.array([1, 1])
    pool = np.stack([_logits(right_only)])
    config = CorrectionConfig()
    best, zone, *_ = choose(
        pool, np.array([0.97]), clicks, labels, _logits(previous), 0.9, SHAPE, config
    )
    assert best == 0 and zone is not None and zone[146, 125] and not zone[120, 70]
    edited = local_edit(pool[best], _logits(previous), zone) > 0
    assert edited[120, 70] and edited[146, 125]  # first click kept, new click added
    assert (edited & previous).sum() >= 0.95 * previous.sum()
    # Had a candidate kept the left part, it would have been taken whole.
    pool = np.stack([_logits(right_only), _logits(gap)])
    best, zone, *_ = choose(
        pool, np.array([0.97, 0.90]), clicks, labels, _logits(previous), 0.9, SHAPE, config
    )
    assert (best, zone) == (1, None)


def test_an_answer_sam_scores_lower_must_keep_more_of_the_mask():
    """A negative click 3 px inside a good mask's edge; SAM's answer cuts a slice off the
    far side too (it keeps 0.8 of the mask away from the click).  At the same predicted
    IoU as the previous mask it passes the guard (0.8 >= ``guard_keep``); scored 0.2
    lower it must keep ``guard_keep_fall`` (0.9) and only its change near the click is
    applied."""
    good = _disk(128, 128, 60)
    cut = good & ~_disk(188, 128, 8) & (np.arange(LOW_RES)[None, :] > 95)
    clicks = _xy((128, 128), (185, 128))
    labels = np.array([1, 0])
    config = CorrectionConfig()
    pool = np.stack([_logits(cut)])
    best, zone, clean, small, _ = choose(
        pool, np.array([0.9]), clicks, labels, _logits(good), 0.9, SHAPE, config
    )
    assert (best, zone, clean, small) == (0, None, True, True)
    best, zone, clean, small, _ = choose(
        pool, np.array([0.7]), clicks, labels, _logits(good), 0.9, SHAPE, config
    )
    assert (best, clean, small) == (0, False, True) and zone is not None
    edited = local_edit(pool[0], _logits(good), zone) > 0
    assert not edited[128, 186] and edited[128, 72]  # the click's pixel cut, the far side kept
    # The rule off: the lower-scored answer passes as before.
    off = CorrectionConfig(guard_fall=None)
    assert choose(pool, np.array([0.7]), clicks, labels, _logits(good), 0.9, SHAPE, off).passed


def test_a_click_no_candidate_follows_is_painted_on_the_previous_mask():
    """A negative click 3 px inside a good mask's edge that SAM's answer still covers (and
    that answer is shifted: wrong elsewhere too): the click is painted on the previous
    mask, a bite from the edge to just past the click, the rest kept.  A positive click
    just outside the edge that the answer leaves out gets a bump the same way."""
    good = _disk(128, 128, 60)
    shifted = _disk(100, 128, 90)  # holds the click, IoU < 0.5 with the mask
    clicks, labels = _xy((128, 128), (185, 128)), np.array([1, 0])
    pool = np.stack([_logits(shifted)])
    config = CorrectionConfig()
    choice = choose(pool, np.array([0.9]), clicks, labels, _logits(good), 0.9, SHAPE, config)
    assert choice.painted and choice.small and not choice.passed
    painted = paint_click(_logits(good), choice.zone, positive=False) > 0
    assert not painted[128, 185] and not painted[128, 187]  # the click and the edge cut
    assert painted[128, 180] and painted[128, 72] and (painted != good).sum() < 64  # r 4.5
    # The old behaviour: plain SAM's answer whole.
    old = CorrectionConfig(unfollowed="answer")
    choice = choose(pool, np.array([0.9]), clicks, labels, _logits(good), 0.9, SHAPE, old)
    assert (choice.index, choice.zone, choice.painted) == (0, None, False)
    # A positive click 3 px outside, left out by a smaller answer.
    clicks, labels = _xy((128, 128), (191, 128)), np.array([1, 1])
    pool = np.stack([_logits(_disk(128, 128, 40))])
    choice = choose(pool, np.array([0.9]), clicks, labels, _logits(good), 0.9, SHAPE, config)
    assert choice.painted
    painted = paint_click(_logits(good), choice.zone, positive=True) > 0
    assert painted[128, 191] and (painted & good).sum() == good.sum()
    assert not painted[128, 198] and (painted != good).sum() < 96  # radius 5.5


def test_a_deep_click_is_no_small_correction():
    mask = _disk(128, 128, 60)
    config = CorrectionConfig()
    assert correction_zone(mask, (128, 128), False, config) is None  # the mask's centre
    zone = correction_zone(mask, (128, 185), False, config)  # (row, col) 3 px inside the edge
    assert zone is not None and zone[128, 185] and zone[128, 190] and not zone[128, 128]
    assert correction_zone(np.zeros_like(mask), (10, 10), True, config) is None


def test_config_validation_and_strings():
    assert CorrectionConfig.from_strings({"guard": "false", "recency": "0.8"}) == (
        CorrectionConfig(guard=False, recency=0.8)
    )
    assert CorrectionConfig.from_strings({"unfollowed": "answer"}).unfollowed == "answer"
    for bad in ({"fresh": "sometimes"}, {"recency": "0"}, {"guard_keep": "1.5"}, {"x": "1"}):
        with pytest.raises(ValueError):
            CorrectionConfig.from_strings(bad)
    with pytest.raises(ValueError, match="unfollowed must be one of paint, answer"):
        CorrectionConfig(unfollowed="brush")


# ------------------------------------------------------------------ the real MobileSAM
def _backend_mask(engine, image: np.ndarray, clicks: list[tuple[float, float, bool]], tmp_path):
    """``(model, (label, mask))`` the backend's ``/predict`` returns for ``clicks``
    (``(x, y, positive)`` image pixels, label Person) sent one more at a time as the
    editor does, ``image`` served as a local file from ``tmp_path``."""
    from PIL import Image

    from conftest import LS_CONFIG, keypoint
    from ls_backend.config import load_settings
    from ls_backend.model import PromptMoEModel
    from ls_backend.results import brush_masks
    from ls_backend.server import create_app

    h, w = image.shape[:2]
    Image.fromarray(image).save(tmp_path / "image.png")
    settings = load_settings({}, {"model_dir": str(tmp_path), "local_files_root": str(tmp_path)})
    model = PromptMoEModel(engine, settings)
    result = [keypoint(x, y, "Person", positive, h, w) for x, y, positive in clicks]
    client = create_app(model).test_client()
    for n in range(1, len(clicks) + 1):  # Label Studio sends all clicks so far each time
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=image.png"}}],
            "project": "1.1700000000",
            "label_config": LS_CONFIG,
            "params": {"context": {"result": result[:n]}},
        }
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.json
    (region,) = brush_masks(response.json["results"][0]["result"])
    return model, region


def test_later_clicks_are_deterministic_and_plain_config_is_plain_sam(engine, voc):
    from promptmoe_plugin.clicks import SamClickSession

    image, gt = voc["rgb"], voc["masks"][15].astype(bool)
    runs = [
        _clicks_on(gt, SamClickSession(engine, image, corrections=CorrectionConfig()), 4)
        for _ in range(2)
    ]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
    plain = _clicks_on(gt, SamClickSession(engine, image), 4)
    # until=1: no click is corrected (nor zoomed, with zoom_from=0)
    for config in (PLAIN, CorrectionConfig(until=1, zoom_from=0)):
        as_config = _clicks_on(gt, SamClickSession(engine, image, corrections=config), 4)
        for a, b in zip(plain, as_config, strict=True):
            np.testing.assert_array_equal(a, b)
    # The function itself: the same clicks and previous logits, the same answer.
    emb = engine.embed(image)
    points, labels = np.array([[80.0, 300.0], [60.0, 370.0]]), np.array([1, 0])
    first = engine.decode(emb, [Prompt(points[:1], labels[:1])], frame="none")
    previous = first.low_res_logits[0, int(first.best()[0])]
    one = correct_click(engine, emb, points, labels, previous, 0.9)
    two = correct_click(engine, emb, points, labels, previous, 0.9)
    np.testing.assert_array_equal(one.logits, two.logits)
    assert one.record() == two.record() and one.decodes in (1, 2)
    assert one.previous_iou == 0.9 and one.record()["source"] == one.source


def test_backend_click_track_returns_the_guarded_mask(engine, voc, tmp_path):
    """A positive then a negative click on the VOC photo's right person: plain SAM's
    second mask loses half of the person (IoU 0.51); the backend's click track returns the
    guarded one, as a SmartSAM session with default corrections gives it."""
    from promptmoe_plugin.eval.metrics import iou
    from promptmoe_plugin.smartsam import SmartSamSession

    image, gt = voc["rgb"], voc["masks"][17].astype(bool)
    clicks = [(444, 169, True), (420, 93, False)]
    model, (label, mask) = _backend_mask(engine, image, clicks, tmp_path)

    sessions = {}
    for name, corrections in (("guarded", CorrectionConfig()), ("plain", None)):
        session = SmartSamSession(engine, image, intent=model.intent, corrections=corrections)
        for x, y, positive in clicks:
            sessions[name] = session.click(x, y, positive)
    assert label == "Person"
    assert iou(sessions["plain"], gt) < 0.6 < 0.8 < iou(sessions["guarded"], gt)
    assert iou(mask, sessions["guarded"]) > 0.99 and iou(mask, gt) > 0.8


def test_grabcut_teddy_keeps_its_mask_at_an_unfollowed_click(engine, tmp_path):
    """GrabCut's teddy: SmartSAM's first mask is near 0.96; SAM's answer to the protocol's
    second click (a positive click at the rim that no answer includes) fell to 0.26.
    Painted, the mask stays near 0.96, also in the backend's click track; the old
    behaviour still drops."""
    from promptmoe_plugin.eval.clicker import simulate
    from promptmoe_plugin.eval.datasets import load_dataset
    from promptmoe_plugin.eval.metrics import iou
    from promptmoe_plugin.smartsam import SmartSamSession

    (teddy,) = [s for s in load_dataset(data_dir("GrabCut")) if s.name == "teddy"]
    image, gt, ignore = teddy.load()

    def run(unfollowed: str):
        config = CorrectionConfig(unfollowed=unfollowed)
        return simulate(
            lambda: SmartSamSession(engine, image, corrections=config), gt, ignore, max_clicks=2
        )

    paint, answer = run("paint"), run("answer")
    assert paint.corrections[1]["source"] == "previous+paint"
    assert min(paint.ious) > 0.95 and answer.ious[0] > 0.95 and answer.ious[1] < 0.5

    clicks = [(c.x, c.y, c.positive) for c in paint.clicks]
    _, (_, mask) = _backend_mask(engine, image, clicks, tmp_path)
    assert iou(mask, gt, ignore) > 0.95


def test_backend_box_then_clicks_continue_the_box_object(engine, voc, tmp_path):
    """A smart rectangle then five clicks inside it (the protocol's, on the VOC photo's
    object 12): the backend continues the box's object click by click, the box in every
    prompt (IoU 0.82 here, zoomed from click 3; 0.88 without the zoom); decoding the box
    and all clicks afresh, as before, gave 0.65."""
    from PIL import Image

    from conftest import LS_CONFIG
    from ls_backend.config import load_settings
    from ls_backend.model import PromptMoEModel
    from ls_backend.results import brush_masks
    from ls_backend.server import create_app
    from promptmoe_plugin.clicks import SamClickSession
    from promptmoe_plugin.eval.metrics import iou

    image, gt = voc["rgb"], voc["masks"][12].astype(bool)
    h, w = gt.shape
    Image.fromarray(image).save(tmp_path / "voc.png")
    settings = load_settings({}, {"model_dir": str(tmp_path), "local_files_root": str(tmp_path)})
    client = create_app(PromptMoEModel(engine, settings)).test_client()
    box = (72, 90, 178, 201)
    clicks = [(137, 101, True), (148, 102, True), (92, 133, False), (145, 93, True)]
    clicks.append((92, 131, False))
    common = {"original_width": w, "original_height": h, "to_name": "image"}
    rect = {
        **common,
        "from_name": "rect",
        "type": "rectanglelabels",
        "value": {
            "x": 100 * box[0] / w,
            "y": 100 * box[1] / h,
            "width": 100 * (box[2] - box[0]) / w,
            "height": 100 * (box[3] - box[1]) / h,
            "rectanglelabels": ["Person"],
        },
    }
    points = [
        {
            **common,
            "from_name": "kp",
            "type": "keypointlabels",
            "is_positive": positive,
            "value": {"x": 100 * x / w, "y": 100 * y / h, "keypointlabels": ["Person"]},
        }
        for x, y, positive in clicks
    ]
    body = {
        "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=voc.png"}}],
        "project": "1.1700000000",
        "label_config": LS_CONFIG,
        "params": {"context": {"result": [rect, *points]}},
    }
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.json
    ((label, mask),) = brush_masks(response.json["results"][0]["result"])

    sessions = {}
    for name, kwargs in (("guarded", {"corrections": CorrectionConfig()}), ("fresh", {})):
        session = SamClickSession(engine, image, feed_logits=name != "fresh", **kwargs)
        session.frame(*box)
        for x, y, positive in clicks:
            sessions[name] = session.click(x, y, positive)
    assert label == "Person"
    assert iou(sessions["fresh"], gt) < 0.7 < 0.8 < iou(sessions["guarded"], gt)
    assert iou(mask, sessions["guarded"]) > 0.99


def test_bench_options_reach_the_later_clicks():
    from promptmoe_plugin.eval.methods import ClickOptions, click_methods
    from promptmoe_plugin.eval.options import click_options, parse_options
    from promptmoe_plugin.smartsam import SmartSamConfig

    typed = click_options(
        parse_options(["sam-guarded:guard=false", "smartsam-pure:corrections=none", "n_chains=2"]),
        click_methods(["sam-guarded", "smartsam-pure"]),
    )
    assert typed["sam-guarded"].corrections == CorrectionConfig(guard=False)
    assert typed["smartsam-pure"] == ClickOptions(SmartSamConfig(n_chains=2), corrections=None)
    with pytest.raises(ValueError, match="corrections=none with"):
        ClickOptions.from_strings({"corrections": "none", "guard": "true"})

"""Focus crops for later clicks (:mod:`promptmoe_plugin.zoom`): the box arithmetic, the
mask prompt, then a real MobileSAM click session that zooms."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import clicks_on as _clicks_on
from promptmoe_plugin.clicks import SamClickSession
from promptmoe_plugin.corrections import CorrectionConfig
from promptmoe_plugin.eval.metrics import iou
from promptmoe_plugin.zoom import (
    PROMPT_LOGIT,
    contains,
    focus_box,
    mask_prompt,
    object_box,
    paste,
    to_crop,
)


def test_object_box_holds_the_mask_and_the_positive_clicks_only():
    mask = np.zeros((50, 80), bool)
    mask[10:20, 30:40] = True
    points = np.array([[5.0, 45.0], [70.0, 2.0]])
    assert object_box(mask, points, np.array([1, 0])) == (5, 10, 40, 46)
    assert object_box(np.zeros_like(mask), points[:1], np.array([1])) == (5, 45, 6, 46)
    with pytest.raises(ValueError, match="no box"):
        object_box(np.zeros_like(mask), points, np.array([0, 0]))


def test_focus_box_expands_keeps_a_minimum_side_clips_and_refuses_large_crops():
    # 100 x 40 object box in a 1000 x 800 (W x H) image: x1.5 -> 150 x 60, min side 100.
    assert focus_box((400, 300, 500, 340), (800, 1000), 1.5, 100, 0.5) == (375, 270, 525, 370)
    # Near the corner the crop is clipped to the image.
    assert focus_box((0, 0, 40, 40), (800, 1000), 1.5, 100, 0.5) == (0, 0, 70, 70)
    # A crop over more than max_share of the image is no zoom.
    assert focus_box((100, 100, 900, 700), (800, 1000), 1.0, 10, 0.5) is None
    assert focus_box((100, 100, 900, 700), (800, 1000), 1.0, 10, 0.61) == (100, 100, 900, 700)


def test_contains_checks_every_side():
    outer = (10, 10, 100, 60)
    assert contains(outer, (10, 10, 100, 60)) and contains(outer, (20, 20, 30, 30))
    for inner in ((9, 20, 30, 30), (20, 9, 30, 30), (20, 20, 101, 30), (20, 20, 30, 61)):
        assert not contains(outer, inner)


def test_crop_coordinates_and_paste_round_trip():
    box = (30, 20, 90, 70)
    assert to_crop(np.array([[35.0, 25.0]]), box).tolist() == [[5.0, 5.0]]
    assert to_crop(np.array([30.0, 20.0, 90.0, 70.0]), box).tolist() == [0, 0, 60, 50]
    crop = np.zeros((50, 60), bool)
    crop[5:10, 5:15] = True
    full = paste(crop, box, (100, 120))
    assert full.shape == (100, 120) and full.sum() == crop.sum()
    np.testing.assert_array_equal(full[20:70, 30:90], crop)


def test_mask_prompt_is_positive_inside_and_negative_outside(engine, voc):
    image, gt = voc["rgb"], voc["masks"][0].astype(bool)
    emb = engine.embed(image)
    logits = mask_prompt(emb, gt)
    assert logits.shape == (256, 256) and logits.dtype == np.float32
    assert logits.max() == PROMPT_LOGIT and logits.min() == -PROMPT_LOGIT
    # SAM decodes the mask prompt back to a mask close to the one it came from.
    back = engine.upscale_masks(emb, logits[None], "image")[0]
    assert iou(back, gt) > 0.8


#: A zoom the 500 x 375 VOC photo allows (the default minimum side, 384 px, would cover
#: most of it and so never zoom).
ZOOM = CorrectionConfig(zoom_from=2, zoom_min_side=160)


def test_a_zoomed_session_decodes_on_a_crop_around_the_object(engine, voc):
    image, gt = voc["rgb"], voc["masks"][0].astype(bool)
    session = SamClickSession(engine, image, corrections=ZOOM)
    masks = _clicks_on(gt, session, 4)
    assert session.crop is not None
    x0, y0, x1, y1 = session.crop
    assert session.crop_emb.original_size == (y1 - y0, x1 - x0)
    assert contains(session.crop, object_box(gt, np.zeros((0, 2)), np.zeros(0)))
    outside = np.ones_like(gt)
    outside[y0:y1, x0:x1] = False
    assert not masks[-1][outside].any()
    assert iou(masks[-1], gt) > 0.8
    # The same clicks give the same masks; without zoom the session never crops.
    again = _clicks_on(gt, SamClickSession(engine, image, corrections=ZOOM), 4)
    for a, b in zip(masks, again, strict=True):
        np.testing.assert_array_equal(a, b)
    plain = SamClickSession(engine, image, corrections=CorrectionConfig(zoom_from=0))
    _clicks_on(gt, plain, 4)
    assert plain.crop is None and plain.next_crop() is None


def test_next_crop_is_the_crop_the_next_click_starts_on(engine, voc):
    image, gt = voc["rgb"], voc["masks"][0].astype(bool)
    config = CorrectionConfig(zoom_from=3, zoom_min_side=160)
    session = SamClickSession(engine, image, corrections=config)
    assert session.next_crop() is None  # no mask yet
    session.click(240, 300)
    assert session.next_crop() is None  # click 2 does not zoom
    session.click(245, 320)
    ahead = session.next_crop()
    assert ahead is not None
    assert ahead == focus_box(
        object_box(session.mask, np.array(session.points), np.ones(2)),
        gt.shape,
        config.zoom_expand,
        config.zoom_min_side,
        config.zoom_max_share,
    )
    session.click(238, 290)  # inside the crop: the zoom starts on it
    assert session.crop == ahead and session.next_crop() is None


def test_an_object_that_outgrows_the_zoom_returns_to_the_whole_image(engine, voc):
    image, gt = voc["rgb"], voc["masks"][0].astype(bool)
    session = SamClickSession(engine, image, corrections=ZOOM)
    session.click(240, 300)
    session.click(245, 320)
    assert session.crop is not None
    # A positive click across the image: the box of the object covers most of the photo.
    mask = session.click(480, 20)
    assert session.crop is None and session.crop_emb is None
    assert mask.shape == gt.shape and session.logits.shape == (256, 256)


def test_a_box_started_object_keeps_its_box_in_the_crop(engine, voc):
    image, gt = voc["rgb"], voc["masks"][0].astype(bool)
    session = SamClickSession(engine, image, corrections=ZOOM)
    session.frame(220, 255, 260, 345)
    mask = session.click(240, 300)
    assert session.crop is not None
    assert iou(mask, gt) > 0.7


def test_backend_encodes_the_next_crop_while_the_annotator_looks(engine, voc, tmp_path):
    """Three clicks on the VOC photo's object 0 (the protocol's): the backend answers the
    third and encodes, in the background, the crop the fourth click zooms on; the fourth
    request then encodes nothing and returns the zoomed mask of a SmartSAM session."""
    from PIL import Image

    from conftest import LS_CONFIG, keypoint
    from ls_backend.config import load_settings
    from ls_backend.model import PromptMoEModel
    from ls_backend.results import brush_masks
    from ls_backend.server import create_app
    from promptmoe_plugin.sam import image_key
    from promptmoe_plugin.smartsam import SmartSamSession
    from promptmoe_plugin.zoom import crop_image

    image = voc["rgb"]
    h, w = image.shape[:2]
    Image.fromarray(image).save(tmp_path / "voc.png")
    settings = load_settings({}, {"model_dir": str(tmp_path), "local_files_root": str(tmp_path)})
    model = PromptMoEModel(engine, settings)
    clicks = [(237, 286, True), (234, 271, True), (255, 258, False), (248, 265, False)]
    session = SmartSamSession(engine, image, intent=model.intent)
    for x, y, positive in clicks[:3]:
        session.click(x, y, positive)
    crop = session.next_crop()
    assert crop is not None
    engine.cache.pop(image_key(crop_image(image, crop)))  # as if never encoded

    def predict(n: int) -> np.ndarray:
        result = [keypoint(x, y, "Person", positive, h, w) for x, y, positive in clicks[:n]]
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=voc.png"}}],
            "project": "1.1700000000",
            "label_config": LS_CONFIG,
            "params": {"context": {"result": result}},
        }
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.json
        ((_, mask),) = brush_masks(response.json["results"][0]["result"])
        return mask

    client = create_app(model).test_client()
    for n in (1, 2, 3):
        predict(n)
    model.embedder.wait()
    assert image_key(crop_image(image, crop)) in engine.cache
    encodes = engine.stats().encodes
    mask = predict(4)
    assert engine.stats().encodes == encodes
    expected = session.click(*clicks[3])
    assert session._sam.crop == crop
    assert iou(mask, expected) > 0.99

"""SmartSAM with the real MobileSAM: chains, intents, determinism, real data."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import data_dir

from promptmoe_plugin.masks import mask_iou
from promptmoe_plugin.sam.frames import mask_to_lowres
from promptmoe_plugin.smartsam import (
    IntentError,
    NoIntent,
    SamIntent,
    SmartSamConfig,
    SmartSamSession,
    make_intent,
)

#: A small agent so that each session costs a handful of decodes.
SMALL = SmartSamConfig(n_points=2, n_boxes=1, n_chains=2, chain_steps=2)


def iou(a: np.ndarray, b: np.ndarray, ignore: np.ndarray | None = None) -> float:
    return mask_iou(a, b, ignore=ignore, empty=1.0)


@pytest.fixture(scope="module")
def figure():
    """A synthetic 'figure': a head (disk) on a body (rectangle) in other colours."""
    rng = np.random.default_rng(0)
    img = (200 + rng.integers(0, 10, (256, 256, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:256, :256]
    head = (xx - 128) ** 2 + (yy - 70) ** 2 < 30**2
    body = (abs(xx - 128) < 45) & (yy > 95) & (yy < 220)
    img[body] = (40, 60, 160)
    img[head] = (200, 120, 90)
    return img, head, head | body


def test_chain_reaches_the_whole_from_the_part(engine, figure):
    img, head, whole = figure
    # One chain, started from the best first-click candidate: SAM's head mask.
    s = SmartSamSession(engine, img, SmartSamConfig(n_chains=1, chain_steps=2))
    assert isinstance(s.intent, NoIntent)  # no intent given: the pure mode
    s.click(128, 70)
    pool = s.candidates
    first = int(np.argmax(s.pool.iou[:3]))
    assert iou(pool[first], head) > 0.9  # SAM alone picks the part
    chain = np.flatnonzero(s.pool.chain == 0)
    assert len(chain) >= 1 and max(iou(pool[i], whole) for i in chain) > 0.9
    # pure mode (contains the click, highest predicted IoU) then returns the whole
    assert iou(s.mask, whole) > 0.9
    assert set(s.timings) == {"sampler", "chains", "intent", "total"}


def test_same_seed_same_result_and_later_clicks(engine, voc):
    img = voc["rgb"]
    a = SmartSamSession(engine, img, SMALL, seed=7)
    b = SmartSamSession(engine, img, SMALL, seed=7)
    ma, mb = a.click(250, 200), b.click(250, 200)
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_array_equal(a.pool.logits, b.pool.logits)
    c = SmartSamSession(engine, img, SMALL, seed=8)
    c.click(250, 200)
    assert not np.array_equal(a.pool.logits, c.pool.logits)  # other seed, other prompts
    # a later negative click is plain SAM interaction from the chosen candidate
    ys, xs = np.nonzero(ma)
    after = a.click(float(xs[0]), float(ys[0]), positive=False)
    assert after.shape == ma.shape and not np.array_equal(after, ma)
    assert a._sam.labels == [1, 0]
    with pytest.raises(ValueError, match="outside"):
        SmartSamSession(engine, img, SMALL).click(-5, 10)
    with pytest.raises(TypeError, match="SmartSamConfig"):
        SmartSamSession(engine, img, {"n_chains": 2})


def _colour_scene(colour_a, colour_b, seed):
    """Two separate squares of the given colours on grey, with their masks."""
    rng = np.random.default_rng(seed)
    img = (120 + rng.integers(0, 8, (200, 300, 3))).astype(np.uint8)
    a = np.zeros((200, 300), bool)
    b = np.zeros((200, 300), bool)
    a[50:150, 30:130] = True
    b[50:150, 170:270] = True
    img[a], img[b] = colour_a, colour_b
    return img, a, b


def test_sam_intent_prefers_the_reference_like_candidate(engine):
    intent = make_intent("sam", engine)
    assert isinstance(intent, SamIntent)
    other = make_intent("sam", engine)
    assert other is not intent  # a new instance per call: the caller keeps one
    ref_img, ref_mask, _ = _colour_scene((220, 30, 30), (30, 30, 220), seed=1)
    ref = intent.reference_features(ref_img, ref_mask)
    assert intent.reference_features(ref_img, ref_mask) is ref  # cached by content
    assert other.reference_features(ref_img, ref_mask) is not ref  # in each instance
    np.testing.assert_array_equal(other.reference_features(ref_img, ref_mask), ref)
    assert ref.ndim == 1 and abs(np.linalg.norm(ref) - 1) < 1e-5
    # the target scene has the colours swapped: the red square is on the right
    img, blue, red = _colour_scene((30, 30, 220), (220, 30, 30), seed=2)
    emb = engine.embed(img)
    weights = np.stack([mask_to_lowres(emb, blue), mask_to_lowres(emb, red)])
    sims = intent.candidate_features(emb, weights) @ ref
    assert sims[1] > sims[0]
    with pytest.raises(ValueError, match="empty"):
        intent.reference_features(ref_img, np.zeros_like(ref_mask))


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    """A tiny random-init DINOv2 saved to a folder, loaded back offline."""
    from transformers import Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("dinov2")
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
    )
    Dinov2Model(cfg).save_pretrained(path)
    return str(path)


def test_dinov2_intent_from_a_local_folder(engine, tiny_dinov2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    intent = make_intent("dinov2", engine, tiny_dinov2)
    assert intent.name == "dinov2"
    img, a, b = _colour_scene((220, 30, 30), (30, 30, 220), seed=3)
    ref = intent.reference_features(img, a)
    assert ref.shape == (32,) and abs(np.linalg.norm(ref) - 1) < 1e-5
    # The same image and mask as a candidate: cosine 1, above the other square.
    s = SmartSamSession(engine, img, SMALL, intent=intent, references=[(img, a)])
    s.click(80, 100)
    weights = np.stack([mask_to_lowres(s.emb, a), mask_to_lowres(s.emb, b)])
    sims = intent.candidate_features(s.emb, weights) @ ref
    assert sims[0] > 0.999 and sims[1] < sims[0]
    assert s.references.shape == (1, 32) and s.mask.any()
    with pytest.raises(IntentError, match="cannot load"):
        make_intent("dinov2", engine, str(tiny_dinov2) + "-missing")
    with pytest.raises(IntentError, match="unknown intent"):
        make_intent("clip", engine)


def test_reference_features_can_be_passed_precomputed(engine):
    ref_img, ref_mask, _ = _colour_scene((220, 30, 30), (30, 30, 220), seed=1)
    intent = make_intent("sam", engine)
    feats = intent.reference_features(ref_img, ref_mask)
    img, blue, red = _colour_scene((30, 30, 220), (220, 30, 30), seed=2)
    a = SmartSamSession(engine, img, SMALL, intent=intent, references=[(ref_img, ref_mask)])
    b = SmartSamSession(
        engine, img, SMALL, intent=make_intent("sam", engine), reference_features=[feats]
    )
    np.testing.assert_array_equal(a.references, b.references)
    np.testing.assert_array_equal(a.click(220, 100), b.click(220, 100))
    assert iou(a.mask, red) > 0.9


def test_real_davis_image_ambiguous_click(engine):
    """DAVIS 021: SAM's best-scored mask of the centre click is a part (IoU ~0.19)."""
    from promptmoe_plugin.clicks import SamClickSession
    from promptmoe_plugin.eval.clicker import Clicker
    from promptmoe_plugin.eval.datasets import load_dataset

    sample = {s.name: s for s in load_dataset(data_dir("DAVIS"))}["021"]
    img, gt, ignore = sample.load()
    click = Clicker(gt, ignore).next_click(np.zeros_like(gt))
    sam = SamClickSession(engine, img).click(click.x, click.y)
    smart = SmartSamSession(engine, img).click(click.x, click.y)
    assert iou(smart, gt, ignore) > iou(sam, gt, ignore) + 0.3

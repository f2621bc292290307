"""SmartSAM with the real MobileSAM: chains, selectors, determinism, CLI, real data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import data_dir
from promptmoe_plugin.eval.metrics import iou
from promptmoe_plugin.smartsam import SmartSamSession, make_selector
from promptmoe_plugin.smartsam.selectors import SelectorError

#: A small agent so that each session costs a handful of decodes.
SMALL = dict(n_points=2, n_boxes=1, n_chains=2, chain_steps=2)


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
    s = SmartSamSession(engine, img, n_points=0, n_boxes=0, n_chains=1, chain_steps=2)
    s.click(128, 70)
    pool = s.candidates
    first = int(np.argmax(s.pool.iou[:3]))
    assert iou(pool[first], head) > 0.9  # SAM alone picks the part
    chain = np.flatnonzero(s.pool.chain == 0)
    assert len(chain) >= 1 and max(iou(pool[i], whole) for i in chain) > 0.9
    # pure mode (contains the click, highest predicted IoU) then returns the whole
    assert iou(s.mask, whole) > 0.9
    assert set(s.timings) == {"sampler", "chains", "selector", "total"}


def test_same_seed_same_result_and_later_clicks(engine, voc):
    img = voc["rgb"]
    a = SmartSamSession(engine, img, seed=7, **SMALL)
    b = SmartSamSession(engine, img, seed=7, **SMALL)
    ma, mb = a.click(250, 200), b.click(250, 200)
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_array_equal(a.pool.logits, b.pool.logits)
    c = SmartSamSession(engine, img, seed=8, **SMALL)
    c.click(250, 200)
    assert not np.array_equal(a.pool.logits, c.pool.logits)  # other seed, other prompts
    # a later negative click is plain SAM interaction from the chosen candidate
    ys, xs = np.nonzero(ma)
    after = a.click(float(xs[0]), float(ys[0]), positive=False)
    assert after.shape == ma.shape and not np.array_equal(after, ma)
    assert a._sam.labels == [1, 0]
    with pytest.raises(ValueError, match="outside"):
        SmartSamSession(engine, img, **SMALL).click(-5, 10)


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


def test_sam_selector_prefers_the_reference_like_candidate(engine):
    selector = make_selector("sam", engine)
    assert make_selector("sam", engine) is selector  # one shared instance per engine
    ref_img, ref_mask, _ = _colour_scene((220, 30, 30), (30, 30, 220), seed=1)
    ref = selector.reference_features(ref_img, ref_mask)
    assert selector.reference_features(ref_img, ref_mask) is ref  # cached by content
    assert ref.ndim == 1 and abs(np.linalg.norm(ref) - 1) < 1e-5
    # the target scene has the colours swapped: the red square is on the right
    img, blue, red = _colour_scene((30, 30, 220), (220, 30, 30), seed=2)
    emb = engine.embed(img)
    from promptmoe_plugin.smartsam.frames import mask_to_lowres

    weights = np.stack([mask_to_lowres(emb, blue), mask_to_lowres(emb, red)])
    sims = selector.candidate_features(emb, weights) @ ref
    assert sims[1] > sims[0]
    with pytest.raises(ValueError, match="empty"):
        selector.reference_features(ref_img, np.zeros_like(ref_mask))


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    """A tiny random-init DINOv2 saved to a folder, loaded back offline."""
    from transformers import Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("dinov2")
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14)
    Dinov2Model(cfg).save_pretrained(path)
    return str(path)


def test_dinov2_selector_from_a_local_folder(engine, tiny_dinov2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    selector = make_selector("dinov2", engine, tiny_dinov2)
    assert make_selector("dinov2", engine, tiny_dinov2) is selector
    img, a, b = _colour_scene((220, 30, 30), (30, 30, 220), seed=3)
    ref = selector.reference_features(img, a)
    assert ref.shape == (32,) and abs(np.linalg.norm(ref) - 1) < 1e-5
    # The same image and mask as a candidate: cosine 1, above the other square.
    s = SmartSamSession(engine, img, selector="dinov2", dinov2_model=tiny_dinov2, references=[(img, a)], **SMALL)
    s.click(80, 100)
    from promptmoe_plugin.smartsam.frames import mask_to_lowres

    weights = np.stack([mask_to_lowres(s.emb, a), mask_to_lowres(s.emb, b)])
    sims = selector.candidate_features(s.emb, weights) @ ref
    assert sims[0] > 0.999 and sims[1] < sims[0]
    assert s.references.shape == (1, 32) and s.mask.any()
    with pytest.raises(SelectorError, match="cannot load"):
        make_selector("dinov2", engine, str(tiny_dinov2) + "-missing")
    with pytest.raises(SelectorError, match="unknown selector"):
        make_selector("clip", engine)


def test_reference_features_can_be_passed_precomputed(engine):
    ref_img, ref_mask, _ = _colour_scene((220, 30, 30), (30, 30, 220), seed=1)
    feats = make_selector("sam", engine).reference_features(ref_img, ref_mask)
    img, blue, red = _colour_scene((30, 30, 220), (220, 30, 30), seed=2)
    a = SmartSamSession(engine, img, selector="sam", references=[(ref_img, ref_mask)], **SMALL)
    b = SmartSamSession(engine, img, selector="sam", reference_features=[feats], **SMALL)
    np.testing.assert_array_equal(a.references, b.references)
    np.testing.assert_array_equal(a.click(220, 100), b.click(220, 100))
    assert iou(a.mask, red) > 0.9


def test_segment_cli(engine, tmp_path, capsys):
    from promptmoe_plugin.cli import main

    img, a, _ = _colour_scene((220, 30, 30), (30, 30, 220), seed=4)
    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray((a * 255).astype(np.uint8)).save(tmp_path / "ref.png")
    out, overlay = tmp_path / "out" / "mask.png", tmp_path / "overlay.png"
    argv = ["segment", "--image", str(tmp_path / "img.png"), "--click", "80,100", "--click", "200,100,neg",
            "--reference", f"{tmp_path / 'img.png'}:{tmp_path / 'ref.png'}", "--device", "cpu", "-o", str(out),
            "--overlay", str(overlay)]
    assert main(argv) == 0
    mask = np.asarray(Image.open(out)) > 0
    assert iou(mask, a) > 0.9 and Image.open(overlay).size == (300, 200)
    assert "candidates" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["segment", "--image", str(tmp_path / "img.png"), "--click", "80;100", "-o", str(out)])


def test_real_davis_image_ambiguous_click(engine):
    """DAVIS 021: SAM's best-scored mask of the centre click is a part (IoU ~0.19)."""
    from promptmoe_plugin.eval.clicker import Clicker
    from promptmoe_plugin.eval.datasets import load_dataset
    from promptmoe_plugin.eval.metrics import iou
    from promptmoe_plugin.clicks import SamClickSession

    sample = {s.name: s for s in load_dataset(data_dir("DAVIS"))}["021"]
    img, gt, ignore = sample.load()
    click = Clicker(gt, ignore).next_click(np.zeros_like(gt))
    sam = SamClickSession(engine, img).click(click.x, click.y)
    smart = SmartSamSession(engine, img).click(click.x, click.y)
    assert iou(smart, gt, ignore) > iou(sam, gt, ignore) + 0.3

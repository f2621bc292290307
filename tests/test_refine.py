"""End-to-end refinement: every variant on a real photo, and `full` improving a morph mask."""

from __future__ import annotations

import re

import numpy as np
import pytest

from promptmoe_plugin.eval.coarse import make_coarse
from promptmoe_plugin.experts import EXPERTS
from promptmoe_plugin.experts.geometry import to_working
from promptmoe_plugin.eval.metrics import iou
from promptmoe_plugin.refine import VARIANTS, refine


@pytest.fixture(scope="module")
def case(voc):
    image = voc["rgb"]
    gt = voc["masks"][np.argmax(voc["masks"].sum(axis=(1, 2)))]
    return image, gt, make_coarse(gt, image, "morph", seed=3)


def test_full_improves_a_morph_degraded_mask(engine, case):
    image, gt, coarse = case
    encodes = engine.stats().encodes
    engine.embed(image)
    before = engine.stats().encodes
    out = refine(engine, image, coarse, "full", grid=3, box_gate=None, stable_pick=False)
    assert out.source == "experts"
    assert engine.stats().encodes == before  # the embedding is computed once and reused
    assert before - encodes <= 1
    assert out.mask.shape == gt.shape and out.mask.dtype == bool
    assert iou(out.mask, gt) > iou(coarse, gt) + 0.02
    assert 0 < out.score <= 1.5
    assert len(out.experts) == 2 and set(out.experts) <= set(EXPERTS)
    p = out.prompts
    assert len(p.points) == len(p.labels) and p.labels[-1] == 0 and p.box.shape == (4,)
    H, W = gt.shape
    assert (p.points[:, 0] <= W).all() and (p.points[:, 1] <= H).all()
    assert {"encode", "router", "experts", "fusion", "prompts", "decode", "upscale"} <= set(out.timings)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "full"])
def test_every_variant_returns_an_image_frame_mask(engine, case, variant):
    image, gt, coarse = case
    out = refine(engine, image, coarse, variant, grid=3, iterations=1, box_gate=None)
    assert out.mask.shape == gt.shape and out.mask.dtype == bool and out.mask.any()
    if variant == "unrefined":
        np.testing.assert_array_equal(out.mask, coarse)
        assert np.isnan(out.score)
    else:
        assert iou(out.mask, gt) > 0.5
    if variant == "dense":
        assert len(out.experts) == 9 and len(set(out.experts.values())) == 1


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_box_gate_returns_sams_box_answer_when_it_agrees_with_the_draft(engine, case, variant):
    image, gt, coarse = case
    box = refine(engine, image, coarse, "sam-box")
    gated = refine(engine, image, coarse, variant, box_gate=0.0)
    np.testing.assert_array_equal(gated.mask, box.mask)
    assert gated.score == pytest.approx(box.score)
    assert gated.experts == {} and "experts" not in gated.timings and gated.source == box.source == "box"
    np.testing.assert_array_equal(gated.prompts.box, box.prompts.box)
    open_gate = refine(engine, image, coarse, variant, box_gate=1.0, iterations=1)  # IoU never exceeds 1
    assert len(open_gate.experts) == 2 and "experts" in open_gate.timings and open_gate.source in ("experts", "plain")


@pytest.mark.parametrize("prefer", ["experts", "plain"])
def test_stable_pick_returns_the_more_stable_answer(engine, case, monkeypatch, prefer):
    """Where the experts ran, the result is the experts' answer or the plain mask-prompt
    (SAMRefiner) answer, whichever has the higher stability score."""
    import promptmoe_plugin.refine as refine_module

    image, gt, coarse = case
    opts = dict(grid=3, iterations=2, box_gate=None)
    experts = refine(engine, image, coarse, "full", stable_pick=False, **opts)
    plain = refine(engine, image, coarse, "samrefiner", iterations=2)
    assert (experts.source, plain.source) == ("experts", "plain")
    winner = experts if prefer == "experts" else plain
    loser = plain if prefer == "experts" else experts
    assert not np.array_equal(winner.mask, loser.mask)  # the choice is visible in the result
    real = refine(engine, image, coarse, "full", **opts)  # SAM's own stability decides
    np.testing.assert_array_equal(real.mask, {"experts": experts, "plain": plain}[real.source].mask)

    # A stand-in stability that favours ``winner``: the comparison must follow it.
    winner_working = to_working(engine.embed(image), winner.mask)

    def stability(working):
        return float(iou(working > 0, winner_working))

    monkeypatch.setattr(refine_module, "stability_score", stability)
    picked = refine(engine, image, coarse, "full", **opts)
    assert picked.source == prefer and picked.experts == experts.experts
    np.testing.assert_array_equal(picked.mask, winner.mask)


def test_bad_input_is_rejected(engine, case):
    image, gt, coarse = case
    with pytest.raises(ValueError, match="variant"):
        refine(engine, image, coarse, "nope")
    with pytest.raises(ValueError, match="empty"):
        refine(engine, image, np.zeros_like(coarse), "full")
    with pytest.raises(ValueError, match="image"):
        refine(engine, image, coarse[:10], "full")
    with pytest.raises(ValueError, match="options"):
        refine(engine, image, coarse, "full", bogus=1)
    for gate in ("0.6", 1.5, True):
        with pytest.raises(ValueError, match="box_gate"):
            refine(engine, image, coarse, "full", box_gate=gate)


def test_refine_command_writes_mask_and_overlay(tmp_path, case, capsys):
    from promptmoe_plugin.cli import main
    from promptmoe_plugin.images import load_mask, save_mask
    from PIL import Image

    image, gt, coarse = case
    Image.fromarray(image).save(tmp_path / "img.png")
    save_mask(coarse, tmp_path / "coarse.png")
    rc = main(["refine", "--image", str(tmp_path / "img.png"), "--mask", str(tmp_path / "coarse.png"), "--variant", "lite",
               "-o", str(tmp_path / "out.png"), "--overlay", str(tmp_path / "ov.png"), "--device", "cpu"])
    assert rc == 0
    assert re.match(r"lite: (box|experts|plain) answer, predicted IoU \d\.\d{3}; encode=", capsys.readouterr().out)
    out = load_mask(tmp_path / "out.png")
    assert out.shape == gt.shape and iou(out, gt) > 0.5
    assert Image.open(tmp_path / "ov.png").size == (gt.shape[1], gt.shape[0])


def test_fixed_experts_option(engine, case):
    image, gt, coarse = case
    out = refine(engine, image, coarse, "lite", experts="edge,color", iterations=1)
    assert out.experts == {"edge": 1.0, "color": 1.0}
    with pytest.raises(ValueError, match="not available"):
        refine(engine, image, coarse, "lite", experts="sam_box")


def test_stage_timings_run_the_experts_at_both_sizes(engine):
    from conftest import data_dir
    from promptmoe_plugin.refine import NON_SAM_STAGES, stage_timings

    result = stage_timings(engine, [str(data_dir("GrabCut"))], "lite", limit=1, scale=2)
    assert set(result) == {"original", "x2"}
    for stages in result.values():
        assert stages["experts"] > 0 and stages["decode"] > 0  # the gate is off: experts always run
        assert stages["non_sam_total"] == pytest.approx(sum(stages.get(s, 0.0) for s in NON_SAM_STAGES))

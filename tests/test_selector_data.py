"""Selector examples measured through the refinement pipeline, and the active-learning refit."""

from __future__ import annotations

import numpy as np
import pytest

from promptmoe_plugin.eval.coarse import make_coarse
from promptmoe_plugin.experts import EXPERTS
from promptmoe_plugin.masks import mask_iou
from promptmoe_plugin.refine import RefineConfig, refine
from promptmoe_plugin.router import CONTEXT_DIM, load_router
from promptmoe_plugin.selector_data import make_example, refit_router


def _largest(voc) -> np.ndarray:
    return voc["masks"][np.argmax(voc["masks"].sum(axis=(1, 2)))]


def test_pair_iou_is_what_refine_returns_with_that_pair(engine, voc):
    image, gt = voc["rgb"], _largest(voc)
    coarse = make_coarse(gt, image, "morph", seed=2)
    names = ("edge", "color", "depth")  # no depth estimator: depth is left out
    ex = make_example(engine, "voc/0", "morph", image, coarse, gt, None, names)
    e, c, d = (EXPERTS.index(n) for n in names)
    assert np.isfinite(ex.iou[e, c]) and ex.iou[e, c] == ex.iou[c, e] and 0 < ex.iou[e, c] <= 1
    assert np.isnan(ex.iou[e, d]) and np.isnan(ex.iou[e, e])
    inter, union = (coarse & gt).sum(), (coarse | gt).sum()
    assert ex.unrefined == pytest.approx(inter / union)
    assert ex.context.shape == (CONTEXT_DIM,) and 0 <= ex.agreement <= 1
    # The measured pair IoU is the experts' answer of refine() with that pair fixed and
    # the pair-independent decisions (gate, stable pick, draft check) off.
    config = RefineConfig(
        experts=("edge", "color"), box_gate=None, stable_pick=False, keep_stability=None
    )
    result = refine(engine, image, coarse, "full", config)
    assert result.source == "experts"
    assert ex.iou[e, c] == pytest.approx(mask_iou(result.mask, gt), abs=1e-6)


def test_drafts_the_box_gate_answers_are_skipped_on_request(engine, voc):
    image, gt = voc["rgb"], _largest(voc)
    coarse = make_coarse(gt, image, "morph", seed=2)
    names = ("edge", "color")
    opens = RefineConfig(box_gate=0.0)  # any overlap with SAM's box answer opens the gate
    args = (engine, "voc/0", "morph", image, coarse, gt, None, names)
    assert make_example(*args, config=opens, skip_gated=True) is None
    assert make_example(*args, config=opens) is not None  # measured unless asked to skip
    shut = RefineConfig(box_gate=1.0)
    assert make_example(*args, config=shut, skip_gated=True) is not None


def test_refit_from_triples_writes_weights(engine, voc, tmp_path):
    image, final = voc["rgb"], _largest(voc)
    draft = make_coarse(final, image, "morph", seed=1)
    out = tmp_path / "refit.pt"
    figures = refit_router(
        engine,
        [(image, draft, final)],
        out,
        epochs=20,
        names=("edge", "color", "brightness", "contrast"),
    )
    assert out.is_file() and figures["examples"] == 1
    assert 0 <= figures["after"]["router_iou"] <= 100 and np.isfinite(figures["loss"])
    refit = load_router(out)
    assert refit.meta["refit_examples"] == 1
    with pytest.raises(ValueError):
        refit_router(engine, [], out)

"""Examples for the expert selector, measured through the refinement pipeline.

For an image, a ground truth and a draft, :func:`make_example` runs the PromptMoE
experts' path of :func:`~promptmoe_plugin.refine.refine` once per expert pair, with
that pair's fused saliency and every other setting of the :class:`RefineConfig` (PPE,
mask prompt, agreement strength, iterations), and records the IoU of each answer with
the ground truth.  :func:`refit_router` is the active-learning refit from submitted
annotations.  Fitting itself is :mod:`promptmoe_plugin.router.training`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .experts import EXPERTS, DepthEstimator, ExpertInput, available_experts, expert_maps
from .fusion import fuse
from .masks import mask_iou
from .refine import RefineConfig, box_agreement, experts_answer
from .router import DEFAULT_WEIGHTS, Example, context_features, evaluate, fit, load_router
from .router import save_router
from .sam import SamEngine
from .sam.frames import mask_to_working


def make_example(
    engine: SamEngine,
    name: str,
    kind: str,
    image: np.ndarray,
    coarse: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray | None = None,
    names: Sequence[str] = EXPERTS,
    config: RefineConfig = RefineConfig(),
    depth: DepthEstimator | None = None,
    skip_gated: bool = False,
) -> Example | None:
    """The :class:`Example` of one draft: its context, the refined IoU of every pair of
    ``names`` and the draft's box agreement (:func:`~promptmoe_plugin.refine.box_agreement`).

    ``image`` ``(H, W, 3) uint8``; ``coarse``, ``gt``, ``ignore`` ``(H, W) bool`` image frame
    (``ignore`` pixels left out of the IoU; two empty masks count as IoU 1).  Each pair's
    two maps are fused with equal weights and refined as ``config`` says (the box gate,
    the stable pick and the draft check are not applied: they do not depend on the pair).
    An empty answer counts as IoU 0.  The table is indexed like
    :data:`~promptmoe_plugin.experts.EXPERTS`, NaN where a pair was not measured
    (``depth`` None leaves the depth expert out).  With ``skip_gated``, None when
    ``config.box_gate`` returns SAM's box answer for this draft: the selector is not
    asked there, and no pair is refined.
    """
    emb = engine.embed(image)
    m0 = mask_to_working(emb, coarse)
    names = available_experts(depth, tuple(names))
    agreement = box_agreement(engine, emb, m0, config.box_match)
    if skip_gated and config.box_gate is not None and agreement > config.box_gate:
        return None
    maps = expert_maps(names, ExpertInput(engine, emb, m0, depth, config.grid))
    table = np.full((len(EXPERTS), len(EXPERTS)), np.nan, np.float32)
    for e, f in itertools.combinations(names, 2):
        saliency = fuse([maps[e], maps[f]], [1.0, 1.0])
        answer = experts_answer(engine, emb, m0, saliency, config, agreement)
        iou = 0.0
        if answer is not None:
            mask = engine.upscale_masks(emb, answer.logits[None], "image")[0]
            iou = mask_iou(mask, gt, ignore=ignore, empty=1.0)
        i, j = EXPERTS.index(e), EXPERTS.index(f)
        table[i, j] = table[j, i] = iou
    unrefined = mask_iou(coarse, gt, ignore=ignore, empty=1.0)
    return Example(name, kind, context_features(emb, m0), table, unrefined, agreement)


def refit_router(
    engine: SamEngine,
    triples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    out_path: str | Path,
    base_weights: str | Path | None = None,
    epochs: int = 100,
    names: Sequence[str] = EXPERTS,
    depth: DepthEstimator | None = None,
) -> dict:
    """Active learning: refit the selector from ``(image, draft, final)`` triples.

    Each triple is an ``(H, W, 3) uint8`` image, the draft (coarse) ``(H, W) bool`` mask the
    annotator started from and the ``(H, W) bool`` mask they accepted; the final mask plays
    the ground truth.  Starts from ``base_weights`` (default: the shipped weights) and
    writes the refit weights to ``out_path``.

    Returns:
        figures: examples, loss, and :func:`~promptmoe_plugin.router.evaluate` on the
        triples before and after.
    """
    if len(triples) == 0:
        raise ValueError("refit_router needs at least one (image, draft, final) triple")
    examples = []
    for n, (image, draft, final) in enumerate(triples):
        if draft.shape != image.shape[:2] or final.shape != image.shape[:2] or not draft.any():
            raise ValueError(
                f"triple {n}: draft and final must be non-empty (H, W) masks matching the image"
            )
        example = make_example(
            engine, f"triple{n}", "draft", image, draft, final, names=names, depth=depth
        )
        assert example is not None  # skip_gated is off
        examples.append(example)
    base = load_router(base_weights)
    before = evaluate(base, examples, names)
    router = fit(examples, base=base, epochs=epochs)
    loss = router.meta["train_loss"]
    router.meta = {
        **base.meta,
        "refit_examples": len(examples),
        "refit_from": str(base_weights or DEFAULT_WEIGHTS),
    }
    save_router(router, out_path)
    after = evaluate(router, examples, names)
    return {
        "examples": len(examples),
        "loss": loss,
        "before": before,
        "after": after,
        "out": str(out_path),
    }

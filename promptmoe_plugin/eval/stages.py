"""Refinement stage timings at an image's own size and upscaled: does the pipeline stay in
SAM's working frame (long side 1024) whatever the image size?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..experts.depth import DepthEstimator
from ..refine import RefineConfig, refine
from ..router import load_router
from ..sam import SamEngine
from .coarse import make_coarse, sample_seed
from .datasets import sample_datasets
from .methods import refine_methods

#: Stages that do not run SAM's encoder or decoder (``upscale`` is the bilinear map of
#: logits to the output frame).
NON_SAM_STAGES = ("prepare", "router", "experts", "fusion", "prompts", "upscale", "draft_check")


def stage_timings(
    engine: SamEngine,
    folders: Sequence[str],
    variant: str = "lite",
    limit: int = 5,
    scale: int = 4,
    kind: str = "morph",
    *,
    depth_model: str | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean seconds per stage of ``variant`` on dataset images at their size and upscaled
    ``scale`` times (bicubic image, nearest mask).

    The box gate is off, so every annotation runs the experts, fusion and PPE.  The image
    is embedded before each refinement: the encoder is not a stage measured here.

    Args:
        folders: dataset folders; the first ``limit`` images of each are used (None or 0:
            all).
        kind: the coarse-mask kind (:data:`.coarse.KINDS`), seeded per image with run seed 0.
        depth_model: depth model (path or hub id) of the depth expert (None: none).

    Returns:
        ``{"original": {stage: s}, "x<scale>": {stage: s}}``, each with ``non_sam_total``
        (the sum of :data:`NON_SAM_STAGES`).
    """
    config = RefineConfig(box_gate=None)
    (method,) = refine_methods([variant])
    router = load_router() if method.uses_router(config) else None
    depth = DepthEstimator(depth_model) if depth_model else None
    sums: dict[str, dict[str, float]] = {"original": {}, f"x{scale}": {}}
    samples = [s for _, found in sample_datasets(folders, limit) for s in found]
    for sample in tqdm(samples, desc="stage timings", unit="img", disable=not progress):
        image, gt, _ = sample.load()
        coarse = make_coarse(gt, image, kind, sample_seed(0, sample.name))
        big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        big_mask = cv2.resize(
            coarse.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST
        )
        for label, (img, mask) in (
            ("original", (image, coarse)),
            (f"x{scale}", (big, big_mask > 0)),
        ):
            engine.embed(img)
            out = refine(engine, img, mask, variant, config, router=router, depth=depth)
            for stage, sec in out.timings.items():
                sums[label][stage] = sums[label].get(stage, 0.0) + sec / len(samples)
    for label in sums:
        sums[label]["non_sam_total"] = sum(sums[label].get(s, 0.0) for s in NON_SAM_STAGES)
    return sums


def format_stage_table(result: dict[str, dict[str, Any]], variant: str) -> str:
    """:func:`stage_timings` as a table: seconds per stage at both sizes and their ratio."""
    labels = list(result)
    first, second = result[labels[0]], result[labels[1]]
    stages = [s for s in (*NON_SAM_STAGES, "non_sam_total", "decode", "encode") if s in first]
    lines = [
        f"{variant}: mean seconds per annotation and stage",
        f"{'stage':14s} " + " ".join(f"{lab:>10s}" for lab in labels) + "      ratio",
    ]
    for s in stages:
        a, b = first.get(s, 0.0), second.get(s, 0.0)
        lines.append(f"{s:14s} {a:10.4f} {b:10.4f} {b / a if a > 0 else float('nan'):10.2f}")
    return "\n".join(lines)

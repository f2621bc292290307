"""The ten PromptMoE experts: each maps (image, coarse mask) to a relevance map in [0, 1].

All maps live in SAM's *working* frame (long side 1024): the image is ``emb.image``
``(h, w, 3) uint8`` and the mask ``(h, w) bool``.  Expert names, in the order the
selector's expert embeddings use:

``edge`` ``color`` ``brightness`` ``texture`` ``contrast`` ``depth`` ``superpixel``
``sam_coverage`` ``sam_weighted`` ``sam_box``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..sam import ImageEmbedding, SamEngine
from .appearance import (
    brightness_similarity,
    color_similarity,
    contrast_similarity,
    texture_similarity,
)
from .depth import DepthEstimator, depth_similarity
from .geometry import edge_distance
from .sam_experts import everything_regions, sam_box_query, sam_coverage, sam_weighted_coverage
from .superpixel import image_slic_labels, superpixel_coverage

EXPERTS: tuple[str, ...] = (
    "edge",
    "color",
    "brightness",
    "texture",
    "contrast",
    "depth",
    "superpixel",
    "sam_coverage",
    "sam_weighted",
    "sam_box",
)
#: The six experts of PromptMoE-Lite (no depth model, no SAM decoding).
CHEAP_EXPERTS: tuple[str, ...] = (
    "edge",
    "color",
    "brightness",
    "texture",
    "contrast",
    "superpixel",
)


@dataclass
class ExpertInput:
    """What the experts read: the engine and embedding (SAM experts; the engine also
    caches per-image results), the working-frame coarse mask ``(h, w) bool``, the depth
    estimator (None: depth unavailable) and the SAM-everything grid side."""

    engine: SamEngine
    emb: ImageEmbedding
    mask: np.ndarray
    depth: DepthEstimator | None = None
    grid: int = 6


def available_experts(
    depth: DepthEstimator | None, names: tuple[str, ...] = EXPERTS
) -> tuple[str, ...]:
    """``names`` minus ``depth`` when there is no depth estimator."""
    return tuple(n for n in names if n != "depth" or depth is not None)


def expert_map(name: str, inp: ExpertInput) -> np.ndarray:
    """The ``(h, w) float32`` map in [0, 1] of expert ``name`` (working frame)."""
    image, mask = inp.emb.image, inp.mask
    if name == "edge":
        return edge_distance(mask)
    if name == "color":
        return color_similarity(image, mask)
    if name == "brightness":
        return brightness_similarity(image, mask)
    if name == "texture":
        return texture_similarity(image, mask)
    if name == "contrast":
        return contrast_similarity(image, mask)
    if name == "superpixel":
        return superpixel_coverage(image_slic_labels(inp.engine, inp.emb), mask)
    if name == "depth":
        if inp.depth is None:
            raise ValueError(
                "the depth expert needs a depth model (a DepthEstimator, refine(..., depth=...))"
            )
        return depth_similarity(inp.depth.depth(inp.emb), mask)
    if name in ("sam_coverage", "sam_weighted"):
        regions = everything_regions(inp.engine, inp.emb, inp.grid)
        return (sam_coverage if name == "sam_coverage" else sam_weighted_coverage)(regions, mask)
    if name == "sam_box":
        return sam_box_query(inp.engine, inp.emb, mask)
    raise ValueError(f"unknown expert {name!r}; choose from {', '.join(EXPERTS)}")


def expert_maps(names: tuple[str, ...] | list[str], inp: ExpertInput) -> dict[str, np.ndarray]:
    """Maps of several experts, keyed by name."""
    return {name: expert_map(name, inp) for name in names}


__all__ = [
    "CHEAP_EXPERTS",
    "EXPERTS",
    "DepthEstimator",
    "ExpertInput",
    "available_experts",
    "expert_map",
    "expert_maps",
]

"""Prompt rules of the baselines PromptMoE is compared with (all on SAM's working frame).

* ``samrefiner``: one positive at the interior distance peak, the PPE negative point,
  the tight box and the Gaussian mask prompt, iterated (the loop is in ``refine``).
* ``dualsight``: box enlarged 10% about its centre, three distance peaks kept apart by a
  fixed radius, one negative from a thin ring just outside the mask; SAM's candidate
  closest (IoU) to the input mask.
* ``sam-box``: the tight box alone; SAM's most confident candidate.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .experts.geometry import edge_distance, tight_box
from .ppe import place_points
from .sam import ImageEmbedding, Prompt
from .sam.frames import working_to_image

#: DualSight constants: box growth, number of positives, ring width (share of long side).
DUALSIGHT_BOX_GROWTH = 0.10
DUALSIGHT_POINTS = 3
DUALSIGHT_RING = 0.005


def samrefiner_points(mask: np.ndarray) -> np.ndarray:
    """``(1, 2)`` (x, y): the mask pixel farthest from its boundary (working frame)."""
    return place_points(edge_distance(mask), mask, k=1, lam=0.0)


def dualsight_prompt(emb: ImageEmbedding, mask: np.ndarray, rng: np.random.Generator) -> Prompt:
    """DualSight-style prompt for the working-frame ``(h, w) bool`` mask; image pixels."""
    h, w = mask.shape
    long_side = max(h, w)
    positives = place_points(
        edge_distance(mask), mask, k=DUALSIGHT_POINTS, radius=max(5.0, 0.01 * long_side)
    )
    x0, y0, x1, y1 = tight_box(mask)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) / 2 * (1 + DUALSIGHT_BOX_GROWTH), (y1 - y0) / 2 * (1 + DUALSIGHT_BOX_GROWTH)
    box = np.array([max(0, cx - hw), max(0, cy - hh), min(w - 1, cx + hw), min(h - 1, cy + hh)])
    width = max(1, round(DUALSIGHT_RING * long_side))
    ring = ndimage.binary_dilation(mask, iterations=width) & ~mask
    points, labels = positives, np.ones(len(positives), np.int64)
    if ring.any():
        ys, xs = np.nonzero(ring)
        i = int(rng.integers(len(ys)))
        points = np.vstack([positives, [[xs[i], ys[i]]]])
        labels = np.append(labels, 0)
    return Prompt(
        points=working_to_image(emb, points), labels=labels, box=working_to_image(emb, box)
    )


def sam_box_prompt(emb: ImageEmbedding, mask: np.ndarray) -> Prompt:
    """The tight box of the working-frame ``(h, w) bool`` mask, in image pixels."""
    return Prompt(box=working_to_image(emb, tight_box(mask)))

"""Geometric expert (distance to the coarse mask's boundary) and mask geometry helpers.

Every function works in whatever frame its mask is in (the experts use the working frame).
"""

from __future__ import annotations

import cv2
import numpy as np


def inner_distance(mask: np.ndarray) -> np.ndarray:
    """``(h, w) float32`` exact Euclidean distance (pixels) of each mask pixel to the
    nearest pixel outside the mask; 0 outside.  ``mask`` is ``(h, w) bool``."""
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def edge_distance(mask: np.ndarray) -> np.ndarray:
    """Edge-distance expert: ``inner_distance / max``, ``(h, w) float32`` in [0, 1]."""
    dist = inner_distance(mask)
    top = float(dist.max())
    if top <= 0:
        raise ValueError("edge distance needs a non-empty mask")
    return dist / top


def tight_box(mask: np.ndarray) -> np.ndarray:
    """``(4,) float64`` ``x0, y0, x1, y1`` pixel indices of the tight box of a non-empty
    ``(h, w) bool`` mask (same frame)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        raise ValueError("tight box of an empty mask")
    return np.array([xs[0], ys[0], xs[-1], ys[-1]], np.float64)

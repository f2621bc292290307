"""Geometric expert (distance to the coarse mask's boundary) and mask geometry helpers."""

from __future__ import annotations

import cv2
import numpy as np

from ..sam import ImageEmbedding


def inner_distance(mask: np.ndarray) -> np.ndarray:
    """``(h, w) float32`` exact Euclidean distance (pixels) of each mask pixel to the
    nearest pixel outside the mask; 0 outside.  ``mask`` is ``(h, w) bool`` in any frame."""
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def edge_distance(mask: np.ndarray) -> np.ndarray:
    """Edge-distance expert: ``inner_distance / max``, ``(h, w) float32`` in [0, 1]."""
    dist = inner_distance(mask)
    top = float(dist.max())
    if top <= 0:
        raise ValueError("edge distance needs a non-empty mask")
    return dist / top


def to_image_frame(emb: ImageEmbedding, xy: np.ndarray) -> np.ndarray:
    """Map working-frame coordinates ``(..., 2k)`` (x, y pairs, e.g. points or a box)
    to image pixels."""
    h, w = emb.input_size
    H, W = emb.original_size
    xy = np.asarray(xy, np.float64)
    return xy * np.tile([W / w, H / h], xy.shape[-1] // 2)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """``(4,) float64`` ``x0, y0, x1, y1`` pixel indices of the tight box of a non-empty
    ``(h, w) bool`` mask (same frame)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        raise ValueError("tight box of an empty mask")
    return np.array([xs[0], ys[0], xs[-1], ys[-1]], np.float64)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of bool masks ``a`` and ``b`` broadcast to ``(..., h, w)`` (same frame):
    ``(...)`` float64 in [0, 1]; 0 where both are empty."""
    inter = (a & b).sum(axis=(-2, -1))
    return inter / np.maximum((a | b).sum(axis=(-2, -1)), 1)


def to_working(emb: ImageEmbedding, mask: np.ndarray) -> np.ndarray:
    """Resize an image-frame ``(H, W) bool`` mask to the working frame ``(h, w) bool``
    (area average when shrinking, so thin parts survive as long as they cover half a pixel)."""
    if mask.shape != tuple(emb.original_size):
        raise ValueError(f"mask is {mask.shape} but the image is {tuple(emb.original_size)} (H, W)")
    h, w = emb.input_size
    if mask.shape == (h, w):
        return mask.astype(bool, copy=True)
    shrink = h < mask.shape[0]
    resized = cv2.resize(
        mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    working = resized >= 0.5
    return working if working.any() else resized > 0

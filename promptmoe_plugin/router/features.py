"""The selector's context: what it knows of an image and a coarse mask (518 numbers).

SAM's image embedding averaged over its 64x64 grid (256), the embedding averaged over the
coarse mask and L2-normalised (256), and six shape features of the mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..sam import IMAGE_SIZE, ImageEmbedding

CONTEXT_DIM = 256 + 256 + 6


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Six shape numbers of a ``(h, w) bool`` mask (any frame), ``(6,) float32``: area
    share, box fill, aspect w/h, perimeter / (h w), compactness 4 pi A / P^2, number of
    connected components; zeros for an empty mask."""
    h, w = mask.shape
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    if area == 0:
        return np.zeros(6, np.float32)
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = max(1.0, sum(cv2.arcLength(c, True) for c in contours))
    components = cv2.connectedComponents(mask.astype(np.uint8))[0] - 1
    return np.array(
        [
            area / (h * w),
            area / (bw * bh),
            bw / bh,
            perimeter / (h * w),
            4 * np.pi * area / perimeter**2,
            components,
        ],
        np.float32,
    )


def context_features(emb: ImageEmbedding, mask: np.ndarray) -> np.ndarray:
    """``(518,) float32`` context of an image embedding and a non-empty working-frame
    ``(h, w) bool`` mask."""
    feats = emb.features[0].float().cpu().numpy()  # (256, 64, 64) over the padded input
    grid = feats.shape[-1]
    padded = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    weight = cv2.resize(padded, (grid, grid), interpolation=cv2.INTER_AREA)
    if weight.sum() <= 0:
        ys, xs = np.nonzero(mask)
        weight[int(ys.mean()) * grid // IMAGE_SIZE, int(xs.mean()) * grid // IMAGE_SIZE] = 1.0
    pooled = (feats * weight).sum(axis=(1, 2)) / weight.sum()
    pooled /= max(float(np.linalg.norm(pooled)), 1e-8)
    return np.concatenate([feats.mean(axis=(1, 2)), pooled, shape_features(mask)]).astype(
        np.float32
    )

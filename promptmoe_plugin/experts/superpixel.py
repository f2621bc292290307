"""Region-coverage experts over SLIC superpixels (and the coverage formula they share
with the SAM-everything experts)."""

from __future__ import annotations

import cv2
import numpy as np
from skimage.segmentation import slic

from ..sam import LRUCache

#: SLIC runs at this long side and its labels are resized to the working frame; SLIC's
#: cost grows with pixels, and 200 regions of a 1024-px image are large enough for it.
SLIC_LONG_SIDE = 384
N_SEGMENTS = 200
COMPACTNESS = 10.0

_labels_cache: LRUCache[np.ndarray] = LRUCache(64)


def region_coverage(labels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel share of its region inside the mask, and the region's share of the mask.

    Args:
        labels: ``(h, w)`` non-negative int region ids (every id, 0 included, is a region).
        mask: ``(h, w) bool`` coarse mask in the same frame, non-empty.

    Returns:
        ``coverage`` ``|R ∩ M| / |R|`` and ``share`` ``|R ∩ M| / |M|``, both ``(h, w) float32``.
    """
    flat = labels.ravel()
    total = np.bincount(flat)
    inside = np.bincount(flat, weights=mask.ravel(), minlength=len(total))
    coverage = (inside / np.maximum(total, 1)).astype(np.float32)
    share = (inside / max(int(mask.sum()), 1)).astype(np.float32)
    return coverage[labels], share[labels]


def slic_labels(image: np.ndarray, key: str | None = None) -> np.ndarray:
    """``(h, w) int32`` SLIC labels of the working-frame image ``(h, w, 3) uint8``.

    Computed at :data:`SLIC_LONG_SIDE` and resized (nearest) to ``(h, w)``; cached by
    ``key`` (the embedding key) because the labels do not depend on the mask.
    """
    if key is not None and (hit := _labels_cache.get(key)) is not None:
        return hit
    h, w = image.shape[:2]
    s = min(1.0, SLIC_LONG_SIDE / max(h, w))
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    lab = slic(small, n_segments=N_SEGMENTS, compactness=COMPACTNESS, start_label=0, channel_axis=-1)
    labels = cv2.resize(lab.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
    if key is not None:
        _labels_cache.put(key, labels, labels.nbytes)
    return labels


def superpixel_coverage(image: np.ndarray, mask: np.ndarray, key: str | None = None) -> np.ndarray:
    """Superpixel-coverage expert, ``(h, w) float32`` in [0, 1] (working frame)."""
    return region_coverage(slic_labels(image, key), mask)[0]

"""Region-coverage experts over SLIC superpixels (and the coverage formula they share
with the SAM-everything experts)."""

from __future__ import annotations

import cv2
import numpy as np
from skimage.segmentation import slic

from ..sam import ImageEmbedding, SamEngine

#: SLIC runs at this long side and its labels are resized to the working frame; SLIC's
#: cost grows with pixels, and 200 regions of a 1024-px image are large enough for it.
SLIC_LONG_SIDE = 384
N_SEGMENTS = 200
COMPACTNESS = 10.0
#: Name and bound of the engine's cache of SLIC labels (:meth:`SamEngine.image_cache`).
LABELS_CACHE = "slic_labels"
LABELS_CACHE_MB = 64


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


def slic_labels(image: np.ndarray) -> np.ndarray:
    """``(h, w) int32`` SLIC labels of an ``(h, w, 3) uint8`` image, computed at
    :data:`SLIC_LONG_SIDE` and resized (nearest) to ``(h, w)``."""
    h, w = image.shape[:2]
    s = min(1.0, SLIC_LONG_SIDE / max(h, w))
    small = cv2.resize(
        image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
    )
    lab = slic(
        small, n_segments=N_SEGMENTS, compactness=COMPACTNESS, start_label=0, channel_axis=-1
    )
    return cv2.resize(lab.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)


def image_slic_labels(engine: SamEngine, emb: ImageEmbedding) -> np.ndarray:
    """:func:`slic_labels` of the working image ``emb.image``, cached per image in the
    engine (the labels do not depend on the mask): ``(h, w) int32``, working frame."""
    cache = engine.image_cache(LABELS_CACHE, LABELS_CACHE_MB)
    if (hit := cache.get(emb.key)) is not None:
        return hit
    labels = slic_labels(emb.image)
    cache.put(emb.key, labels, labels.nbytes)
    return labels


def superpixel_coverage(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Superpixel-coverage expert from :func:`slic_labels` ``(h, w) int32`` and the
    ``(h, w) bool`` mask: ``(h, w) float32`` in [0, 1] (working frame)."""
    return region_coverage(labels, mask)[0]

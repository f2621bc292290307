"""Depth-similarity expert from a monocular depth model run through ``transformers``.

The caller creates a :class:`DepthEstimator` for a local path or a Hugging Face hub id and
passes it on (``refine(..., depth=...)``); without one the expert is unavailable and the
selector chooses among the other experts.
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np

from ..sam import ImageEmbedding, LRUCache
from .appearance import similarity

log = logging.getLogger(__name__)

#: Bound of an estimator's cache of depth maps (one working-frame map is ~3 MB).
DEPTH_CACHE_MB = 32


class DepthEstimator:
    """A ``transformers`` depth-estimation pipeline, loaded on first use, with a cache of
    its depth maps by image.

    Args:
        model: local folder or hub id of a depth-estimation model (e.g. a Depth Anything
            checkpoint).
        device: ``"cpu"`` or a CUDA device string.
    """

    def __init__(self, model: str, device: str = "cpu"):
        self.model = model
        self.device = device
        self._pipe = None
        self._lock = threading.Lock()
        self._cache: LRUCache[np.ndarray] = LRUCache(DEPTH_CACHE_MB)

    def _pipeline(self):
        with self._lock:
            if self._pipe is None:
                from transformers import pipeline

                log.info("loading depth model %s", self.model)
                self._pipe = pipeline("depth-estimation", model=self.model, device=self.device)
            return self._pipe

    def depth(self, emb: ImageEmbedding) -> np.ndarray:
        """``(h, w) float32`` predicted depth of the working-frame image (cached per image)."""
        if (hit := self._cache.get(emb.key)) is not None:
            return hit
        from PIL import Image

        result = self._pipeline()(Image.fromarray(emb.image))
        raw = np.asarray(result["predicted_depth"], dtype=np.float32).squeeze()
        h, w = emb.input_size
        depth = cv2.resize(raw, (w, h), interpolation=cv2.INTER_LINEAR)
        self._cache.put(emb.key, depth, depth.nbytes)
        return depth


def depth_similarity(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Depth-similarity expert: ``(h, w) float32`` in [0, 1] from an ``(h, w)`` depth map
    and the ``(h, w) bool`` mask (working frame)."""
    return similarity(depth, mask)

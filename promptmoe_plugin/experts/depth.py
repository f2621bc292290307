"""Depth-similarity expert from a monocular depth model run through ``transformers``.

The model is configured by a local path or a Hugging Face hub id (option ``depth_model``
or the environment variable ``PROMPTMOE_DEPTH_MODEL``).  With none configured the expert
is unavailable and the selector chooses among the other experts.
"""

from __future__ import annotations

import logging
import os
import threading

import cv2
import numpy as np

from ..sam import ImageEmbedding, LRUCache
from .appearance import similarity

log = logging.getLogger(__name__)

ENV_VAR = "PROMPTMOE_DEPTH_MODEL"


class DepthEstimator:
    """A ``transformers`` depth-estimation pipeline, loaded on first use.

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
        self._cache: LRUCache[np.ndarray] = LRUCache(32)

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


_estimators: dict[str, DepthEstimator] = {}


def depth_estimator(model: str | None = None) -> DepthEstimator | None:
    """The shared estimator for ``model`` (default: ``$PROMPTMOE_DEPTH_MODEL``), or None
    when no depth model is configured."""
    model = model or os.environ.get(ENV_VAR) or None
    if model is None:
        return None
    if model not in _estimators:
        _estimators[model] = DepthEstimator(model)
    return _estimators[model]


def depth_similarity(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Depth-similarity expert: ``(h, w) float32`` in [0, 1] from an ``(h, w)`` depth map
    and the ``(h, w) bool`` mask (working frame)."""
    return similarity(depth, mask)

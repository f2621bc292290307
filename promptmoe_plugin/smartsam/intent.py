"""Intent: which candidate mask is the object the annotator means.

Every intent maps an (image, mask) pair to a unit feature vector; candidates are scored
by cosine similarity to the features of reference instances (each an image with a mask).
Reference features are computed once per (image, mask) content and cached by the intent
instance, so a caller keeps one instance (:func:`make_intent`) for as long as the cached
features should live.

* ``sam``: always available offline.  SAM's image embedding average-pooled under the mask,
  plus a Lab colour histogram and a gradient-magnitude (texture) histogram of the masked
  pixels; the three unit vectors are weighted so that the cosine is a weighted sum of the
  three cosines.
* ``dinov2``: DINOv2 patch tokens (``transformers``, a local folder or a hub id) average-
  pooled under the mask, as in the SmartSAM paper.
* ``none``: no features; SmartSAM then picks by SAM's predicted IoU (the paper's pure mode).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Callable
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..sam import LOW_RES, ImageEmbedding, LRUCache, SamEngine, image_key
from ..sam.frames import lowres_shape, mask_to_lowres, working_image_lowres

log = logging.getLogger(__name__)

INTENTS = ("none", "sam", "dinov2")
#: Hub id of the default DINOv2 model (used when no local path is given).
DEFAULT_DINOV2 = "facebook/dinov2-base"
#: Cached reference features per intent instance (a feature is at most a few KB).
REFERENCE_CACHE_MB = 16


class IntentError(ValueError):
    """An intent that cannot be built (unknown name, model not loadable)."""


class Intent(Protocol):
    """What SmartSAM needs from an intent."""

    name: str

    def reference_features(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(D,) float32`` unit feature of ``mask`` ``(H, W) bool`` (image frame) on
        ``image`` ``(H, W, 3) uint8``; cached by content."""
        ...

    def candidate_features(self, emb: ImageEmbedding, weights: np.ndarray) -> np.ndarray:
        """``(N, D) float32`` unit features of ``weights`` ``(N, lh, lw)`` float32 in
        [0, 1] (candidate masks on the :func:`~promptmoe_plugin.sam.frames.lowres_shape`
        grid of ``emb``)."""
        ...


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` of two float32 matrices, computed by torch.

    numpy's OpenBLAS threads keep spinning after a large product and slowed the SAM
    decodes that followed by ~35% on a 2-core CPU; torch reuses its own thread pool.
    Transposed views are multiplied in place (copying SAM's ``(4096, 256)`` feature grid
    took 2 ms, the product 0.2 ms).
    """
    return (_tensor(a) @ _tensor(b)).numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor sharing ``a``'s memory where torch can (non-negative strides)."""
    a = np.asarray(a, np.float32)
    if min(a.strides, default=0) < 0 or not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a)


def similarity(candidates: np.ndarray, references: np.ndarray, reduce: str = "max") -> np.ndarray:
    """Cosine similarity of ``(N, D)`` candidate features to ``(R, D)`` reference features
    (all unit vectors), reduced over the references by ``"max"`` or ``"mean"``: ``(N,)``."""
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    sims = matmul(candidates, references.T)
    return sims.max(axis=1) if reduce == "max" else sims.mean(axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _pool(weights: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Masked average pooling: ``(N, P)`` weights, ``(P, C)`` features -> ``(N, C)``."""
    total = weights.sum(axis=1, keepdims=True)
    return matmul(weights, grid) / np.maximum(total, 1e-6)


def _mask_key(mask: np.ndarray) -> str:
    return hashlib.blake2b(
        np.packbits(mask).tobytes() + str(mask.shape).encode(), digest_size=16
    ).hexdigest()


class ReferenceCache:
    """Reference features by content: key = (image hash, mask hash)."""

    def __init__(self, capacity_mb: float = REFERENCE_CACHE_MB) -> None:
        self._refs: LRUCache[np.ndarray] = LRUCache(capacity_mb)

    def get(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        compute: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """Cached ``compute(image, mask)`` for ``(H, W, 3) uint8`` image, ``(H, W) bool`` mask."""
        mask = np.asarray(mask, bool)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"reference image must be (H, W, 3) uint8, got {image.shape} {image.dtype}"
            )
        if mask.shape != image.shape[:2]:
            raise ValueError(f"reference mask is {mask.shape} but its image is {image.shape[:2]}")
        if not mask.any():
            raise ValueError("reference mask is empty")
        key = f"{image_key(image)}:{_mask_key(mask)}"
        hit = self._refs.get(key)
        if hit is None:
            hit = compute(image, mask)
            self._refs.put(key, hit, hit.nbytes)
        return hit


class NoIntent:
    """The paper's pure mode: no features (zero-length vectors)."""

    name = "none"

    def reference_features(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.zeros(0, np.float32)

    def candidate_features(self, emb: ImageEmbedding, weights: np.ndarray) -> np.ndarray:
        return np.zeros((len(weights), 0), np.float32)


# Colour / texture descriptor bins.
_L_BINS, _AB_BINS, _GRAD_BINS = 4, 6, 8


def _pixel_bins(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel colour-bin and gradient-bin indices of ``(h, w, 3) uint8`` RGB: two
    ``(h * w,) int64`` arrays (Lab joint bins; log-spaced Sobel magnitude bins)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.int64)  # all in 0..255
    colour = (
        (lab[:, 0] * _L_BINS // 256) * _AB_BINS**2
        + (lab[:, 1] * _AB_BINS // 256) * _AB_BINS
        + (lab[:, 2] * _AB_BINS // 256)
    )
    gray = lab[:, 0].reshape(rgb.shape[:2]).astype(np.float32)
    grad = np.hypot(
        cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    )
    # log-spaced edges over 0..~1000 (the Sobel magnitude range of 8-bit images)
    texture = np.clip(
        np.log1p(grad.reshape(-1)) * (_GRAD_BINS / math.log1p(1024)), 0, _GRAD_BINS - 1
    )
    return colour, texture.astype(np.int64)


def _histograms(weights: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """``(N, P)`` weights, ``(P,)`` bin index -> ``(N, n_bins)`` Hellinger-mapped unit
    histograms (sqrt of the normalised histogram, so the cosine is the Bhattacharyya
    coefficient)."""
    hist = np.stack([np.bincount(bins, weights=w, minlength=n_bins) for w in weights])
    hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1e-6)
    return _unit(np.sqrt(hist))


class SamIntent:
    """Pooled SAM embedding + colour + texture descriptor (offline, no extra model).

    Args:
        engine: the SAM engine (reference images are embedded through its cache).
        weights: squared weights of the (SAM, colour, texture) parts; the cosine of two
            features is ``sum_k weights[k] * cos_k``.  The SAM part separates objects best
            (docs/benchmarks.md: AUC of good vs bad candidates 0.98 DAVIS / 0.88 GrabCut,
            colour 0.91 / 0.60, texture 0.93 / 0.56), hence its large weight.
    """

    name = "sam"

    def __init__(self, engine: SamEngine, weights: tuple[float, float, float] = (0.8, 0.15, 0.05)):
        self.engine = engine
        self._refs = ReferenceCache()
        w = np.asarray(weights, np.float64)
        if w.shape != (3,) or (w < 0).any() or w.sum() <= 0:
            raise IntentError(f"weights must be 3 non-negative numbers, got {weights!r}")
        self.part_scale = np.sqrt(w / w.sum()).astype(np.float32)

    @staticmethod
    def parts(dim: int) -> tuple[slice, slice, slice]:
        """Where the (SAM embedding, colour, texture) parts lie in a feature of ``dim``
        values; the cosine of two features is the sum of the parts' dot products."""
        colour, texture = _L_BINS * _AB_BINS**2, _GRAD_BINS
        sam = dim - colour - texture
        return slice(0, sam), slice(sam, sam + colour), slice(sam + colour, dim)

    def reference_features(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._refs.get(image, mask, self._compute_reference)

    def _compute_reference(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        emb = self.engine.embed(image)
        return self.candidate_features(emb, mask_to_lowres(emb, mask)[None])[0]

    def candidate_features(self, emb: ImageEmbedding, weights: np.ndarray) -> np.ndarray:
        n = len(weights)
        lh, lw = lowres_shape(emb)
        if weights.shape[1:] != (lh, lw):
            raise ValueError(f"weights must be (N, {lh}, {lw}), got {weights.shape}")
        # SAM embedding: 64x64 over the padded 1024 frame = 4x4 blocks of the low-res grid.
        padded = np.zeros((n, LOW_RES, LOW_RES), np.float32)
        padded[:, :lh, :lw] = weights
        coarse = padded.reshape(n, 64, 4, 64, 4).mean(axis=(2, 4)).reshape(n, -1)
        grid = (
            emb.features[0].float().cpu().numpy().reshape(emb.features.shape[1], -1).T
        )  # (4096, 256)
        sam = _unit(_pool(coarse, grid))
        colour_bins, texture_bins = _pixel_bins(working_image_lowres(emb))
        flat = weights.reshape(n, -1).astype(np.float32)
        colour = _histograms(flat, colour_bins, _L_BINS * _AB_BINS**2)
        texture = _histograms(flat, texture_bins, _GRAD_BINS)
        s = self.part_scale
        return np.concatenate([s[0] * sam, s[1] * colour, s[2] * texture], axis=1)


class Dinov2Intent:
    """DINOv2 patch tokens average-pooled under the mask (``transformers``).

    Args:
        model: a local folder saved with ``save_pretrained`` or a hub id (default
            DINOv2-B); ``HF_HUB_OFFLINE=1`` is honoured by ``transformers``.
        long_side: the image's long side fed to the model, rounded to whole patches.
        device: torch device (default: the SAM engine's).
    """

    name = "dinov2"
    MEAN = np.array([0.485, 0.456, 0.406], np.float32)
    STD = np.array([0.229, 0.224, 0.225], np.float32)

    def __init__(
        self, model: str | None = None, long_side: int = 448, device: str | torch.device = "cpu"
    ):
        from transformers import AutoModel

        self.model_id = model or DEFAULT_DINOV2
        try:
            self.model = AutoModel.from_pretrained(self.model_id).eval().to(device)
        except (OSError, ValueError) as exc:
            raise IntentError(
                f"cannot load DINOv2 model {self.model_id!r} ({exc}); pass a local folder "
                "(--dinov2-model) or use the offline intent 'sam'"
            ) from exc
        cfg = self.model.config
        self.patch = int(cfg.patch_size)
        self.skip = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)  # CLS (+ registers)
        self.long_side = max(self.patch, long_side // self.patch * self.patch)
        self.device = device
        self._grids: LRUCache[np.ndarray] = LRUCache(64)
        self._refs = ReferenceCache()
        self._lock = threading.Lock()

    @torch.inference_mode()
    def _grid(self, image: np.ndarray) -> np.ndarray:
        """Patch tokens of ``(h, w, 3) uint8`` RGB: ``(gh, gw, C) float32``, cached."""
        key = image_key(image)
        hit = self._grids.get(key)
        if hit is not None:
            return hit
        h, w = image.shape[:2]
        scale = self.long_side / max(h, w)
        gh, gw = max(1, round(h * scale / self.patch)), max(1, round(w * scale / self.patch))
        resized = cv2.resize(
            image, (gw * self.patch, gh * self.patch), interpolation=cv2.INTER_AREA
        )
        x = (resized.astype(np.float32) / 255 - self.MEAN) / self.STD
        pixel_values = torch.from_numpy(x.transpose(2, 0, 1)[None].copy()).to(self.device)
        with self._lock:
            tokens = self.model(pixel_values=pixel_values).last_hidden_state[0, self.skip :]
        grid = tokens.float().cpu().numpy().reshape(gh, gw, -1)
        self._grids.put(key, grid, grid.nbytes)
        return grid

    def _features(self, image: np.ndarray, weights: np.ndarray) -> np.ndarray:
        grid = self._grid(image)
        gh, gw, c = grid.shape
        t = torch.from_numpy(np.ascontiguousarray(weights, np.float32))[:, None]
        small = F.adaptive_avg_pool2d(t, (gh, gw))[:, 0].reshape(len(weights), -1).numpy()
        return _unit(_pool(small, grid.reshape(-1, c)))

    def reference_features(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._refs.get(image, mask, self._compute_reference)

    def _compute_reference(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._features(image, mask[None].astype(np.float32))[0]

    def candidate_features(self, emb: ImageEmbedding, weights: np.ndarray) -> np.ndarray:
        # The low-res grid covers the working image; pool on the working image itself.
        return self._features(emb.image, weights)


def make_intent(name: str, engine: SamEngine, model: str | None = None) -> Intent:
    """A new intent ``name`` (``none``, ``sam`` or ``dinov2``) for ``engine``; ``model`` is
    the DINOv2 folder or hub id (default :data:`DEFAULT_DINOV2`).

    Each call builds a new instance (a DINOv2 model is loaded again): keep it to keep its
    cache of reference features.

    Raises:
        IntentError: unknown name, or a DINOv2 model that cannot be loaded.
    """
    if name == "none":
        return NoIntent()
    if name == "sam":
        return SamIntent(engine)
    if name == "dinov2":
        return Dinov2Intent(model, device=engine.device)
    raise IntentError(f"unknown intent {name!r}; choose one of {', '.join(INTENTS)}")

"""Mapping between the image frame and SAM's low-res frame, where SmartSAM works.

SmartSAM keeps every candidate as ``(256, 256)`` low-res logits; only the working image's
part of that grid matters: its top-left ``(lh, lw) = ceil(h / 4), ceil(w / 4)`` corner,
``(h, w)`` being the working frame.  Candidates are compared, clicked on and pooled there,
and only the chosen one is upscaled to the image frame.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..sam import LOW_RES, ImageEmbedding

#: Working-frame pixels per low-res pixel.
STRIDE = 4


def lowres_shape(emb: ImageEmbedding) -> tuple[int, int]:
    """``(lh, lw)`` of the working image inside the ``256 x 256`` low-res grid."""
    h, w = emb.input_size
    return min(LOW_RES, math.ceil(h / STRIDE)), min(LOW_RES, math.ceil(w / STRIDE))


def image_to_lowres(emb: ImageEmbedding, xy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` float (x, y) image pixels -> ``(N, 2)`` float low-res pixel coordinates."""
    return np.asarray(xy, np.float64) * (emb.scale / STRIDE)


def lowres_to_image(emb: ImageEmbedding, xy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` (col, row) low-res pixel indices -> ``(N, 2)`` float (x, y) image pixels
    at the pixel centres, clipped to the image."""
    out = (np.asarray(xy, np.float64) + 0.5) * (STRIDE / emb.scale)
    H, W = emb.original_size
    return np.clip(out, 0, [W - 1, H - 1])


def crop_logits(emb: ImageEmbedding, logits: np.ndarray) -> np.ndarray:
    """``(..., 256, 256)`` low-res logits -> ``(..., lh, lw)`` over the working image only."""
    lh, lw = lowres_shape(emb)
    return logits[..., :lh, :lw]


def pixel_of(emb: ImageEmbedding, x: float, y: float) -> tuple[int, int]:
    """Low-res ``(row, col)`` of image pixel ``(x, y)``, clipped into the grid."""
    lh, lw = lowres_shape(emb)
    cx, cy = image_to_lowres(emb, np.array([[x, y]]))[0]
    return min(lh - 1, max(0, int(cy))), min(lw - 1, max(0, int(cx)))


def mask_to_lowres(emb: ImageEmbedding, mask: np.ndarray) -> np.ndarray:
    """``(H, W) bool`` image-frame mask -> ``(lh, lw) float32`` coverage in [0, 1] on the
    low-res grid (area averaging), for pooling features under a reference mask."""
    H, W = emb.original_size
    if mask.shape != (H, W):
        raise ValueError(f"mask is {mask.shape} but the image is {(H, W)}")
    lh, lw = lowres_shape(emb)
    return cv2.resize(mask.astype(np.float32), (lw, lh), interpolation=cv2.INTER_AREA)


def working_lowres_image(emb: ImageEmbedding) -> np.ndarray:
    """The working image at low-res: ``(lh, lw, 3) uint8`` RGB (area averaging)."""
    lh, lw = lowres_shape(emb)
    return cv2.resize(emb.image, (lw, lh), interpolation=cv2.INTER_AREA)

"""Appearance experts: colour, brightness, texture and contrast similarity to the mask.

Every function takes the image in SAM's *working* frame, ``(h, w, 3) uint8`` RGB, and the
coarse mask in the same frame, ``(h, w) bool``, and returns an ``(h, w) float32`` map in
``[0, 1]``: 1 where the pixel's feature equals the mean feature over the mask.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Distance normaliser of texture and contrast: this percentile of the distances inside
#: the mask (their maximum is a single noisy pixel); colour and brightness use the maximum.
ROBUST_PERCENTILE = 98.0
#: Distances below this (feature units) count as equal: a mask of uniform feature.
FLAT = 1e-3


def luminance(image: np.ndarray) -> np.ndarray:
    """``(h, w) float32`` luma ``0.299 R + 0.587 G + 0.114 B`` in [0, 255]."""
    rgb = image.astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def similarity(
    feature: np.ndarray, mask: np.ndarray, percentile: float | None = None
) -> np.ndarray:
    """``1 - |f - mean_mask(f)| / scale`` clipped to [0, 1].

    Args:
        feature: ``(h, w)`` or ``(h, w, c)`` float feature; the distance is Euclidean
            over the channels.
        mask: ``(h, w) bool``, non-empty.
        percentile: None to normalise by the largest distance inside the mask (the
            paper's Eq. 13), else by this percentile of the distances inside the mask.

    Returns:
        ``(h, w) float32`` in [0, 1].
    """
    if not mask.any():
        raise ValueError("similarity needs a non-empty mask")
    f = feature.astype(np.float32)
    if f.ndim == 2:
        f = f[..., None]
    mean = f[mask].mean(axis=0)
    dist = np.sqrt(((f - mean) ** 2).sum(axis=-1))
    inside = dist[mask]
    scale = float(inside.max() if percentile is None else np.percentile(inside, percentile))
    if scale <= FLAT:
        return (dist <= FLAT).astype(np.float32)
    return np.clip(1.0 - dist / scale, 0.0, 1.0).astype(np.float32)


def color_similarity(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Similarity of CIE Lab colour (Euclidean) to the mask's mean colour."""
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    return similarity(lab, mask)


def brightness_similarity(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Similarity of luminance to the mask's mean luminance."""
    return similarity(luminance(image), mask)


def texture_similarity(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Similarity of the Sobel gradient magnitude of luminance to its mean over the mask."""
    y = luminance(image)
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    return similarity(np.sqrt(gx * gx + gy * gy), mask, ROBUST_PERCENTILE)


def contrast_similarity(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Similarity of local contrast ``|Y - mean7x7(Y)|`` to its mean over the mask."""
    y = luminance(image)
    local = cv2.blur(y, (7, 7), borderType=cv2.BORDER_REFLECT)
    return similarity(np.abs(y - local), mask, ROBUST_PERCENTILE)

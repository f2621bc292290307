"""Intersection over union of bool masks, the one IoU every layer uses."""

from __future__ import annotations

import numpy as np


def mask_iou(
    a: np.ndarray, b: np.ndarray, *, ignore: np.ndarray | None = None, empty: float = 1.0
) -> np.ndarray | float:
    """IoU of bool masks in one frame, broadcast over leading dimensions.

    Args:
        a: ``(..., H, W) bool``.
        b: ``(H, W) bool`` or ``(..., H, W) bool`` (broadcast against ``a``).
        ignore: ``(H, W) bool`` pixels left out of both masks, or None.
        empty: the IoU where both masks are empty (after ``ignore``): 1.0 reads two
            empty masks as agreeing, 0.0 as no overlap.

    Returns:
        ``float`` for two ``(H, W)`` masks, else a ``(...)`` float64 array in [0, 1]
        (or ``empty``).

    Raises:
        ValueError: a mask that is not bool or has other ``(H, W)`` than ``a``.
    """
    for name, m in (("a", a), ("b", b), ("ignore", ignore)):
        if m is None:
            continue
        if m.dtype != bool or m.ndim < 2:
            raise ValueError(f"{name} must be an (..., H, W) bool mask, got {m.shape} {m.dtype}")
        if m.shape[-2:] != a.shape[-2:]:
            raise ValueError(f"mask shapes differ: a {a.shape} vs {name} {m.shape}")
    if ignore is not None:
        if ignore.ndim != 2:
            raise ValueError(f"ignore must be an (H, W) bool mask, got {ignore.shape}")
        a, b = a & ~ignore, b & ~ignore
    if a.ndim == b.ndim == 2:  # the common case; a flat count is several times faster
        union = np.count_nonzero(a | b)
        return np.count_nonzero(a & b) / union if union else float(empty)
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), empty)

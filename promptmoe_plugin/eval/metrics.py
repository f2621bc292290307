"""Mask quality metrics on ``(H, W) bool`` masks in the image frame.

Every metric takes an optional ``ignore`` mask: those pixels are removed from both masks
before counting.  Convention for an empty union: 1.0 (both masks empty agree perfectly).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..masks import mask_iou

#: Boundary width as a fraction of the image diagonal (both Boundary IoU flavours).
BOUNDARY_RATIO = 0.02


def _check(a: np.ndarray, b: np.ndarray, ignore: np.ndarray | None) -> None:
    for name, m in (("a", a), ("b", b), ("ignore", ignore)):
        if m is None:
            continue
        if m.dtype != bool or m.ndim != 2:
            raise ValueError(f"{name} must be an (H, W) bool mask, got {m.shape} {m.dtype}")
        if m.shape != a.shape:
            raise ValueError(f"mask shapes differ: {a.shape} vs {name} {m.shape}")


def _iou(a: np.ndarray, b: np.ndarray, ignore: np.ndarray | None) -> float:
    """:func:`~promptmoe_plugin.masks.mask_iou` of checked masks, 1.0 when both are empty."""
    return float(mask_iou(a, b, ignore=ignore, empty=1.0))


def iou(a: np.ndarray, b: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two ``(H, W) bool`` masks, ``ignore`` pixels excluded."""
    _check(a, b, ignore)
    return _iou(a, b, ignore)


def boundary_width(
    shape: tuple[int, int], ratio: float = BOUNDARY_RATIO, rounding: str = "floor"
) -> int:
    """Band half-width ``d`` in pixels: ``ratio`` of the diagonal, at least 1.

    PromptMoE truncates (``int``); Cheng et al. round to the nearest integer.
    """
    diag = float(np.hypot(*shape))
    d = int(round(ratio * diag)) if rounding == "round" else int(ratio * diag)
    return max(1, d)


def _square(d: int) -> np.ndarray:
    return np.ones((2 * d + 1, 2 * d + 1), np.uint8)


def promptmoe_band(mask: np.ndarray, d: int) -> np.ndarray:
    """PromptMoE's two-sided boundary band of ``mask`` ``(H, W) bool``.

    ``dilate(mask) XOR erode(mask)`` with a ``(2d+1)^2`` square.  The image border is not a
    contour (OpenCV's default border leaves edge pixels unchanged by both operations).
    """
    m = mask.astype(np.uint8)
    k = _square(d)
    return (cv2.dilate(m, k) ^ cv2.erode(m, k)).astype(bool)


def inner_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Cheng et al.'s boundary: pixels of ``mask`` within ``d`` (chessboard) of its contour.

    The image border counts as contour (the mask is zero-padded by one pixel).
    """
    m = np.pad(mask.astype(np.uint8), 1)
    eroded = cv2.erode(m, _square(d))[1:-1, 1:-1]
    return mask & ~eroded.astype(bool)


def boundary_iou(
    a: np.ndarray,
    b: np.ndarray,
    ignore: np.ndarray | None = None,
    kind: str = "promptmoe",
    ratio: float = BOUNDARY_RATIO,
) -> float:
    """Boundary IoU of two ``(H, W) bool`` masks, ``ignore`` pixels excluded.

    Args:
        kind: ``"promptmoe"``: IoU of the two-sided bands :func:`promptmoe_band` with
            ``d = max(1, int(ratio * diagonal))`` (as PromptMoE computes it);
            ``"cheng"``: the standard Boundary IoU of Cheng et al. (CVPR 2021), IoU of the
            inner bands :func:`inner_boundary` with ``d = max(1, round(ratio * diagonal))``.
    """
    _check(a, b, ignore)
    if kind == "promptmoe":
        d = boundary_width(a.shape, ratio, "floor")
        return _iou(promptmoe_band(a, d), promptmoe_band(b, d), ignore)
    if kind == "cheng":
        d = boundary_width(a.shape, ratio, "round")
        return _iou(inner_boundary(a, d), inner_boundary(b, d), ignore)
    raise ValueError(f"unknown boundary IoU kind {kind!r}: use 'promptmoe' or 'cheng'")

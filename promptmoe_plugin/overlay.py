"""Drawing masks, contours and prompts over an image, for people to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

#: RGB colours: result fill, ground-truth contour, input contour, positive, negative, box.
FILL = (30, 144, 255)
GT = (50, 220, 50)
INPUT = (255, 200, 0)
POSITIVE = (0, 230, 0)
NEGATIVE = (255, 40, 40)
BOX = (255, 255, 255)


def contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """``(H, W) bool`` band of pixels of ``mask`` within ``width`` px of its edge."""
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def draw_overlay(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    gt: np.ndarray | None = None,
    coarse: np.ndarray | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Overlay of a result on ``image`` ``(H, W, 3) uint8``; returns ``(H, W, 3) uint8``.

    All inputs are in the image frame: ``mask``, ``gt``, ``coarse`` ``(H, W) bool`` (filled,
    green contour, yellow contour), ``points`` ``(N, 2)`` (x, y) with ``labels`` 1/0 (green /
    red dots), ``box`` ``(4,)`` x0, y0, x1, y1 (white rectangle).
    """
    out = image.astype(np.float32)
    if mask is not None:
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(FILL, np.float32)
    width = max(1, round(max(image.shape[:2]) / 400))
    for m, colour in ((coarse, INPUT), (gt, GT)):
        if m is not None:
            out[contour(m, width)] = colour
    if mask is not None:
        out[contour(mask, width)] = FILL
    pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    r = 2 + 2 * width
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=BOX, width=width)
    if points is not None:
        labels = np.ones(len(points), int) if labels is None else labels
        for (x, y), label in zip(np.asarray(points, float), labels, strict=True):
            colour = POSITIVE if label == 1 else NEGATIVE
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0))
    return np.asarray(pil)

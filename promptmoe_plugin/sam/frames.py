"""SAM's geometry: the image, working and low-res frames and the maps between them.

* **image** frame: pixels of the original image, ``(H, W)``; points are ``(x, y)``.
* **working** frame: the image resized so its long side is :data:`IMAGE_SIZE` (SAM's
  input before padding), ``(h, w)``; the padded input is ``IMAGE_SIZE x IMAGE_SIZE``
  with the working image in its top-left corner.
* **low-res** frame: SAM's ``LOW_RES x LOW_RES`` mask logits over the *padded* input,
  :data:`STRIDE` working pixels per low-res pixel; the working image covers its top-left
  corner, ``h / STRIDE`` rows by ``w / STRIDE`` columns.

How many low-res rows and columns belong to the working image when ``h`` or ``w`` is not
a multiple of :data:`STRIDE` has two answers here, both in use:
:func:`lowres_shape` counts every low-res pixel the working image touches (``ceil``), and
:func:`lowres_shape_rounded` rounds (``round``, half to even), dropping a last row or
column covered by less than half.  They differ for some sizes (e.g. ``h = 741``: 186 vs
185 rows).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .embedding import ImageEmbedding

#: Side of SAM's padded input (the working frame's long side).
IMAGE_SIZE = 1024
#: Side of SAM's low-res mask logits.
LOW_RES = 256
#: Working-frame pixels per low-res pixel.
STRIDE = IMAGE_SIZE // LOW_RES


def working_shape(original_size: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of the working frame of an ``(H, W)`` image: long side
    :data:`IMAGE_SIZE`, the other side scaled and rounded half up (SAM's
    ``ResizeLongestSide``)."""
    H, W = original_size
    scale = IMAGE_SIZE * 1.0 / max(H, W)
    return int(H * scale + 0.5), int(W * scale + 0.5)


def mask_to_working(emb: ImageEmbedding, mask: np.ndarray) -> np.ndarray:
    """Resize an image-frame ``(H, W) bool`` mask to the working frame ``(h, w) bool``
    (area average when shrinking, so thin parts survive as long as they cover half a pixel)."""
    if mask.shape != tuple(emb.original_size):
        raise ValueError(f"mask is {mask.shape} but the image is {tuple(emb.original_size)} (H, W)")
    h, w = emb.input_size
    if mask.shape == (h, w):
        return mask.astype(bool, copy=True)
    shrink = h < mask.shape[0]
    resized = cv2.resize(
        mask.astype(np.float32),
        (w, h),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    )
    working = resized >= 0.5
    return working if working.any() else resized > 0


def working_to_image(emb: ImageEmbedding, xy: np.ndarray) -> np.ndarray:
    """Map working-frame coordinates ``(..., 2k)`` (x, y pairs, e.g. points or a box) to
    image pixels, ``float64``; each axis by its own ratio ``W / w``, ``H / h``."""
    h, w = emb.input_size
    H, W = emb.original_size
    xy = np.asarray(xy, np.float64)
    return xy * np.tile([W / w, H / h], xy.shape[-1] // 2)


def plane_to_lowres(plane: np.ndarray, pad_value: float) -> np.ndarray:
    """A working-frame ``(h, w)`` float plane in the low-res frame: padded with
    ``pad_value`` to ``IMAGE_SIZE x IMAGE_SIZE`` and resized (bilinear) to
    ``(LOW_RES, LOW_RES) float32``."""
    h, w = plane.shape
    padded = np.full((IMAGE_SIZE, IMAGE_SIZE), pad_value, np.float32)
    padded[:h, :w] = plane
    return cv2.resize(padded, (LOW_RES, LOW_RES), interpolation=cv2.INTER_LINEAR)


def lowres_shape(emb: ImageEmbedding) -> tuple[int, int]:
    """``(lh, lw)``: the low-res pixels the working image touches, ``ceil(h / STRIDE)``
    by ``ceil(w / STRIDE)`` (SmartSAM's candidates live there)."""
    h, w = emb.input_size
    return min(LOW_RES, math.ceil(h / STRIDE)), min(LOW_RES, math.ceil(w / STRIDE))


def lowres_shape_rounded(emb: ImageEmbedding) -> tuple[int, int]:
    """``(lh, lw)``: ``round(h / STRIDE)`` by ``round(w / STRIDE)`` (Python's round, half
    to even), at least 1 (the SAM-everything regions are read there)."""
    h, w = emb.input_size
    return max(1, round(h * LOW_RES / IMAGE_SIZE)), max(1, round(w * LOW_RES / IMAGE_SIZE))


def crop_lowres(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(..., LOW_RES, LOW_RES)`` low-res logits -> their top-left ``(..., lh, lw)``
    corner, ``shape`` from :func:`lowres_shape` or :func:`lowres_shape_rounded` (a view)."""
    lh, lw = shape
    return logits[..., :lh, :lw]


def image_to_lowres(emb: ImageEmbedding, xy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` float (x, y) image pixels -> ``(N, 2) float64`` low-res coordinates
    (one ratio for both axes, :attr:`ImageEmbedding.scale`)."""
    return np.asarray(xy, np.float64) * (emb.scale / STRIDE)


def lowres_to_image(emb: ImageEmbedding, xy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` (col, row) low-res pixel indices -> ``(N, 2) float64`` (x, y) image
    pixels at the pixel centres, clipped to the image."""
    out = (np.asarray(xy, np.float64) + 0.5) * (STRIDE / emb.scale)
    H, W = emb.original_size
    return np.clip(out, 0, [W - 1, H - 1])


def lowres_pixel(emb: ImageEmbedding, x: float, y: float) -> tuple[int, int]:
    """Low-res ``(row, col)`` of image pixel ``(x, y)``, clipped into :func:`lowres_shape`."""
    lh, lw = lowres_shape(emb)
    cx, cy = image_to_lowres(emb, np.array([[x, y]]))[0]
    return min(lh - 1, max(0, int(cy))), min(lw - 1, max(0, int(cx)))


def mask_to_lowres(emb: ImageEmbedding, mask: np.ndarray) -> np.ndarray:
    """``(H, W) bool`` image-frame mask -> ``(lh, lw) float32`` coverage in [0, 1] on the
    :func:`lowres_shape` grid (area averaging)."""
    H, W = emb.original_size
    if mask.shape != (H, W):
        raise ValueError(f"mask is {mask.shape} but the image is {(H, W)}")
    lh, lw = lowres_shape(emb)
    return cv2.resize(mask.astype(np.float32), (lw, lh), interpolation=cv2.INTER_AREA)


def working_image_lowres(emb: ImageEmbedding) -> np.ndarray:
    """The working image on the :func:`lowres_shape` grid: ``(lh, lw, 3) uint8`` RGB
    (area averaging)."""
    lh, lw = lowres_shape(emb)
    return cv2.resize(emb.image, (lw, lh), interpolation=cv2.INTER_AREA)

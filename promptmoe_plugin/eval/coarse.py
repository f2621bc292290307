"""Coarse-mask generators: realistic failure modes of a first segmentation.

Every generator maps a ground-truth ``(H, W) bool`` mask (image frame) to a coarse
``(H, W) bool`` mask in the same frame and is deterministic for a given seed.

* ``lowres``: GT area-downsampled by 16, bilinear upsampling, threshold 0.5, as a blobby
  semantic-segmentation output (no randomness).
* ``morph``: a global dilation or erosion, smooth boundary jitter, holes, spurious blobs
  and a missing part, all scaled by the object's size.
* ``grabcut``: OpenCV GrabCut (5 iterations) from the GT box scaled by 1.05 about its
  centre (clipped to the image; a box that would cover the whole image is inset by 2% of
  the short side, so GrabCut has background pixels to learn from): a real classical
  segmenter.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

KINDS = ("lowres", "morph", "grabcut")
LOWRES_FACTOR = 16
GRABCUT_ITERATIONS = 5
GRABCUT_BOX_SCALE = 1.05
#: Share of the short side left outside a GrabCut box that would cover the whole image.
GRABCUT_INSET = 0.02


def sample_seed(seed: int, name: str) -> int:
    """A per-image seed from a run seed and the image name (stable under ``--limit``)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def lowres(gt: np.ndarray, factor: int = LOWRES_FACTOR) -> np.ndarray:
    """``gt`` ``(H, W) bool`` area-downsampled by ``factor``, bilinear up, threshold 0.5."""
    h, w = gt.shape
    small = cv2.resize(
        gt.astype(np.float32),
        (max(1, round(w / factor)), max(1, round(h / factor))),
        interpolation=cv2.INTER_AREA,
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Float32 ``(H, W)``: distance to the contour, positive inside ``mask``."""
    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return inside - outside


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Float32 ``(H, W)`` noise with unit-ish amplitude varying over ``cells`` per side."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _ellipse(
    canvas: np.ndarray, rng: np.random.Generator, center: np.ndarray, radius: float, value: int
) -> None:
    axes = (
        max(1, int(radius * rng.uniform(0.6, 1.0))),
        max(1, int(radius * rng.uniform(0.6, 1.0))),
    )
    cv2.ellipse(
        canvas,
        (int(center[1]), int(center[0])),
        axes,
        float(rng.uniform(0, 180)),
        0,
        360,
        value,
        -1,
    )


def morph(gt: np.ndarray, seed: int) -> np.ndarray:
    """``gt`` ``(H, W) bool`` with object-scaled morphological damage (see module doc).

    Steps (sizes relative to ``r = sqrt(area)``): signed-distance offset of +-(2-6)% r plus
    smooth jitter of 4% r; 1-2 holes and 1-2 spurious blobs of 5-12% r; one missing part,
    a disk of 20-35% r centred on the contour.  An empty GT gives an empty mask.
    """
    rng = np.random.default_rng(seed)
    area = int(np.count_nonzero(gt))
    if area == 0:
        return np.zeros_like(gt)
    r = float(np.sqrt(area))
    offset = rng.choice((-1.0, 1.0)) * rng.uniform(0.02, 0.06) * r
    jitter = 0.04 * r * _smooth_noise(rng, gt.shape, cells=int(rng.integers(6, 14)))
    out = (_signed_distance(gt) + offset + jitter > 0).astype(np.uint8)
    inside = np.argwhere(gt)
    ys, xs = inside[:, 0], inside[:, 1]
    for _ in range(int(rng.integers(1, 3))):
        _ellipse(out, rng, inside[rng.integers(len(inside))], rng.uniform(0.05, 0.12) * r, 0)
    box_lo = np.array([ys.min(), xs.min()]) - 0.2 * r
    box_hi = np.array([ys.max(), xs.max()]) + 0.2 * r
    for _ in range(int(rng.integers(1, 3))):
        _ellipse(out, rng, rng.uniform(box_lo, box_hi), rng.uniform(0.05, 0.12) * r, 1)
    before_cut = out.copy()
    contour = np.argwhere(
        gt & ~cv2.erode(gt.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    )
    cv2.circle(
        out,
        tuple(int(v) for v in contour[rng.integers(len(contour))][::-1]),
        int(rng.uniform(0.2, 0.35) * r),
        0,
        -1,
    )
    if not out.any():
        out = before_cut
    return out.astype(bool)


def grabcut(gt: np.ndarray, image: np.ndarray, seed: int) -> np.ndarray:
    """OpenCV GrabCut of ``image`` ``(H, W, 3) uint8`` RGB from the GT box (see module doc).

    OpenCV's global RNG (GMM initialisation) is seeded with ``seed``.  An empty GT gives an
    empty mask.
    """
    if not gt.any():
        return np.zeros_like(gt)
    h, w = gt.shape
    ys, xs = np.nonzero(gt)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    bh, bw = (
        (ys.max() - ys.min() + 1) * GRABCUT_BOX_SCALE,
        (xs.max() - xs.min() + 1) * GRABCUT_BOX_SCALE,
    )
    x0, y0 = max(0, int(cx - bw / 2)), max(0, int(cy - bh / 2))
    x1, y1 = min(w, int(np.ceil(cx + bw / 2))), min(h, int(np.ceil(cy + bh / 2)))
    if (x0, y0, x1, y1) == (0, 0, w, h):
        # GrabCut learns the background from the pixels outside the box: keep a border.
        inset = max(1, round(GRABCUT_INSET * min(h, w)))
        x0, y0, x1, y1 = inset, inset, w - inset, h - inset
    state = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(int(seed) % 2**31)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    cv2.grabCut(
        bgr, state, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT
    )
    return (state == cv2.GC_FGD) | (state == cv2.GC_PR_FGD)


def make_coarse(gt: np.ndarray, image: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Coarse ``(H, W) bool`` mask of ``kind`` in ``KINDS`` from ``gt`` ``(H, W) bool``.

    ``image`` ``(H, W, 3) uint8`` RGB is used by ``grabcut`` only.
    """
    if gt.dtype != bool or gt.ndim != 2:
        raise ValueError(f"gt must be an (H, W) bool mask, got {gt.shape} {gt.dtype}")
    if image.shape[:2] != gt.shape or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            f"image must be (H, W, 3) uint8 matching gt {gt.shape}, got {image.shape} {image.dtype}"
        )
    if kind == "lowres":
        return lowres(gt)
    if kind == "morph":
        return morph(gt, seed)
    if kind == "grabcut":
        return grabcut(gt, image, seed)
    raise ValueError(f"unknown coarse kind {kind!r}: use one of {', '.join(KINDS)}")


def try_coarse(
    gt: np.ndarray, image: np.ndarray, kind: str, seed: int
) -> tuple[np.ndarray | None, str]:
    """The coarse mask of ``kind`` (``(H, W) bool``, image frame), or None and the reason
    when it cannot be made or is empty (e.g. a small object gone at 16x downsampling):
    such a sample is skipped, never the whole run."""
    try:
        initial = make_coarse(gt, image, kind, seed)
    except cv2.error as exc:
        return None, f"the {kind} coarse mask failed: {str(exc).strip().splitlines()[-1]}"
    if not initial.any():
        return None, f"the {kind} coarse mask is empty"
    return initial, ""

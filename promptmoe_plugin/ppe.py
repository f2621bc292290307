"""Prompt construction: the Prompt-Placement Explorer (PPE) and the other prompt parts.

Everything here works on masks in SAM's *working* frame ``(h, w)`` (long side 1024):
points and boxes come out in working-frame pixels, ``(x, y)``;
:func:`~promptmoe_plugin.sam.frames.working_to_image` maps them to image pixels for
:class:`~promptmoe_plugin.sam.Prompt`.  The mask prompt comes out in SAM's ``256 x 256``
low-res padded frame.
"""

from __future__ import annotations

import math

import numpy as np

from .experts.geometry import inner_distance, tight_box
from .sam import IMAGE_SIZE, ImageEmbedding, Prompt
from .sam.frames import plane_to_lowres, working_to_image

#: Mask-prompt shape (gamma) and magnitude (strength) of SAMRefiner's Gaussian prompt.
GAMMA = 4.0
STRENGTH = 30.0
#: Adaptive-radius distances use at most this many mask pixels (a regular subsample).
MAX_RADIUS_SAMPLES = 200_000


def place_points(
    saliency: np.ndarray,
    mask: np.ndarray,
    k: int = 5,
    lam: float = 0.05,
    radius: float | None = None,
    floor: float = 0.0,
    first: np.ndarray | None = None,
) -> np.ndarray:
    """PPE: up to ``k`` positive points at saliency peaks, spread by an adaptive radius.

    Each step takes the most salient remaining mask pixel, then suppresses the disk
    whose radius is the distance to its ``ceil(lam * |mask|)``-th nearest mask pixel, so
    each point removes about the same share of the mask whatever the local shape.

    Args:
        saliency: ``(h, w) float32`` in [0, 1].
        mask: ``(h, w) bool`` current mask, same frame.
        k: maximum number of points.
        lam: suppressed share of the mask per point (0: no suppression).
        radius: a fixed suppression radius in pixels instead of the adaptive one.
        floor: only pixels whose saliency reaches ``floor`` times the best in the mask are
            eligible (0: all mask pixels).
        first: ``(m, 2)`` (x, y) mask pixels placed before the saliency peaks (they count
            towards ``k`` and suppress their disks like the others).

    Returns:
        ``(n, 2) float64`` (x, y) points inside the mask, ``1 <= n <= k`` (0 when the
        mask has no salient pixel and no ``first`` point).
    """
    if k < 1 or not 0 <= lam < 1:
        raise ValueError(f"need k >= 1 and 0 <= lam < 1, got k={k}, lam={lam}")
    avail = np.where(mask, saliency, 0).astype(np.float32)
    if floor > 0:
        avail[avail < floor * float(avail.max())] = 0
    ys, xs = np.nonzero(mask)
    step = max(1, math.ceil(len(ys) / MAX_RADIUS_SAMPLES))
    sy, sx = ys[::step].astype(np.float32), xs[::step].astype(np.float32)
    nearest = max(1, math.ceil(len(sy) * lam))
    h, w = mask.shape
    queue = [] if first is None else [(int(x), int(y)) for x, y in np.asarray(first)]
    points = []
    for _ in range(k):
        if queue:
            px, py = queue.pop(0)
        else:
            idx = int(np.argmax(avail))
            if avail.flat[idx] <= 0:
                break
            py, px = divmod(idx, w)
        points.append((px, py))
        if radius is not None:
            rad = float(radius)
        elif lam > 0:
            d2 = (sx - px) ** 2 + (sy - py) ** 2
            rad = math.sqrt(float(np.partition(d2, nearest - 1)[nearest - 1]))
        else:
            rad = 0.0
        r = int(math.ceil(rad))
        y0, y1, x0, x1 = max(0, py - r), min(h, py + r + 1), max(0, px - r), min(w, px + r + 1)
        gy, gx = np.ogrid[y0:y1, x0:x1]
        avail[y0:y1, x0:x1][(gx - px) ** 2 + (gy - py) ** 2 <= rad * rad] = 0
        avail[py, px] = 0
    return np.array(points, np.float64).reshape(-1, 2)


def negative_point(mask: np.ndarray) -> np.ndarray | None:
    """The background pixel inside the mask's tight box farthest from the mask, ``(2,)``
    (x, y), or None when the mask fills its box.  ``mask`` ``(h, w) bool``, non-empty."""
    x0, y0, x1, y1 = tight_box(mask).astype(int)
    crop = ~mask[y0 : y1 + 1, x0 : x1 + 1]
    if not crop.any():
        return None
    dist = inner_distance(crop)
    py, px = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x0 + px, y0 + py], np.float64)


def gaussian_mask_prompt(
    mask: np.ndarray,
    gamma: float = GAMMA,
    strength: float = STRENGTH,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """SAMRefiner's soft mask prompt, ``(256, 256) float32`` logits in SAM's low-res frame.

    Inside the mask ``strength * exp(-(d - d_max)^2 / (|mask| / gamma))`` with ``d`` the
    distance to the boundary *in pixels* (so it is strongest at the centre and falls off
    towards the edge); ``-strength`` outside.  (The public reference normalises ``d`` to
    [0, 1] before this Gaussian, which makes it ~1 everywhere, i.e. a hard +-strength
    prompt; this function uses pixels as intended.)  Pixel distances and area scale
    together, so the working frame gives the same prompt as the image frame.

    Args:
        mask: ``(h, w) bool`` non-empty, working frame (long side 1024).
        scale: optional ``(h, w) float32`` in (0, 1], same frame, multiplying the Gaussian
            inside the mask (PromptMoE's saliency-shaped prompt); None: SAMRefiner's.
    """
    if mask.shape[0] > IMAGE_SIZE or mask.shape[1] > IMAGE_SIZE:
        raise ValueError(f"mask must be in the working frame (long side 1024), got {mask.shape}")
    dist = inner_distance(mask)
    area = float(mask.sum())
    if area == 0:
        raise ValueError("mask prompt of an empty mask")
    g = np.where(mask, np.exp(-((dist - dist.max()) ** 2) / (area / gamma)), 0).astype(np.float32)
    if scale is not None:
        g *= scale
    sign = plane_to_lowres(np.where(mask, 1.0, -1.0).astype(np.float32), -1.0)
    g_low = plane_to_lowres(g, 0.0)
    g_low[g_low <= 0] = 1.0
    return np.where(sign > 0, strength * g_low, -strength).astype(np.float32)


def refinement_prompt(
    emb: ImageEmbedding,
    mask: np.ndarray,
    positives: np.ndarray,
    gamma: float = GAMMA,
    strength: float = STRENGTH,
    scale: np.ndarray | None = None,
) -> Prompt:
    """The full refinement prompt: positives, the negative point, the tight box and the
    Gaussian mask prompt (shaped by ``scale``, see :func:`gaussian_mask_prompt`) of the
    working-frame ``(h, w) bool`` mask.

    ``positives`` ``(n, 2)`` (x, y) working frame; the returned prompt is in image pixels
    (the engine maps it to SAM's frame once).
    """
    points, labels = positives, np.ones(len(positives), np.int64)
    negative = negative_point(mask)
    if negative is not None:
        points = np.vstack([positives, negative[None]])
        labels = np.append(labels, 0)
    return Prompt(
        points=working_to_image(emb, points) if len(points) else None,
        labels=labels if len(points) else None,
        box=working_to_image(emb, tight_box(mask)),
        mask_logits=gaussian_mask_prompt(mask, gamma, strength, scale),
    )

"""Focus crops for later clicks: SAM run again on a crop around the object.

SAM sees the whole image at 1024 px on its long side and answers at 256 x 256: a small
object gets few low-res pixels, and its boundary stays coarse whatever the clicks say.
After a few clicks the object's extent is known, so later clicks can decode on a crop
around it (the crop encoded once; encoded again only when the object outgrows it), as
RITM's zoom-in does for its models.

Frames: masks and points here are in the *image* frame (pixels of the whole image) unless
a name says *crop*; a crop box is ``(x0, y0, x1, y1)`` int image pixels, ``x1`` and ``y1``
one past the last column and row.
"""

from __future__ import annotations

import numpy as np

from .experts.geometry import tight_box
from .sam import LOW_RES, ImageEmbedding
from .sam.frames import mask_to_lowres

#: Magnitude of the logits a mask is turned into when it seeds a new crop's mask prompt.
PROMPT_LOGIT = 10.0

Box = tuple[int, int, int, int]


def object_box(mask: np.ndarray, points: np.ndarray, labels: np.ndarray) -> Box:
    """Tight box around the mask and every positive click.

    Args:
        mask: ``(H, W) bool`` current mask, image frame.
        points: ``(K, 2)`` float (x, y) image pixels of every click.
        labels: ``(K,)`` 1 positive / 0 negative; at least one positive when ``mask`` is
            empty.
    """
    corners = np.asarray(points, np.float64).reshape(-1, 2)[np.asarray(labels) == 1]
    if mask.any():
        corners = np.concatenate([corners, tight_box(mask).reshape(2, 2)])
    if not len(corners):
        raise ValueError("an empty mask without a positive click has no box")
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    return int(x0), int(y0), int(x1) + 1, int(y1) + 1


def focus_box(
    need: Box, image_size: tuple[int, int], expand: float, min_side: int, max_share: float
) -> Box | None:
    """The crop for an object box ``need``: ``expand`` times its sides about its centre,
    each side at least ``min_side`` px, clipped to the ``(H, W)`` image; None when the crop
    would cover more than ``max_share`` of the image (zooming would gain little)."""
    H, W = image_size
    x0, y0, x1, y1 = need
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w = max((x1 - x0) * expand, min_side)
    h = max((y1 - y0) * expand, min_side)
    box = (
        max(0, int(np.floor(cx - w / 2))),
        max(0, int(np.floor(cy - h / 2))),
        min(W, int(np.ceil(cx + w / 2))),
        min(H, int(np.ceil(cy + h / 2))),
    )
    if (box[2] - box[0]) * (box[3] - box[1]) > max_share * H * W:
        return None
    return box


def contains(outer: Box, inner: Box) -> bool:
    """Whether box ``inner`` lies within box ``outer``."""
    x0, y0, x1, y1 = outer
    return x0 <= inner[0] and y0 <= inner[1] and x1 >= inner[2] and y1 >= inner[3]


def mask_prompt(emb: ImageEmbedding, mask: np.ndarray) -> np.ndarray:
    """A binary mask as SAM mask-prompt logits.

    Args:
        emb: the embedding of the image the mask belongs to (the whole image or a crop).
        mask: ``(H, W) bool`` in that embedding's image frame.

    Returns:
        ``(256, 256) float32`` low-res logits: ``+-PROMPT_LOGIT`` scaled by the mask's
        coverage of each low-res pixel (``2 * coverage - 1``), ``-PROMPT_LOGIT`` over the
        padding.
    """
    cover = mask_to_lowres(emb, mask)
    out = np.full((LOW_RES, LOW_RES), -PROMPT_LOGIT, np.float32)
    lh, lw = cover.shape
    out[:lh, :lw] = (2 * cover - 1) * PROMPT_LOGIT
    return out


def crop_image(image: np.ndarray, box: Box) -> np.ndarray:
    """The ``box`` part of an ``(H, W, 3) uint8`` image, contiguous (what is encoded)."""
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def to_crop(xy: np.ndarray, box: Box) -> np.ndarray:
    """``(..., 2k)`` float x, y pairs (points or a box) from image pixels to the crop's."""
    xy = np.asarray(xy, np.float64)
    return xy - np.tile([box[0], box[1]], xy.shape[-1] // 2)


def paste(crop_mask: np.ndarray, box: Box, image_size: tuple[int, int]) -> np.ndarray:
    """A crop's ``(y1 - y0, x1 - x0) bool`` mask placed in an all-False ``(H, W) bool``
    image-frame mask."""
    out = np.zeros(image_size, bool)
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = crop_mask
    return out

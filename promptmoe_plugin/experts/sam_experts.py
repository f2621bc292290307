"""SAM experts: SAM-everything coverage, weighted coverage and the box query.

All three reuse the image's cached embedding: no second encoder pass.  The everything
regions come from a point grid decoded in one batch and read at SAM's low resolution
(the ``256 x 256`` logits cropped to :func:`~promptmoe_plugin.sam.frames.lowres_shape_rounded`),
then resized (nearest) to the working frame.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from ..masks import mask_iou
from ..sam import ImageEmbedding, Prompt, SamEngine, stability_score
from ..sam.frames import crop_lowres, lowres_shape_rounded, working_to_image
from .geometry import tight_box
from .superpixel import region_coverage

log = logging.getLogger(__name__)

#: Points per side of the everything grid (SAM's generator uses 32; the decoder costs
#: ~linear in points on a CPU, and object-sized regions need far fewer).
GRID = 6
#: Keep a proposal when its predicted IoU and its stability reach these.
MIN_PRED_IOU = 0.75
MIN_STABILITY = 0.85
#: Drop a proposal overlapping an already kept one by more than this IoU.
DEDUP_IOU = 0.7
#: Below this IoU with the coarse mask, the box query falls back to the coarse mask.
BOX_FALLBACK_IOU = 0.5
#: Name and bound of the engine's cache of everything regions (:meth:`SamEngine.image_cache`).
REGIONS_CACHE = "sam_everything_regions"
REGIONS_CACHE_MB = 64


def everything_regions(engine: SamEngine, emb: ImageEmbedding, grid: int = GRID) -> np.ndarray:
    """Region ids from SAM prompted with a ``grid x grid`` point grid over the image.

    Proposals are kept by predicted IoU and stability, de-duplicated, and painted largest
    first so smaller regions stay visible; unassigned pixels are region 0.  Cached per
    image and grid in the engine (the regions do not depend on the mask).

    Returns:
        ``(h, w) int32`` labels in the working frame.
    """
    cache = engine.image_cache(REGIONS_CACHE, REGIONS_CACHE_MB)
    key = (emb.key, grid)
    if (hit := cache.get(key)) is not None:
        return hit
    H, W = emb.original_size
    offsets = (np.arange(grid) + 0.5) / grid
    xs, ys = np.meshgrid(offsets * W, offsets * H)
    prompts = [
        Prompt(points=np.array([[x, y]]), labels=np.array([1]))
        for x, y in zip(xs.ravel(), ys.ravel(), strict=True)
    ]
    out = engine.decode(emb, prompts, multimask=True, frame="none")
    rh, rw = lowres_shape_rounded(emb)
    logits = crop_lowres(out.low_res_logits, (rh, rw)).reshape(-1, rh, rw)
    masks = logits > 0
    area = masks.sum(axis=(1, 2))
    stability = stability_score(logits)
    score = out.iou.reshape(-1)
    ok = (score >= MIN_PRED_IOU) & (stability >= MIN_STABILITY) & (area > 0)
    kept: list[np.ndarray] = []
    for i in np.flatnonzero(ok)[np.argsort(-score[ok], kind="stable")]:
        m = masks[i]
        if all((m & k).sum() <= DEDUP_IOU * (m | k).sum() for k in kept):
            kept.append(m)
    labels = np.zeros((rh, rw), np.int32)
    for rank, i in enumerate(np.argsort([-k.sum() for k in kept], kind="stable")):
        labels[kept[i]] = rank + 1
    h, w = emb.input_size
    labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    log.debug("SAM everything: %d of %d proposals kept", len(kept), len(masks))
    cache.put(key, labels, labels.nbytes)
    return labels


def sam_coverage(regions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Object-coverage expert: share of each pixel's SAM region inside the mask.

    ``regions`` ``(h, w) int32`` from :func:`everything_regions`, ``mask`` ``(h, w) bool``
    (working frame); returns ``(h, w) float32`` in [0, 1]."""
    return region_coverage(regions, mask)[0]


def sam_weighted_coverage(regions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Weighted-coverage expert: coverage times the region's share of the mask,
    renormalised to a maximum of 1; ``(h, w) float32`` in [0, 1] (working frame)."""
    coverage, share = region_coverage(regions, mask)
    weighted = coverage * share
    top = float(weighted.max())
    return weighted / top if top > 0 else weighted


def sam_box_query(engine: SamEngine, emb: ImageEmbedding, mask: np.ndarray) -> np.ndarray:
    """Box-query expert: union of SAM's outputs for the mask's tight box.

    The box is given in image pixels and transformed to SAM's frame once, by the engine.
    Falls back to the mask itself when the union's IoU with it is below
    :data:`BOX_FALLBACK_IOU`.  ``mask`` ``(h, w) bool`` working frame; returns
    ``(h, w) float32`` in {0, 1}.
    """
    box = working_to_image(emb, tight_box(mask))
    out = engine.decode(emb, [Prompt(box=box)], multimask=True, frame="working")
    union = out.masks[0].any(axis=0)
    agrees = mask_iou(union, mask, empty=0.0) >= BOX_FALLBACK_IOU
    return (union if agrees else mask).astype(np.float32)

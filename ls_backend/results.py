"""Masks <-> Label Studio result dicts: the one brush-result builder and its inverse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import rle
from .label_config import LabelConfig
from .polygons import mask_to_polygons


#: ``source -> (a, b)`` of the score calibration ``sigmoid(a * (raw - b))``: SAM's
#: predicted IoU of a mask (``raw``, which passes 1.0 for confident masks) -> an estimate
#: of its true IoU, in (0, 1).  Fitted by least squares to the true IoU of the backend's
#: masks (SmartSAM clicks 1-3; SAM on ground-truth boxes, tight and jittered) on 15 DAVIS,
#: 15 GrabCut and 15 COCO_MVal-dev images: ``tests/labelstudio/fit_scores.py`` (README,
#: "Scores").  Refined drafts use the box curve (their mask is mostly SAM's box answer).
#: ``kept``: drafts the refinement's draft check kept (``Refinement.source == "draft"``;
#: ``raw`` is SAM's predicted IoU of the answer it rejected), fitted the same way to the
#: draft's true IoU on the 66 kept drafts of the issue-17 tuning mix (50 DAVIS, 25 GrabCut,
#: 80 COCO_MVal-dev images x 3 coarse sources; mean true IoU 0.91, RMSE 0.102, the box
#: curve's 0.110; the curve fitted before the outline condition gives 0.112 on them).
SCORE_CALIBRATION = {
    "click": (7.856, 0.7662),
    "box": (8.653, 0.7618),
    "kept": (9.070, 0.7255),
}


def calibrated_score(raw: float, source: str) -> float:
    """The calibrated score in [0, 1] of a mask whose SAM predicted IoU is ``raw``, made by
    ``source``: ``click``, ``box``, ``draft`` (a refined draft) or ``kept`` (a draft the
    draft check kept unchanged); 0 for a raw score that is not finite."""
    if not np.isfinite(raw):
        return 0.0
    a, b = SCORE_CALIBRATION[source if source in ("click", "kept") else "box"]
    return float(1.0 / (1.0 + np.exp(-a * (raw - b))))


@dataclass(frozen=True)
class Region:
    """One output object: ``mask`` ``(H, W) bool`` in the image frame, ``score`` its
    calibrated score (:func:`calibrated_score`)."""

    label: str
    mask: np.ndarray
    score: float


def _common(mask: np.ndarray, from_name: str, to_name: str, score: float | None) -> dict:
    h, w = mask.shape
    common = {
        "from_name": from_name,
        "to_name": to_name,
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "readonly": False,
    }
    if score is not None:
        common["score"] = score
    return common


def brush_result(
    mask: np.ndarray, label: str, *, from_name: str, to_name: str, score: float | None = None
) -> dict:
    """A ``brushlabels`` result of ``mask`` ``(H, W) bool`` (image frame, RLE at its size)
    for the ``from_name`` BrushLabels tag on the ``to_name`` image; ``score`` is left out
    when None (a draft rather than a prediction)."""
    return {
        **_common(mask, from_name, to_name, score),
        "type": "brushlabels",
        "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": [label]},
    }


def polygon_results(
    mask: np.ndarray, label: str, *, from_name: str, to_name: str, score: float
) -> list[dict]:
    """``polygonlabels`` results of the outer contours of ``mask`` ``(H, W) bool``, points
    in percent of the image (see :func:`~ls_backend.polygons.mask_to_polygons`)."""
    h, w = mask.shape
    return [
        {
            **_common(mask, from_name, to_name, score),
            "type": "polygonlabels",
            "value": {
                "points": (poly * [100.0 / w, 100.0 / h]).round(3).tolist(),
                "closed": True,
                "polygonlabels": [label],
            },
        }
        for poly in mask_to_polygons(mask)
    ]


def prediction(regions: list[Region], config: LabelConfig, model_version: str) -> dict:
    """Label Studio's prediction of ``regions``: a brush result each (plus polygons when the
    config has a PolygonLabels tag); the task score is the mean of the region scores (kept
    in [0, 1], NaN as 0)."""
    scores = [min(max(r.score, 0.0), 1.0) if np.isfinite(r.score) else 0.0 for r in regions]
    result = []
    for region, score in zip(regions, scores, strict=True):
        names = {"to_name": config.image_to, "score": score}
        result.append(brush_result(region.mask, region.label, from_name=config.brush_from, **names))
        if config.polygon_from:
            result += polygon_results(
                region.mask, region.label, from_name=config.polygon_from, **names
            )
    score = float(np.mean(scores)) if regions else 0.0
    return {"result": result, "score": score, "model_version": model_version}


def brush_masks(result: list[dict]) -> list[tuple[str, np.ndarray]]:
    """The ``(label, mask (H, W) bool)`` of every brushlabels item of a ``result`` list."""
    return [
        (
            r["value"]["brushlabels"][0],
            rle.decode(r["value"]["rle"], r["original_height"], r["original_width"]),
        )
        for r in result
        if r["type"] == "brushlabels"
    ]

"""Masks <-> Label Studio result dicts: the one brush-result builder and its inverse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import rle
from .label_config import LabelConfig
from .polygons import mask_to_polygons


@dataclass(frozen=True)
class Region:
    """One output object: ``mask`` ``(H, W) bool`` in the image frame, ``score`` SAM's
    predicted IoU (or the refinement's score)."""

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
    config has a PolygonLabels tag); scores clipped to [0, 1], the task score their mean."""
    scores = [min(max(r.score, 0.0), 1.0) for r in regions]
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

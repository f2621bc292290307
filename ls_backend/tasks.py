"""Label Studio JSON -> what the model acts on: clicks, boxes and brush drafts.

Coordinates and masks are in image pixels of the task image (``(H, W)``): Label Studio
gives keypoints and rectangles in percent of the image, brush regions as RLE at the
image's size (``original_height`` x ``original_width``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import rle
from .label_config import LabelConfig

#: Prefix of this backend's model versions: predictions that carry it are its own
#: answers, never drafts to refine.
MODEL_VERSION_PREFIX = "promptmoe-"

#: ``(label, mask (H, W) bool)``: a brush draft in the image frame.
Draft = tuple[str, np.ndarray]


class TaskError(ValueError):
    """A task or context the model cannot use; reported for that task only."""


@dataclass(frozen=True)
class Click:
    """A keypoint at image pixel ``(x, y)``; ``positive`` False removes."""

    x: float
    y: float
    positive: bool


@dataclass
class Context:
    """The regions of an interactive call: clicks per label, boxes and brush drafts."""

    clicks: dict[str, list[Click]] = field(default_factory=dict)
    #: ``(label, (4,) float64 x0, y0, x1, y1)`` in image pixels.
    boxes: list[tuple[str, np.ndarray]] = field(default_factory=list)
    drafts: list[Draft] = field(default_factory=list)


def project_id(project: Any) -> str:
    """Label Studio's ``"<id>.<timestamp>"`` (or a bare id / project dict) -> ``"<id>"``."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None or str(project).strip() == "":
        return "0"
    return str(project).split(".")[0]


def task_image_url(task: Any, config: LabelConfig) -> str:
    """The URL of the task's image (the ``<Image>`` tag's ``$key`` in ``task["data"]``)."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise TaskError("a task must be an object with a data object")
    url = task["data"].get(config.image_key)
    if not url:
        raise TaskError(
            f"no image URL in data.{config.image_key} (the <Image> tag's value ${config.image_key})"
        )
    return url


def region_label(labels: Any, config: LabelConfig, kind: str) -> str:
    """The first of a region's ``labels``, which must be one of the brush labels."""
    if not isinstance(labels, list) or not labels:
        raise TaskError(f"a {kind} region has no label")
    if labels[0] not in config.labels:
        raise TaskError(
            f"{kind} label {labels[0]!r} is not a BrushLabels label ({list(config.labels)}); give "
            "the smart tools the same <Label> values as the BrushLabels tag"
        )
    return labels[0]


def _kind(item: Any) -> str:
    """A result item's ``type`` in lower case (``""`` for anything but an object)."""
    return str(item.get("type", "")).lower() if isinstance(item, dict) else ""


def brush_region(item: dict, config: LabelConfig, h: int, w: int) -> Draft:
    """A ``brushlabels`` result item as ``(label, mask (h, w) bool)``; its size must be the
    image's ``h`` x ``w``."""
    value = item.get("value") or {}
    if not isinstance(value, dict):
        raise TaskError("a brush region's value must be an object")
    label = region_label(value.get("brushlabels"), config, "brushlabels")
    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        raise TaskError(
            "a brush region must carry value.format 'rle' and value.rle, a list of ints"
        )
    ih, iw = int(item.get("original_height", h)), int(item.get("original_width", w))
    if (ih, iw) != (h, w):
        raise TaskError(f"brush region is for a {iw}x{ih} image but the image is {w}x{h}")
    return label, rle.decode(value["rle"], h, w)


def _percent(value: dict, key: str) -> float:
    v = value.get(key)
    if not isinstance(v, (int, float)) or not np.isfinite(v):
        raise TaskError(f"value.{key} must be a number (percent of the image), got {v!r}")
    return float(v)


def context_regions(items: list, config: LabelConfig, h: int, w: int) -> Context:
    """The keypoints, rectangles and brush drafts among an interactive call's ``items``
    (other region types are ignored) on an ``h`` x ``w`` image.

    Raises:
        TaskError: no such region, or one with a bad label or value.
    """
    context = Context()
    for item in items:
        kind = _kind(item)
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict) or kind not in (
            "keypointlabels",
            "rectanglelabels",
            "brushlabels",
        ):
            continue
        if kind == "brushlabels":
            context.drafts.append(brush_region(item, config, h, w))
            continue
        label = region_label(value.get(kind), config, kind)
        if kind == "keypointlabels":
            x = min(max(_percent(value, "x") * w / 100, 0.0), w - 1e-3)
            y = min(max(_percent(value, "y") * h / 100, 0.0), h - 1e-3)
            positive = item.get("is_positive", True) is not False
            context.clicks.setdefault(label, []).append(Click(x, y, positive))
        else:
            x0, y0 = _percent(value, "x") * w / 100, _percent(value, "y") * h / 100
            x1 = x0 + _percent(value, "width") * w / 100
            y1 = y0 + _percent(value, "height") * h / 100
            context.boxes.append((label, np.array([x0, y0, x1, y1])))
    if not (context.clicks or context.boxes or context.drafts):
        raise TaskError(
            "the context has no keypoint, rectangle or brush region; use a smart KeyPointLabels "
            'or RectangleLabels tool (smart="true") or a brush draft with one of the brush labels'
        )
    return context


def task_drafts(task: dict, config: LabelConfig, h: int, w: int) -> list[Draft]:
    """The brush drafts of a task: those of its latest annotation with brush regions, else
    of its latest prediction from another model (``[]`` when there are none)."""
    sources = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    sources += [
        p
        for p in task.get("predictions") or []
        if not str(p.get("model_version", "")).startswith(MODEL_VERSION_PREFIX)
    ]
    sources.sort(key=lambda s: str(s.get("updated_at") or s.get("created_at") or ""), reverse=True)
    for source in sources:
        drafts = [
            brush_region(item, config, h, w)
            for item in source.get("result") or []
            if _kind(item) == "brushlabels"
        ]
        if drafts:
            return drafts
    return []


def mask_image_drafts(values: np.ndarray, data: dict, config: LabelConfig) -> list[Draft]:
    """Drafts from a mask image ``values`` ``(H, W) uint8`` of the task ``data``: pixel value
    k in 1..len(labels) is the k-th brush label; a 0/255 mask is one draft of
    ``data["label"]`` (or of the only label)."""
    present = [int(v) for v in np.unique(values) if v]
    if present == [255]:
        label = data.get("label") or (config.labels[0] if len(config.labels) == 1 else None)
        if label is None:
            raise TaskError(
                f'a 0/255 mask needs the task data field "label" (one of {list(config.labels)})'
            )
        return [(region_label([label], config, "mask"), values > 0)]
    bad = [v for v in present if v > len(config.labels)]
    if bad:
        raise TaskError(
            f"mask values {bad} name no brush label "
            f"(1..{len(config.labels)} = {list(config.labels)})"
        )
    return [(config.labels[v - 1], values == v) for v in present]


def annotation_regions(annotation: dict, config: LabelConfig) -> list[tuple[str, str, np.ndarray]]:
    """The non-empty brush regions of a submitted annotation (none when it was cancelled),
    as ``(region id, label, mask (H, W) bool)``; the region id is ``"<index>:<result id>"``."""
    if annotation.get("was_cancelled"):
        return []
    regions = []
    for i, item in enumerate(annotation.get("result") or []):
        if _kind(item) != "brushlabels" or item.get("from_name") != config.brush_from:
            continue
        h, w = int(item.get("original_height", 0)), int(item.get("original_width", 0))
        label, mask = brush_region(item, config, h, w)
        if mask.any():
            regions.append((f"{i}:{item.get('id', '')}", label, mask))
    return regions

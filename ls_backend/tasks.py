"""Label Studio JSON -> what the model acts on: clicks, boxes and brush drafts.

Coordinates and masks are in image pixels of the task image (``(H, W)``): Label Studio
gives keypoints, rectangles and polygon points in percent of the image, brush regions as
RLE at the image's size (``original_height`` x ``original_width``).  Batch
pre-annotation reads a task's drafts with :func:`task_prompts` (brush regions, polygons,
rectangles, and which one wins).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from skimage import draw

from . import rle
from .images import ImageFetchError
from .label_config import LabelConfig, LabelConfigError

log = logging.getLogger(__name__)

#: Prefix of this backend's model versions: predictions that carry it are its own
#: answers, never drafts to refine.
MODEL_VERSION_PREFIX = "promptmoe-"

#: ``(label, mask (H, W) bool)``: a brush draft in the image frame.
Draft = tuple[str, np.ndarray]


class TaskError(ValueError):
    """A task or context the model cannot use; reported for that task only."""


#: Errors of one task's own data (its JSON, image, masks or label config): the task fails
#: with the message and the others go on.
TASK_ERRORS = (TaskError, ImageFetchError, rle.RLEError, LabelConfigError)


def failure_reason(exc: Exception, task: object) -> str:
    """Why ``task`` (its id, for the log) failed with ``exc``: the message of a task's own
    error, or ``internal error <Type>: <message>`` for anything else (a bug or a resource
    error), which is also logged with its traceback."""
    if isinstance(exc, TASK_ERRORS):
        return str(exc)
    log.error("task %s failed", task, exc_info=exc)
    return f"internal error {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Click:
    """A keypoint at image pixel ``(x, y)``; ``positive`` False removes."""

    x: float
    y: float
    positive: bool


@dataclass(frozen=True)
class Box:
    """A rectangle of ``label``: its ``corners`` ``(4, 2)`` float64 (x, y) in image pixels,
    in drawing order from the rectangle's own top-left corner.

    Label Studio rotates a rectangle by ``value.rotation`` degrees (clockwise on screen)
    around that corner ``(value.x, value.y)``; ``value.width`` is in percent of the image's
    width and ``value.height`` of its height, whatever the rotation.
    """

    label: str
    corners: np.ndarray
    rotation: float = 0.0

    @property
    def bounds(self) -> np.ndarray:
        """``(4,)`` x0, y0, x1, y1: the axis-aligned bounding box of the corners."""
        return np.concatenate([self.corners.min(axis=0), self.corners.max(axis=0)])

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether the points ``(x, y)`` (arrays of one shape) lie in the (rotated) box."""
        inside = np.ones(np.broadcast(x, y).shape, bool)
        sign = 1.0 if self._clockwise else -1.0
        ends = np.roll(self.corners, -1, axis=0)
        for (ax, ay), (bx, by) in zip(self.corners, ends, strict=True):
            inside &= sign * ((bx - ax) * (y - ay) - (by - ay) * (x - ax)) >= -1e-9
        return inside

    @property
    def _clockwise(self) -> bool:
        """Whether the corners run clockwise on screen (y down): positive shoelace sum."""
        c = self.corners
        return float(np.sum(c[:, 0] * np.roll(c[:, 1], -1) - np.roll(c[:, 0], -1) * c[:, 1])) > 0


@dataclass
class Context:
    """The regions of an interactive call: clicks per label, boxes and brush drafts."""

    clicks: dict[str, list[Click]] = field(default_factory=dict)
    #: The rectangle to segment: the newest one only (see :func:`context_regions`).
    boxes: list[Box] = field(default_factory=list)
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
    if url and not isinstance(url, str):
        raise TaskError(f"data.{config.image_key} must be an image URL (a string)")
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


def brush_region(
    item: dict, config: LabelConfig, h: int, w: int, max_pixels: int | None = None
) -> Draft:
    """A ``brushlabels`` result item as ``(label, mask (h, w) bool)``; its size must be the
    image's ``h`` x ``w``.

    The size guard: ``original_height`` / ``original_width``, when given, must be positive
    integers equal to ``h`` x ``w``, and ``h * w`` at most ``max_pixels`` (default and
    ceiling :data:`rle.MAX_PIXELS`); all is checked before the RLE is decoded, and the
    decoder checks the RLE's own header against ``h * w * 4`` before allocating.
    """
    value = item.get("value") or {}
    if not isinstance(value, dict):
        raise TaskError("a brush region's value must be an object")
    label = region_label(value.get("brushlabels"), config, "brushlabels")
    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        raise TaskError(
            "a brush region must carry value.format 'rle' and value.rle, a list of ints"
        )
    sizes = item.get("original_height", h), item.get("original_width", w)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise TaskError(
            "a brush region needs original_width and original_height, positive integers; got "
            f"{sizes[1]!r}x{sizes[0]!r}"
        )
    if sizes != (h, w):
        raise TaskError(
            f"brush region is for a {sizes[1]}x{sizes[0]} image but the image is {w}x{h}"
        )
    try:
        return label, rle.decode(value["rle"], h, w, max_pixels)
    except rle.RLEError as exc:
        raise TaskError(str(exc)) from exc


#: Largest percent a region coordinate may hold (far outside any image, still finite math).
MAX_PERCENT = 1e6


def _percent(value: dict, key: str) -> float:
    """``value[key]``, a region coordinate in percent of the image."""
    v = value.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= MAX_PERCENT:
        raise TaskError(
            f"value.{key} must be a number (percent of the image) within +-{MAX_PERCENT:g}, "
            f"got {v!r}"
        )
    return float(v)


def _rectangle(value: dict, label: str, h: int, w: int) -> Box:
    """A ``rectanglelabels`` value (percent of the image, ``rotation`` in degrees around
    its top-left corner) as a :class:`Box` in image pixels.

    Raises:
        TaskError: a bad number, or a rectangle that does not overlap the image.
    """
    x, y = _percent(value, "x") * w / 100, _percent(value, "y") * h / 100
    bw, bh = _percent(value, "width") * w / 100, _percent(value, "height") * h / 100
    rotation = value.get("rotation") or 0.0
    if (
        isinstance(rotation, bool)
        or not isinstance(rotation, (int, float))
        or not abs(rotation) <= MAX_PERCENT
    ):
        raise TaskError(f"value.rotation must be a number of degrees, got {rotation!r}")
    t = np.deg2rad(float(rotation))
    axes = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])  # width, height dirs
    local = np.array([[0.0, 0.0], [bw, 0.0], [bw, bh], [0.0, bh]])
    box = Box(label, np.array([x, y]) + local @ axes, float(rotation) % 360)
    x0, y0, x1, y1 = box.bounds
    if min(x1, w) - max(x0, 0) < 1 or min(y1, h) - max(y0, 0) < 1:
        raise TaskError(
            f"the rectangle ({x0:.0f}, {y0:.0f})-({x1:.0f}, {y1:.0f}) px does not overlap the "
            f"{w}x{h} image"
        )
    return box


def context_regions(items: list, config: LabelConfig, h: int, w: int) -> Context:
    """The keypoints, rectangles and brush drafts among an interactive call's ``items``
    (other region types are ignored) on an ``h`` x ``w`` image.

    Label Studio's editor sends every region of the type and label of the one just drawn,
    newest last.  Clicks accumulate into objects (every keypoint is kept: the click tracks
    apply only the new ones), but a rectangle is a request of its own: only the newest
    rectangle is kept, the earlier ones were answered when they were drawn.

    Raises:
        TaskError: no such region, or one with a bad label or value.
    """
    context = Context()
    newest_rectangle = None
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
            newest_rectangle = (value, label)
    if newest_rectangle is not None:
        context.boxes.append(_rectangle(*newest_rectangle, h, w))
    if not (context.clicks or context.boxes or context.drafts):
        raise TaskError(
            "the context has no keypoint, rectangle or brush region; use a smart KeyPointLabels "
            'or RectangleLabels tool (smart="true") or a brush draft with one of the brush labels'
        )
    return context


def prediction_versions(task: dict) -> list[str] | None:
    """The ``model_version`` of each prediction the task JSON holds; None when the JSON
    holds no list of predictions (Label Studio left them out: ask its API)."""
    predictions = task.get("predictions")
    if not isinstance(predictions, list) or not all(isinstance(p, dict) for p in predictions):
        return None
    return [str(p.get("model_version") or "") for p in predictions]


def _draft_sources(task: dict) -> list[dict]:
    """A task's annotations (not cancelled) and predictions of other models, newest first."""
    sources = [
        a
        for a in task.get("annotations") or []
        if isinstance(a, dict) and not a.get("was_cancelled")
    ]
    sources += [
        p
        for p in task.get("predictions") or []
        if isinstance(p, dict)
        and not str(p.get("model_version", "")).startswith(MODEL_VERSION_PREFIX)
    ]
    sources.sort(key=lambda s: str(s.get("updated_at") or s.get("created_at") or ""), reverse=True)
    return sources


#: Region types a pre-annotation draft can come from, in precedence order.
DRAFT_KINDS = ("brushlabels", "polygonlabels", "rectanglelabels")
#: Bounding-box IoU at or above which a lower-ranked region of a label (polygon, rectangle)
#: is taken for the same object as a higher-ranked one of that label, and dropped.
SAME_OBJECT_IOU = 0.5


@dataclass
class Prompts:
    """What a task gives batch pre-annotation, image frame: ``drafts`` to refine (brush
    regions and rasterised polygons) and ``boxes`` to segment with SAM's box prompt."""

    drafts: list[Draft] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.drafts or self.boxes)


def has_drafts(task: dict, mask_key: str) -> bool:
    """Whether a task has something to pre-annotate from, decided without its image: a
    brush, polygon or rectangle region in an annotation or another model's prediction, or
    a mask image in ``data[mask_key]``."""
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    return bool(data.get(mask_key)) or any(
        _kind(item) in DRAFT_KINDS
        for source in _draft_sources(task)
        for item in source.get("result") or []
    )


def polygon_region(value: dict, config: LabelConfig, h: int, w: int) -> Draft:
    """A ``polygonlabels`` value (``points``: ``[x, y]`` pairs in percent of the image) as
    ``(label, mask (h, w) bool)``: the pixels whose centres lie inside the polygon.

    Raises:
        TaskError: a bad label, fewer than 3 points or a point that is not two numbers.
    """
    label = region_label(value.get("polygonlabels"), config, "polygonlabels")
    points = value.get("points")
    if not isinstance(points, list) or len(points) < 3:
        raise TaskError("a polygon region needs value.points, a list of at least 3 [x, y]")
    if not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise TaskError("every polygon point must be [x, y] in percent of the image")
    xy = np.array(
        [[_percent({"x": x}, "x") * w / 100, _percent({"y": y}, "y") * h / 100] for x, y in points]
    )
    mask = np.zeros((h, w), bool)
    # Pixel (col, row) has its centre at (col + 0.5, row + 0.5) in Label Studio's frame.
    rows, cols = draw.polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, (h, w))
    mask[rows, cols] = True
    return label, mask


def _bounds_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``(4,)`` x0, y0, x1, y1 boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return float(iw * ih / union) if union > 0 else 0.0


def _mask_bounds(mask: np.ndarray) -> np.ndarray:
    """``(4,)`` x0, y0, x1, y1 pixel-edge bounds of a non-empty ``(H, W) bool`` mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


def _source_prompts(source: dict, config: LabelConfig, h: int, w: int) -> Prompts:
    """The prompts of one annotation or prediction: every non-empty brush region; every
    polygon, and then every rectangle, unless a higher-ranked region of its label already
    covers the same object (bounding-box IoU >= :data:`SAME_OBJECT_IOU`)."""
    items = [i for i in source.get("result") or [] if _kind(i) in DRAFT_KINDS]
    drafts = [
        d
        for i in items
        if _kind(i) == "brushlabels"
        for d in [brush_region(i, config, h, w)]
        if d[1].any()
    ]
    taken = [(label, _mask_bounds(mask)) for label, mask in drafts]

    def new_object(label: str, bounds: np.ndarray) -> bool:
        fresh = all(lab != label or _bounds_iou(b, bounds) < SAME_OBJECT_IOU for lab, b in taken)
        if fresh:
            taken.append((label, bounds))
        return fresh

    prompts = Prompts(drafts=drafts)
    for item in items:
        value = item.get("value")
        if _kind(item) != "polygonlabels" or not isinstance(value, dict):
            continue
        label, mask = polygon_region(value, config, h, w)
        if mask.any() and new_object(label, _mask_bounds(mask)):
            prompts.drafts.append((label, mask))
    for item in items:
        value = item.get("value")
        if _kind(item) != "rectanglelabels" or not isinstance(value, dict):
            continue
        box = _rectangle(value, region_label(value.get("rectanglelabels"), config, "rect"), h, w)
        if new_object(box.label, np.clip(box.bounds, 0, [w, h, w, h])):
            prompts.boxes.append(box)
    return prompts


def task_prompts(task: dict, config: LabelConfig, h: int, w: int) -> Prompts:
    """The pre-annotation prompts of a task on its ``h`` x ``w`` image.

    Precedence (README, "Pre-annotation"): the drafts come from one source, the newest
    annotation (not cancelled) or prediction of another model that holds a brush, polygon
    or rectangle region.  Within it, per object: a brush region wins over a polygon, a
    polygon over a rectangle (a lower-ranked region of a label whose bounding box overlaps
    a higher-ranked one's with IoU >= :data:`SAME_OBJECT_IOU` is the same object, and
    dropped); regions of distinct objects are all kept.  Brush regions and polygons are
    refined as drafts, rectangles become SAM box-prompted masks with the rectangle's
    label.  A mask image in the task data is used only when no source has a region
    (the caller reads it).  Empty ``Prompts`` when there is nothing.
    """
    for source in _draft_sources(task):
        prompts = _source_prompts(source, config, h, w)
        if prompts:
            return prompts
    return Prompts()


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

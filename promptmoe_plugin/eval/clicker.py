"""Click simulator (the RITM / SimpleClick protocol) and the click metrics.

Protocol: the first click is at the ground-truth pixel farthest from the object boundary
(or, for box-started objects, the first interaction is the object's bounding box);
each later click goes to the pixel farthest from the boundary of the larger error region
(false negatives -> positive click, false positives -> negative click).  Distances are
exact Euclidean distance transforms of the error masks zero-padded by one pixel, so the
image border counts as boundary; ignore pixels are never errors; a pixel is never clicked
twice; ties go to the first pixel in row-major order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, TYPE_CHECKING

import cv2
import numpy as np

from .metrics import iou

if TYPE_CHECKING:
    from ..clicks import ClickSession

MAX_CLICKS = 20
#: IoU thresholds of NoC / NoF.
THRESHOLDS = (0.85, 0.90)
#: Clicks after which mIoU@k is reported.
MIOU_AT = (1, 2, 3, 5)
#: The first interaction: a click at the object's deepest pixel, a click uniformly inside
#: the object, or the object's bounding box (a box-started object).
FIRST_CLICKS = ("center", "random", "box")
#: A ``random`` first click is at least this far (px) from the object's boundary.
RANDOM_MARGIN = 5.0
#: A click whose IoU falls more than this below the previous click's is a drop.
DROP = 0.10


@dataclass(frozen=True)
class Click:
    """One simulated click at image pixel ``(x, y)`` (column, row)."""

    x: int
    y: int
    positive: bool


@dataclass(frozen=True)
class Frame:
    """A first interaction by a box: ``x0, y0, x1, y1`` image pixels (x1, y1 one past the
    object's last column and row)."""

    x0: int
    y0: int
    x1: int
    y1: int


def _depth(mask: np.ndarray) -> np.ndarray:
    """Float32 ``(H, W)`` Euclidean distance of each ``mask`` pixel to the nearest non-mask
    pixel, the image border counting as non-mask."""
    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


class Clicker:
    """Chooses the next click for a prediction against one ground truth.

    Args:
        gt: ``(H, W) bool`` object mask, image frame.
        ignore: ``(H, W) bool`` pixels never counted as errors (or None).
    """

    def __init__(
        self,
        gt: np.ndarray,
        ignore: np.ndarray | None = None,
        first: str = "center",
        rng: np.random.Generator | None = None,
    ):
        if first not in FIRST_CLICKS:
            raise ValueError(f"first click must be one of {', '.join(FIRST_CLICKS)}, got {first!r}")
        if first == "random" and rng is None:
            raise ValueError("a random first click needs a random generator (rng)")
        self.first, self.rng = first, rng
        if gt.dtype != bool or gt.ndim != 2:
            raise ValueError(f"gt must be an (H, W) bool mask, got {gt.shape} {gt.dtype}")
        self.gt = gt
        self.valid = np.ones_like(gt) if ignore is None else ~ignore
        if self.valid.shape != gt.shape:
            raise ValueError(f"ignore {self.valid.shape} does not match gt {gt.shape}")
        self.not_clicked = np.ones(gt.shape, np.float32)
        self.started = False

    def next_click(self, pred: np.ndarray) -> Click | Frame | None:
        """The next click for ``pred`` ``(H, W) bool``; None when there is no error left.

        With ``first="random"`` the first click (empty ``pred``) is drawn uniformly among
        the object's pixels at least :data:`RANDOM_MARGIN` px from its boundary (the
        deepest pixel when none is that deep); with ``first="box"`` the first interaction
        is the object's bounding box; every later click follows the protocol."""
        if not self.started:
            self.started = True
            if self.first == "random":
                return self._random_first()
            if self.first == "box":
                ys, xs = np.nonzero(self.gt)
                return Frame(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        fn = self.gt & ~pred & self.valid
        fp = ~self.gt & pred & self.valid
        fn_depth = _depth(fn) * self.not_clicked
        fp_depth = _depth(fp) * self.not_clicked
        fn_max, fp_max = float(fn_depth.max()), float(fp_depth.max())
        if fn_max == 0 and fp_max == 0:
            return None
        positive = fn_max > fp_max
        y, x = np.unravel_index(int(np.argmax(fn_depth if positive else fp_depth)), self.gt.shape)
        self.not_clicked[y, x] = 0
        return Click(int(x), int(y), bool(positive))

    def _random_first(self) -> Click:
        depth = _depth(self.gt & self.valid)
        ys, xs = np.nonzero(depth >= min(RANDOM_MARGIN, float(depth.max())))
        i = int(self.rng.integers(len(ys)))
        self.not_clicked[ys[i], xs[i]] = 0
        return Click(int(xs[i]), int(ys[i]), True)


@dataclass
class ClickRun:
    """The outcome of one simulated session.

    Attributes:
        ious: IoU after each click (ignore pixels excluded), in [0, 1].
        clicks: the clicks made (the first a :class:`Frame` for a box-started object).
        seconds: wall time of each click; the first includes creating the session.
        oracle_iou: best IoU over the session's first-click candidate pool, or None.
        corrections: per click, how a later click's mask was chosen
            (:meth:`~promptmoe_plugin.corrections.Correction.record`: source, predicted
            IoU before and after, small correction, guard passed), or None (a first or a
            plain click, a session without corrections).
    """

    ious: list[float] = field(default_factory=list)
    clicks: list[Click | Frame] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    oracle_iou: float | None = None
    corrections: list[dict[str, Any] | None] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list, repr=False)


def simulate(
    start: Callable[[], ClickSession],
    gt: np.ndarray,
    ignore: np.ndarray | None = None,
    max_clicks: int = MAX_CLICKS,
    stop_iou: float = max(THRESHOLDS),
    min_clicks: int = max(MIOU_AT),
    keep_masks: bool = False,
    clicker: Clicker | None = None,
    between: Callable[[ClickSession], object] | None = None,
) -> ClickRun:
    """Run the click protocol on one image.

    Args:
        start: ``() -> ClickSession``, called once (its time counts towards click 1); a
            box-started run (``Clicker(first="box")``) needs a session with ``frame``
            (:class:`~promptmoe_plugin.clicks.SamClickSession`).
        gt, ignore: ``(H, W) bool`` ground truth and ignore band, image frame.
        max_clicks: click budget (20 in the protocol).
        stop_iou: stop once IoU >= this after at least ``min_clicks`` clicks (later clicks
            cannot change NoC at thresholds <= ``stop_iou`` nor mIoU@k for k <=
            ``min_clicks``).  The run also stops when no error pixel is left.
        keep_masks: keep the mask after every click (for overlays).
        clicker: the click chooser (default: the protocol's, first click at the centre).
        between: called with the session after each click, outside the timer (what a
            server does while the annotator looks, e.g. encoding the next click's crop).
    """
    clicker = clicker or Clicker(gt, ignore)
    run = ClickRun()
    t0 = time.perf_counter()
    session: ClickSession = start()
    pred = np.zeros_like(gt)
    for k in range(1, max_clicks + 1):
        click = clicker.next_click(pred)
        if click is None:
            break
        if isinstance(click, Frame):
            pred = session.frame(click.x0, click.y0, click.x1, click.y1)
        else:
            pred = session.click(click.x, click.y, click.positive)
        run.seconds.append(time.perf_counter() - t0)
        run.clicks.append(click)
        run.ious.append(iou(pred, gt, ignore))
        last = getattr(session, "last", None)
        run.corrections.append(None if last is None else last.record())
        if keep_masks:
            run.masks.append(pred)
        if k == 1:
            candidates = getattr(session, "candidates", None)
            if candidates is not None and len(candidates):
                run.oracle_iou = max(iou(c, gt, ignore) for c in candidates)
        if k >= min_clicks and run.ious[-1] >= stop_iou:
            break
        if between is not None:
            between(session)
        t0 = time.perf_counter()
    return run


def noc(ious: list[float], threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """Number of clicks to reach IoU >= ``threshold``; ``max_clicks`` if never reached."""
    for k, value in enumerate(ious[:max_clicks], start=1):
        if value >= threshold:
            return k
    return max_clicks


def iou_at(ious: list[float], k: int) -> float:
    """IoU after click ``k`` (1-based); a run that stopped earlier keeps its last IoU."""
    if not ious:
        raise ValueError("a run without clicks has no IoU")
    return ious[min(k, len(ious)) - 1]


def drops(ious: list[float], fall: float = DROP) -> int:
    """Clicks after which the IoU is more than ``fall`` below the previous click's."""
    return int(sum(b < a - fall for a, b in pairwise(ious)))


def summarize_runs(curves: list[list[float]], max_clicks: int = MAX_CLICKS) -> dict[str, Any]:
    """Click figures over images from their IoU curves (IoUs in [0, 1]).

    Returns ``miou@k`` (percent), ``ratio@75`` / ``ratio@85`` (share of images with IoU >=
    0.75 / 0.85 after click 1, percent), ``noc@85``, ``noc@90`` (mean clicks),
    ``nof@85``, ``nof@90`` (number of images never reaching the IoU in ``max_clicks``),
    ``drops`` (clicks, over all images, after which the IoU fell more than 10 points) and
    ``miou_curve`` (mIoU after clicks 1 .. ``max_clicks``, percent; a run that stopped
    keeps its last IoU).
    """
    if not curves:
        raise ValueError("no runs to summarize")
    first = np.array([iou_at(c, 1) for c in curves])
    out: dict[str, Any] = {"images": len(curves)}
    for k in MIOU_AT:
        out[f"miou@{k}"] = 100 * float(np.mean([iou_at(c, k) for c in curves]))
    for level in (75, 85):
        out[f"ratio@{level}"] = 100 * float(np.mean(first >= level / 100))
    for thr in THRESHOLDS:
        level = round(thr * 100)
        counts = [noc(c, thr, max_clicks) for c in curves]
        out[f"noc@{level}"] = float(np.mean(counts))
        out[f"nof@{level}"] = int(sum(max(c[:max_clicks], default=0) < thr for c in curves))
    out["drops"] = sum(drops(c) for c in curves)
    out["miou_curve"] = [
        100 * float(np.mean([iou_at(c, k) for c in curves])) for k in range(1, max_clicks + 1)
    ]
    return out

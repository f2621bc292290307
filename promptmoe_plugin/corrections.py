"""Later clicks that keep a good mask: a small candidate pool per click, chosen by how well
each candidate agrees with every click so far, and a guard for small corrections.

Plain SAM decodes all clicks with the previous low-res logits as mask prompt and keeps its
single mask, which can throw a good previous mask away (a negative click near an edge
empties it, a positive one floods the background).  :func:`correct_click` instead

1. decodes the clicks with the previous logits once and keeps all four decoder outputs
   (the single mask and the three multimask ones come from the same decoder run), plus the
   previous mask itself;
2. guards small corrections (:func:`correction_zone`, :func:`guard_ok`): when the new
   click lies near the previous mask's boundary relative to the mask's size, a candidate
   must keep most of the previous mask away from the click (more of it when SAM predicts
   a lower IoU for it than for the previous mask), and optionally every earlier positive
   click the previous mask held;
3. decodes the clicks once more without the previous logits (``fresh``) when plain SAM's
   answer fails the guard (or always / never, see the config);
4. among the candidates that pass, takes the best score (:func:`scores`): the weighted
   share of the clicks it satisfies (positive inside, negative outside, recent clicks
   weighing more), its predicted IoU and its stability, plus a bonus for plain SAM's
   answer; when none passes, the change of the best candidate holding the new click is
   applied near the click only (:func:`local_edit`); when no candidate holds it, the
   click is painted onto the previous mask (:func:`paint_click`).

All arrays are SAM low-res logits ``(256, 256) float32`` over the padded input; masks and
areas are read on the :func:`~.sam.frames.lowres_shape` grid.  Only the chosen logits are
upscaled, by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np

from .configs import parse_fields
from .sam import ImageEmbedding, Prompt, SamEngine, stability_score
from .sam.frames import LOW_RES, crop_lowres, image_to_lowres, lowres_shape

log = logging.getLogger(__name__)

#: When the clicks are decoded a second time without the previous logits.
FRESH = ("never", "auto", "always")
#: What a small correction gets when no candidate follows its click (``unfollowed``).
UNFOLLOWED = ("paint", "answer")


@dataclass(frozen=True)
class CorrectionConfig:
    """Settings of the later clicks (defaults chosen on a DAVIS / GrabCut / COCO_MVal-dev
    tuning mix, checked on held-out parts).

    The default is the guard alone (one decoder run, as plain SAM): on the tuning mix the
    candidate pool (``multimask``, ``previous``, ``fresh="auto"``) did not pay (NoC@90
    5.60 with it, 5.57 without, 30 images) and on the held-out parts it converged more
    slowly on COCO_MVal-dev (NoC@90 5.17 vs 4.84); it helps where the guard alone edits
    locally (GrabCut mIoU@5 98.7 vs 96.8).  Turn it on with ``multimask=True,
    previous=True, fresh="auto"``.

    From click ``zoom_from`` (4) on, clicks are decoded on a crop around the object
    (:mod:`.zoom`): on the held-out parts NoC@90 went from 5.60 to 5.24 on DAVIS and from
    4.84 to 4.83 on COCO_MVal-dev, GrabCut unchanged at 1.60 (docs/benchmarks.md, "Later clicks").

    ``CorrectionConfig(multimask=False, previous=False, fresh="never", guard=False,
    zoom_from=0)`` is plain SAM: the single mask decoded with the previous logits.

    Attributes:
        until: correct clicks 2 to ``until`` only, later ones are plain SAM (0: every later
            click).  On the tuning mix 0 did best (NoC@90 5.60 vs 5.70 for 2 and 5.63 for
            3, 30 images); on held-out COCO_MVal-dev correcting every click converged more
            slowly than plain SAM, so this is the knob to revisit with more tuning data.
        multimask: pool the decoder's three multimask outputs beside its single mask (the
            same decoder run: no extra cost).
        previous: pool the previous mask itself.
        fresh: also decode the clicks without the previous logits (one more decoder run):
            ``"never"``, ``"auto"`` (only when plain SAM's answer fails the guard) or
            ``"always"``.
        recency: weight ratio of a click to the next one (click i of n weighs
            ``recency ** (n - 1 - i)``; 1 weighs all alike).
        iou_weight: weight of SAM's predicted IoU in a candidate's score.
        stability_weight: weight of the stability score (:func:`~.sam.stability_score`).
        single_bonus: added to the score of plain SAM's answer (the single mask decoded
            with the previous logits): 0 lets the scores alone choose; 1 or more keeps
            plain SAM's answer whenever it passes the guard.
        guard: guard small corrections.
        guard_depth: a click is a small correction when its distance to the previous mask's
            boundary is at most this fraction of the mask's radius ``sqrt(area / pi)``.
        guard_keep: away from such a click a candidate must overlap the previous mask with
            at least this IoU.
        guard_fall: a candidate whose predicted IoU is more than this below the previous
            mask's must overlap it with at least ``guard_keep_fall`` instead (None: off).
            SAM says it got worse at a small correction: on the tuning mix the 34 such
            answers that kept 0.7-0.9 of the mask lost 6.4 IoU points on average (12 lost
            more than 10), the 55 others in that range gained 7.7.
        guard_keep_fall: the stricter overlap for those candidates.
        guard_clicks: a candidate must also hold every earlier positive click the previous
            mask held (off: SAM often drops a positive click on a thin part while the mask
            gets better).
        guard_radius: "near the click" is within ``guard_radius`` times the click's
            distance to the boundary, plus 2 low-res pixels.
        unfollowed: a small correction whose click no candidate follows (a negative click
            every answer still covers, a positive one every answer leaves out):
            ``"paint"`` keeps the previous mask with the click painted on it
            (:func:`paint_click`); ``"answer"`` takes plain SAM's answer whole (the
            earlier behaviour: such an answer is often wrong elsewhere too; on the held-out
            parts 9 of the 16 such clicks of the two SmartSAM methods lowered IoU by 10+
            points; docs/benchmarks.md, "Later clicks").
        zoom_from: from this click on, decode on a crop around the object
            (:mod:`.zoom`; the crop is encoded once, again only when the object outgrows
            it); 0 never.
        zoom_expand: the crop is the box around the mask and the positive clicks, its
            sides times this.
        zoom_min_side: ... and at least this many image pixels per side.
        zoom_max_share: no zoom when the crop would cover more than this share of the
            image.
    """

    until: int = 0
    multimask: bool = False
    previous: bool = False
    fresh: str = "never"
    recency: float = 0.5
    iou_weight: float = 0.25
    stability_weight: float = 0.25
    single_bonus: float = 1.0
    guard: bool = True
    guard_depth: float = 0.3
    guard_keep: float = 0.7
    guard_fall: float | None = 0.02
    guard_keep_fall: float = 0.9
    guard_radius: float = 2.0
    guard_clicks: bool = False
    unfollowed: str = "paint"
    zoom_from: int = 4
    zoom_expand: float = 1.4
    zoom_min_side: int = 384
    zoom_max_share: float = 0.6

    def __post_init__(self) -> None:
        if self.fresh not in FRESH:
            raise ValueError(f"fresh must be one of {', '.join(FRESH)}, got {self.fresh!r}")
        if self.unfollowed not in UNFOLLOWED:
            raise ValueError(
                f"unfollowed must be one of {', '.join(UNFOLLOWED)}, got {self.unfollowed!r}"
            )
        if not 0 < self.recency <= 1:
            raise ValueError(f"recency must be in (0, 1], got {self.recency}")
        for name in (
            "iou_weight",
            "stability_weight",
            "single_bonus",
            "guard_depth",
            "guard_radius",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.until < 0:
            raise ValueError(f"until must be >= 0, got {self.until}")
        if self.zoom_from < 0 or self.zoom_from == 1:
            raise ValueError(f"zoom_from must be 0 (never) or a click >= 2, got {self.zoom_from}")
        if self.zoom_expand < 1 or self.zoom_min_side < 1:
            raise ValueError("zoom_expand must be >= 1 and zoom_min_side >= 1")
        if not 0 < self.zoom_max_share <= 1:
            raise ValueError(f"zoom_max_share must be in (0, 1], got {self.zoom_max_share}")
        for name in ("guard_keep", "guard_keep_fall"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.guard_fall is not None and self.guard_fall < 0:
            raise ValueError(f"guard_fall must be >= 0 or None, got {self.guard_fall}")

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> CorrectionConfig:
        """A config from field name -> string (e.g. ``{"guard": "false"}``).

        Raises:
            ValueError: an unknown field, a string that does not parse, a bad value.
        """
        return cls(**parse_fields(cls, values))


#: Plain SAM's later click as a correction config (for comparisons).
PLAIN = CorrectionConfig(multimask=False, previous=False, fresh="never", guard=False, zoom_from=0)


@dataclass(frozen=True)
class Correction:
    """The outcome of one later click.

    Attributes:
        logits: ``(256, 256) float32`` low-res logits of the new mask.
        iou: its predicted IoU.
        source: which candidate: ``"single"``, ``"multi"`` (with the previous logits),
            ``"fresh-single"``, ``"fresh-multi"`` (without), ``"previous"``, or one of them
            with ``"+edit"`` when only its change near the click was applied;
            ``"previous+paint"`` when no candidate followed the click and it was painted
            on the previous mask.
        decodes: decoder runs spent (1 or 2).
        previous_iou: the predicted IoU of the mask before the click.
        small: the click was a small correction (the guard applied).
        passed: plain SAM's answer passed the guard (True when it did not apply).
    """

    logits: np.ndarray
    iou: float
    source: str
    decodes: int
    previous_iou: float
    small: bool
    passed: bool

    def record(self) -> dict[str, Any]:
        """Everything but the logits, JSON-ready (``bench click`` keeps one per later
        click)."""
        return {
            "source": self.source,
            "iou": round(self.iou, 4),
            "previous_iou": round(self.previous_iou, 4),
            "small": self.small,
            "passed": self.passed,
            "decodes": self.decodes,
        }


class Choice(NamedTuple):
    """What :func:`choose` picked: the pool ``index``; the ``zone`` ``(lh, lw) bool`` to
    which its change is confined (:func:`local_edit`) or None to take it whole; whether
    plain SAM's answer ``passed`` the guard; whether the click was a ``small``
    correction; whether no candidate followed it and ``zone`` is to be ``painted`` with
    the click's side on the previous mask instead (:func:`paint_click`)."""

    index: int
    zone: np.ndarray | None
    passed: bool
    small: bool
    painted: bool = False


def click_values(logits: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``(N, 256, 256)`` low-res logits at ``(K, 2)`` continuous
    low-res coordinates ``(x, y)`` (pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``, as
    :func:`~.sam.frames.image_to_lowres` gives them); returns ``(N, K) float32``."""
    u = np.clip(np.asarray(xy[:, 0], np.float64) - 0.5, 0, LOW_RES - 1)
    v = np.clip(np.asarray(xy[:, 1], np.float64) - 0.5, 0, LOW_RES - 1)
    c0, r0 = np.floor(u).astype(int), np.floor(v).astype(int)
    c1, r1 = np.minimum(c0 + 1, LOW_RES - 1), np.minimum(r0 + 1, LOW_RES - 1)
    fu, fv = u - c0, v - r0
    top = logits[:, r0, c0] * (1 - fu) + logits[:, r0, c1] * fu
    bottom = logits[:, r1, c0] * (1 - fu) + logits[:, r1, c1] * fu
    return (top * (1 - fv) + bottom * fv).astype(np.float32)


def consistency(inside: np.ndarray, labels: np.ndarray, recency: float) -> np.ndarray:
    """``(N,) float64`` in [0, 1]: the weighted share of the clicks each candidate satisfies
    (a positive click inside, a negative one outside).  ``inside`` ``(N, K) bool`` whether
    click k lies in candidate n; ``labels`` ``(K,)`` 1 / 0 in click order; click k of K
    weighs ``recency ** (K - 1 - k)``."""
    k = len(labels)
    weights = recency ** np.arange(k - 1, -1, -1, dtype=np.float64)
    ok = inside == (np.asarray(labels) == 1)[None]
    return ok @ weights / weights.sum()


def scores(
    agree: np.ndarray, iou: np.ndarray, stability: np.ndarray, config: CorrectionConfig
) -> np.ndarray:
    """``(N,) float64`` selection score: ``agree`` (:func:`consistency`) plus the weighted
    predicted ``iou`` and ``stability``, each ``(N,)``."""
    return agree + config.iou_weight * iou + config.stability_weight * stability


def correction_zone(
    previous: np.ndarray, rc: tuple[int, int], positive: bool, config: CorrectionConfig
) -> np.ndarray | None:
    """The neighbourhood ``(lh, lw) bool`` of a small-correction click, or None when the
    click is not one (or the previous mask is empty).

    ``previous`` ``(lh, lw) bool`` the previous mask; ``rc`` the click's low-res (row,
    col).  The click's depth is its distance to the previous mask's boundary on its own side
    (inside for a negative click, outside for a positive one; 0 on the wrong side); it is
    small at most ``guard_depth * sqrt(area / pi)``; the zone is the disk of radius
    ``guard_radius * depth + 2`` around it."""
    area = int(previous.sum())
    if area == 0:
        return None
    depth = click_depth(previous, rc, positive)
    if depth > config.guard_depth * np.sqrt(area / np.pi):
        return None
    return _disk(previous.shape, rc, config.guard_radius * depth + 2)


def click_depth(previous: np.ndarray, rc: tuple[int, int], positive: bool) -> float:
    """Distance in low-res pixels from the click at ``rc`` (row, col) to the boundary of
    ``previous`` ``(lh, lw) bool`` on the click's own side (inside the mask for a negative
    click, outside for a positive one; 0 on the wrong side)."""
    side = previous if not positive else ~previous
    dist = cv2.distanceTransform(side.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float(dist[rc])


def _disk(shape: tuple[int, int], rc: tuple[int, int], radius: float) -> np.ndarray:
    """``shape`` bool disk of ``radius`` pixels around ``rc`` (row, col)."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - rc[0]) ** 2 + (cols - rc[1]) ** 2 <= radius**2


def paint_click(previous: np.ndarray, disk: np.ndarray, positive: bool) -> np.ndarray:
    """``(256, 256) float32`` logits: ``previous`` ``(256, 256)`` with ``disk`` (``(lh,
    lw) bool``, the top-left corner of the low-res frame) set to +10 for a positive click,
    -10 for a negative one, as a brush stroke would (:func:`local_edit` of a constant)."""
    brush = np.full((LOW_RES, LOW_RES), 10.0 if positive else -10.0, np.float32)
    return local_edit(brush, previous, disk)


def guard_ok(
    masks: np.ndarray,
    previous: np.ndarray,
    zone: np.ndarray,
    held: np.ndarray,
    keep: float | np.ndarray,
) -> np.ndarray:
    """``(N,) bool`` candidates that pass the guard of a small correction: they hold every
    earlier positive click the previous mask held (``held`` ``(N,) bool``, computed by the
    caller) and, outside ``zone`` ``(lh, lw) bool``, overlap ``previous`` ``(lh, lw) bool``
    with IoU >= ``keep`` (a number, or ``(N,)`` one per candidate).  ``masks``
    ``(N, lh, lw) bool``."""
    away = ~zone
    prev = (previous & away).reshape(-1)
    flat = (masks & away).reshape(len(masks), -1)
    inter = (flat & prev).sum(axis=1)
    union = (flat | prev).sum(axis=1)
    overlap = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return held & (overlap >= keep)


def local_edit(candidate: np.ndarray, previous: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """``(256, 256) float32`` logits: ``candidate`` inside ``zone`` (``(lh, lw) bool``, the
    top-left corner of the low-res frame), ``previous`` elsewhere (both ``(256, 256)``)."""
    full = np.zeros((LOW_RES, LOW_RES), bool)
    full[: zone.shape[0], : zone.shape[1]] = zone
    return np.where(full, candidate, previous).astype(np.float32)


@dataclass
class _Pool:
    """Candidates of one later click: ``logits`` ``(N, 256, 256)``, ``iou`` ``(N,)``,
    ``source`` ``(N,)``."""

    logits: np.ndarray
    iou: np.ndarray
    source: list[str]

    def extend(self, logits: np.ndarray, iou: np.ndarray, source: list[str]) -> None:
        self.logits = np.concatenate([self.logits, logits])
        self.iou = np.concatenate([self.iou, iou])
        self.source += source


def _decode(
    engine: SamEngine, emb: ImageEmbedding, prompt: Prompt, multimask: bool, prefix: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One decoder run of ``prompt``: the single mask, then (``multimask``) the three
    others; ``(M, 256, 256)`` logits, ``(M,)`` IoU and sources."""
    out = engine.decode(emb, [prompt], multimask="all", frame="none")
    m = 4 if multimask else 1
    source = [f"{prefix}single"] + [f"{prefix}multi"] * (m - 1)
    return out.low_res_logits[0, :m], out.iou[0, :m], source


def choose(
    pool_logits: np.ndarray,
    pool_iou: np.ndarray,
    xy: np.ndarray,
    labels: np.ndarray,
    previous: np.ndarray,
    previous_iou: float,
    shape: tuple[int, int],
    config: CorrectionConfig,
) -> Choice:
    """Choose among ``(N, 256, 256)`` candidate logits with ``(N,)`` predicted IoU (the
    first one is SAM's single mask with the previous logits: plain SAM's answer) for the
    clicks at ``(K, 2)`` low-res coordinates ``xy`` with ``(K,)`` labels (the last one is
    the new click), given the ``(256, 256)`` previous logits and their predicted IoU;
    masks are read on the ``shape`` ``(lh, lw)`` grid.

    The best :func:`scores` (plus ``single_bonus`` for plain SAM's answer) among the
    candidates that pass the guard of a small correction (all when the click is not one;
    ``guard_keep_fall`` instead of ``guard_keep`` for a candidate whose predicted IoU is
    more than ``guard_fall`` below ``previous_iou``).
    When none passes, the best candidate that follows the new click is taken near the
    click only.  When none follows it either, the click is painted on the previous mask
    (``unfollowed="paint"``: a disk around the click reaching 1.5 low-res pixels past the
    boundary, so the click is satisfied and the next one goes elsewhere) or plain SAM's
    answer is taken whole (``"answer"``).

    Returns:
        the :class:`Choice`; when plain SAM's answer did not pass, a ``fresh`` decode may
        add better candidates.
    """
    inside = click_values(pool_logits, xy) > 0
    agree = consistency(inside, labels, config.recency)
    cropped = crop_lowres(pool_logits, shape)
    score = scores(agree, pool_iou, stability_score(cropped), config)
    score[0] += config.single_bonus
    ok = np.ones(len(score), bool)
    zone = None
    positive = bool(labels[-1] == 1)
    if config.guard:
        prev_mask = crop_lowres(previous, shape) > 0
        rc = (
            min(shape[0] - 1, max(0, int(xy[-1, 1]))),
            min(shape[1] - 1, max(0, int(xy[-1, 0]))),
        )
        zone = correction_zone(prev_mask, rc, positive, config)
        if zone is not None:
            held = np.ones(len(score), bool)
            if config.guard_clicks:
                prev_in = click_values(previous[None], xy[:-1])[0] > 0
                earlier = (labels[:-1] == 1) & prev_in
                held = inside[:, :-1][:, earlier].all(axis=1)
            keep = np.full(len(score), config.guard_keep)
            if config.guard_fall is not None:
                fell = pool_iou < previous_iou - config.guard_fall
                keep[fell] = max(config.guard_keep, config.guard_keep_fall)
            ok = guard_ok(cropped > 0, prev_mask, zone, held, keep)
    small = zone is not None
    if ok.any():
        return Choice(int(np.flatnonzero(ok)[np.argmax(score[ok])]), None, bool(ok[0]), small)
    newest = inside[:, -1] == positive
    if not newest.any():  # no candidate follows the click
        if small and config.unfollowed == "paint":
            # small: the guard ran, so prev_mask and rc are the click's
            depth = click_depth(prev_mask, rc, positive)
            return Choice(0, _disk(shape, rc, depth + 1.5), False, small, painted=True)
        return Choice(0, None, False, small)
    return Choice(int(np.flatnonzero(newest)[np.argmax(score[newest])]), zone, False, small)


def correct_click(
    engine: SamEngine,
    emb: ImageEmbedding,
    points: np.ndarray,
    labels: np.ndarray,
    previous: np.ndarray,
    previous_iou: float,
    config: CorrectionConfig = CorrectionConfig(),
    box: np.ndarray | None = None,
) -> Correction:
    """A later click: the new mask for all clicks so far.

    Args:
        engine, emb: the SAM engine and the image's embedding.
        points: ``(K, 2)`` float (x, y) image pixels of every click, the new one last.
        labels: ``(K,)`` 1 positive / 0 negative.
        previous: ``(256, 256) float32`` low-res logits of the current mask.
        previous_iou: its predicted IoU.
        config: the pool, scores and guard.
        box: ``(4,)`` float x0, y0, x1, y1 image pixels of the box the object was started
            with, part of every decode (None: a click-started object).
    """
    if config.until and len(labels) > config.until:
        config = PLAIN
    prompt = Prompt(points=points, labels=labels, box=box, mask_logits=previous)
    fresh = Prompt(points=points, labels=labels, box=box)
    pool = _Pool(*_decode(engine, emb, prompt, config.multimask, ""))
    decodes = 1
    if config.previous:
        pool.extend(previous[None], np.array([previous_iou], np.float32), ["previous"])
    if config.fresh == "always":
        pool.extend(*_decode(engine, emb, fresh, config.multimask, "fresh-"))
        decodes += 1
    shape = lowres_shape(emb)
    xy = image_to_lowres(emb, np.asarray(points, np.float64) + 0.5)
    labels = np.asarray(labels)
    choice = choose(pool.logits, pool.iou, xy, labels, previous, previous_iou, shape, config)
    passed = choice.passed
    if not passed and config.fresh == "auto":
        pool.extend(*_decode(engine, emb, fresh, config.multimask, "fresh-"))
        decodes += 1
        choice = choose(pool.logits, pool.iou, xy, labels, previous, previous_iou, shape, config)
    logits, source = pool.logits[choice.index], pool.source[choice.index]
    iou = float(pool.iou[choice.index])
    if choice.painted:
        logits = paint_click(previous, choice.zone, bool(labels[-1] == 1))
        source, iou = "previous+paint", float(previous_iou)
    elif choice.zone is not None:
        logits, source = local_edit(logits, previous, choice.zone), source + "+edit"
    log.debug("later click: %s of %d candidates, %d decodes", source, len(pool.iou), decodes)
    logits = np.ascontiguousarray(logits, np.float32)
    return Correction(logits, iou, source, decodes, float(previous_iou), choice.small, passed)

"""Mask refinement behind one function: PromptMoE variants and the baselines.

``refine(engine, image, coarse, variant, config)`` embeds the image once (through the
engine's cache), moves the coarse mask to SAM's working frame (long side 1024), builds
expert maps, fuses them, places prompts and decodes there, and only upsamples the final
low-res logits to the image frame.

Variants: ``full`` (the selector picks 2 of the available experts), ``lite`` (the selector
over the six cheap experts), ``dense`` (all available experts, equal weights), and the
baselines ``samrefiner``, ``dualsight``, ``sam-box`` and ``unrefined`` (the input).  The
PromptMoE variants first ask SAM for its answer to the draft's box; when that answer
agrees with the draft (IoU above ``box_gate``) it is the result and no expert runs;
otherwise the experts' answer competes with the plain mask-prompt answer (SAMRefiner's
prompts) and the one SAM is more stable about is returned (``stable_pick``).  Last, the
draft check (:func:`keeps_draft`) returns the draft itself when it is one piece with a
smooth outline and without holes that SAM's answer fills, and SAM is unsure of that answer
(``source == "draft"``).
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cv2
import numpy as np

from .baselines import dualsight_prompt, sam_box_prompt, samrefiner_points
from .configs import parse_fields
from .experts import (
    CHEAP_EXPERTS,
    EXPERTS,
    DepthEstimator,
    ExpertInput,
    available_experts,
    expert_maps,
)
from .fusion import fuse
from .masks import mask_iou
from .ppe import GAMMA, STRENGTH, place_points, refinement_prompt
from .router import Router, context_features, load_router
from .sam import ImageEmbedding, Prompt, SamEngine, stability_score
from .sam.frames import mask_to_working

log = logging.getLogger(__name__)

VARIANTS = ("full", "lite", "dense", "samrefiner", "dualsight", "sam-box", "unrefined")

#: Gaussian blur (working-frame pixels) before the image gradient the draft check reads.
EDGE_SIGMA = 1.5

#: How closely (working-frame pixels) the polygon of :func:`outline_vertices` follows the
#: draft's outline.
OUTLINE_TOLERANCE = 2.0


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _known_experts(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) > 0 and set(value) <= set(EXPERTS)


#: Per field of :class:`RefineConfig`: the test a value must pass and what it must be.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "k": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "lam": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "floor": (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "anchor": (lambda v: isinstance(v, bool), "true or false"),
    "prompt_mix": (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "agreement_power": (lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "box_gate": (
        lambda v: v is None or (_is_real(v) and 0 <= v <= 1),
        "a number in [0, 1] or None (off)",
    ),
    "box_match": (
        lambda v: v is None or (_is_real(v) and 0 < v <= 1),
        "a number in (0, 1] or None (off)",
    ),
    "stable_pick": (lambda v: isinstance(v, bool), "true or false"),
    "keep_stability": (
        lambda v: v is None or (_is_real(v) and 0 <= v <= 1),
        "a number in [0, 1] or None (off)",
    ),
    "keep_edges": (lambda v: v is None or (_is_real(v) and v >= 0), "a number >= 0 or None (off)"),
    "keep_holes": (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "keep_main": (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "keep_vertices": (
        lambda v: v is None or (_is_real(v) and v > 0),
        "a number > 0 or None (off)",
    ),
    "iterations": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "gamma": (lambda v: _is_real(v) and v > 0, "a number > 0"),
    "strength": (lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "budget": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "grid": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "experts": (
        lambda v: v is None or _known_experts(v),
        f"None (the selector) or a non-empty tuple of names from {', '.join(EXPERTS)}",
    ),
}


@dataclass(frozen=True)
class RefineConfig:
    """Every setting of :func:`refine`.

    The defaults are tuned for MobileSAM: with it every extra positive point cost
    accuracy, and the box gate, the stable pick and the two image-informed mask-prompt
    settings gained it (docs/benchmarks.md, "Refinement").  :data:`PAPER_REFINE` is the paper's PPE.

    Attributes:
        k: PPE positives.
        lam: PPE: share of the mask suppressed around each point, in [0, 1).
        floor: PPE: eligible pixels have saliency >= ``floor`` times the maximum.
        anchor: PPE: the first positive at the mask's interior distance peak, then the
            saliency peaks.
        prompt_mix: the mask prompt's Gaussian times ``prompt_mix + (1 - prompt_mix) *
            saliency``; 1 is SAMRefiner's plain Gaussian.
        agreement_power: mask-prompt strength times ``IoU(SAM's box answer, coarse) **
            agreement_power``; 0 is off.
        box_gate: return SAM's box answer when its IoU with the coarse mask exceeds this;
            None is off.
        box_match: SAM's box answer is its best-scored mask for the draft's box, unless
            another of its three masks reproduces the draft (IoU >= ``box_match``): then
            that one, as SAM and the draft agree on the object's extent where the
            best-scored mask took a part or a whole of it.  None: always the best-scored.
        stable_pick: where the experts ran, return their answer or the plain mask-prompt
            one, whichever SAM is more stable about.
        keep_stability, keep_holes, keep_main, keep_vertices, keep_edges: the draft check
            (:func:`keeps_draft`): return the draft itself when SAM is unsure of its
            refined answer (stability score below ``keep_stability``) and the draft is
            clean: the answer fills at most ``keep_holes`` of the draft's holes (holes the
            answer leaves open are the object's own), the draft's largest piece holds at
            least ``keep_main`` of its area, and its outline is smooth: a polygon within
            :data:`OUTLINE_TOLERANCE` px of it needs at most ``keep_vertices`` vertices per
            100 px of outline (:func:`outline_vertices`, working frame; None: any
            outline).  ``keep_edges`` (None: off) also asks
            that the answer's contour does not follow strong image edges (mean edge
            strength along it below ``keep_edges``, 1 = the image's average pixel).
            ``keep_stability=None`` turns the check off.  Chosen on a tuning mix of DAVIS,
            GrabCut and COCO_MVal-dev (docs/benchmarks.md, "Draft check").
        iterations: prompt -> decode rounds (full, lite, dense, samrefiner); SAMRefiner
            uses 5, 3 saves CPU time.
        gamma, strength: shape and magnitude of the Gaussian mask prompt.
        budget: experts the selector keeps.
        grid: points per side of the SAM-everything grid.
        experts: fixed experts with equal weights instead of the selector, or None.

    Raises:
        ValueError: a field out of range or of the wrong type (the message names it).
    """

    k: int = 1
    lam: float = 0.05
    floor: float = 0.0
    anchor: bool = True
    prompt_mix: float = 0.5
    agreement_power: float = 2.0
    box_gate: float | None = 0.6
    box_match: float | None = 0.95
    stable_pick: bool = True
    keep_stability: float | None = 0.985
    keep_holes: float = 0.1
    keep_main: float = 1.0
    keep_vertices: float | None = 3.9
    keep_edges: float | None = None
    iterations: int = 3
    gamma: float = GAMMA
    strength: float = STRENGTH
    budget: int = 2
    grid: int = 6
    experts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.experts, list):
            object.__setattr__(self, "experts", tuple(self.experts))
        for name, (valid, what) in _RULES.items():
            value = getattr(self, name)
            if not valid(value):
                raise ValueError(f"RefineConfig.{name} must be {what}, got {value!r}")

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> RefineConfig:
        """A config from field name -> string, e.g. ``{"k": "5", "box_gate": "none",
        "experts": "edge,color", "anchor": "false"}``; unset fields keep their defaults.

        Raises:
            ValueError: an unknown field (the message lists the known ones), a string
                that does not parse, or a value out of range.
        """
        return cls(**parse_fields(cls, values))


#: The paper's PPE settings: k=5, lambda=0.05, gamma=4, strength=30 with a plain Gaussian
#: mask prompt, no gate and no draft check.
PAPER_REFINE = RefineConfig(
    k=5,
    prompt_mix=1.0,
    agreement_power=0.0,
    anchor=False,
    box_gate=None,
    stable_pick=False,
    keep_stability=None,
)


@dataclass
class Prompts:
    """Final prompts for drawing, image pixels: ``points`` ``(k, 2)`` (x, y), ``labels``
    ``(k,)`` 1 positive / 0 negative, ``box`` ``(4,)`` x0, y0, x1, y1 or None."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box: np.ndarray | None = None


@dataclass
class Refinement:
    """A refined mask and how it was made.

    Attributes:
        mask: ``(H, W) bool`` image frame.
        score: SAM's predicted IoU of the result (NaN for ``unrefined``).
        timings: seconds per stage (``encode`` is the wall time of the embedding lookup,
            ``embed_encoder`` the encoder's own time, 0 when the embedding was cached).
        prompts: the final prompts (:class:`Prompts`, image pixels).
        experts: the experts used and their weights (PromptMoE variants; empty when the
            box gate returned SAM's box answer).
        source: where the mask came from: ``"box"`` (SAM's box answer: ``sam-box`` or the
            gate), ``"experts"`` (the PromptMoE prompts), ``"plain"`` (the plain mask-prompt
            prompts: ``samrefiner``, or the stable pick), ``"dualsight"``, ``"coarse"``
            (the input: ``unrefined``, or an empty answer), or ``"draft"`` (the draft check
            kept the input; ``score`` is then SAM's predicted IoU of the answer it beat).
        signals: the draft check's inputs (:func:`draft_signals`; PromptMoE variants).
    """

    mask: np.ndarray
    score: float
    timings: dict[str, float]
    prompts: Prompts = field(default_factory=Prompts)
    experts: dict[str, float] = field(default_factory=dict)
    source: str = "coarse"
    signals: dict[str, float] = field(default_factory=dict)


class _Answer(NamedTuple):
    """One of SAM's answers: ``(256, 256)`` low-res logits, their predicted IoU, the prompt
    (image pixels), and, when they were read there, the logits in the working frame
    ``(h, w)`` float32."""

    logits: np.ndarray
    score: float
    prompt: Prompt
    working: np.ndarray | None = None


class _Clock:
    """Accumulates wall time per stage."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self._t
        self._t = now


def _iterate(
    engine: SamEngine,
    emb: ImageEmbedding,
    mask: np.ndarray,
    positives: Callable[[np.ndarray], np.ndarray],
    iterations: int,
    gamma: float,
    strength: float,
    clock: _Clock,
    scale: np.ndarray | None = None,
) -> _Answer | None:
    """Prompt, decode, take the most confident mask, repeat from it.

    ``mask`` ``(h, w) bool`` working frame; ``positives(mask) -> (n, 2)`` working-frame
    points; ``scale`` the mask prompt's shape (:func:`~.ppe.gaussian_mask_prompt`).
    Returns the last answer (with its working-frame logits), or None when the first
    decode came back empty.
    """
    result = None
    for _ in range(iterations):
        prompt = refinement_prompt(emb, mask, positives(mask), gamma, strength, scale)
        clock.lap("prompts")
        out = engine.decode(emb, [prompt], multimask=True, frame="none")
        i = int(out.best()[0])
        logits, score = out.low_res_logits[0, i], float(out.iou[0, i])
        clock.lap("decode")
        working = engine.upscale(emb, logits[None], "working")[0]
        clock.lap("upscale")
        new = working > 0
        if not new.any():
            break
        mask, result = new, _Answer(logits, score, prompt, working)
    return result


def _decode_pick(
    engine: SamEngine,
    emb: ImageEmbedding,
    prompt: Prompt,
    clock: _Clock,
    reference: np.ndarray,
) -> tuple[np.ndarray, float]:
    """One multimask decode: the ``(256, 256)`` low-res logits and predicted IoU of the
    candidate with the best IoU with ``reference`` ``(h, w) bool`` (working frame)."""
    out = engine.decode(emb, [prompt], multimask=True, frame="none")
    clock.lap("decode")
    cands = engine.upscale_masks(emb, out.low_res_logits[0], "working")
    i = int(np.argmax(mask_iou(cands, reference, empty=0.0)))
    clock.lap("upscale")
    return out.low_res_logits[0, i], float(out.iou[0, i])


def _agreement(
    engine: SamEngine,
    emb: ImageEmbedding,
    m0: np.ndarray,
    clock: _Clock,
    match: float | None = None,
) -> tuple[float, _Answer]:
    """SAM's answer to the tight box of ``m0`` ``(h, w) bool`` (working frame) and how well
    it agrees with ``m0``: the IoU in [0, 1] of the answer with ``m0`` (low when the image
    disagrees with the coarse mask), and the answer with its working-frame logits.

    The answer is SAM's best-scored mask, or with ``match`` (``RefineConfig.box_match``)
    the mask of the three that agrees best with ``m0`` when that IoU is at least ``match``.
    """
    prompt = sam_box_prompt(emb, m0)
    clock.lap("prompts")
    out = engine.decode(emb, [prompt], multimask=True, frame="none")
    clock.lap("decode")
    best = int(out.best()[0])
    candidates = [best] if match is None else list(range(out.low_res_logits.shape[1]))
    working = engine.upscale(emb, out.low_res_logits[0, candidates], "working")
    clock.lap("upscale")
    agree = mask_iou(working > 0, m0, empty=0.0)
    k = candidates.index(best)
    if match is not None and agree.max() >= match:
        k = int(np.argmax(agree))
    i = candidates[k]
    answer = _Answer(out.low_res_logits[0, i], float(out.iou[0, i]), prompt, working[k])
    return float(agree[k]), answer


def _edge_map(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the luminance of ``image`` ``(h, w, 3) uint8`` RGB after a
    Gaussian blur of :data:`EDGE_SIGMA`, divided by its mean over the image: ``(h, w)
    float32``, 1 = an average pixel of this image."""
    gray = cv2.GaussianBlur(
        cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), EDGE_SIGMA
    )
    mag = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    return mag / max(float(mag.mean()), 1e-6)


def _contour(mask: np.ndarray) -> np.ndarray:
    """The inner one-pixel contour ``(h, w) bool`` of ``mask`` ``(h, w) bool`` (the image
    border is not contour)."""
    return mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def draft_signals(
    emb: ImageEmbedding, m0: np.ndarray, logits: np.ndarray, box_iou: float, score: float
) -> dict[str, float]:
    """What the draft check knows at run time about the draft ``m0`` and SAM's refined
    answer, both working frame (``m0`` ``(h, w) bool``, ``logits`` ``(h, w) float32``):

    * ``box_iou``: IoU of the draft with SAM's answer to its box; ``agreement``: IoU of the
      draft with the refined answer; ``score``: SAM's predicted IoU of the refined answer;
      ``stability``: its stability score;
    * ``edge_draft`` / ``edge_result``: mean image edge strength (:func:`_edge_map`) along
      the draft's / the answer's contour; ``edge_gain``: log of their ratio (> 0 when the
      answer follows stronger edges);
    * ``area_ratio``: answer area over draft area; ``compactness``: ``4 pi A / P^2`` of
      the draft (``P`` its contour pixels);
    * ``holes_filled``: the share of the draft's holes that the answer fills;
      ``main_piece``: the share of the draft's area in its largest piece
      (:func:`draft_topology`); ``outline_vertices``: how ragged the draft's outline is
      (:func:`outline_vertices`).
    """
    new = logits > 0
    edges = _edge_map(emb.image)

    def along(mask: np.ndarray) -> float:
        ring = _contour(mask)
        return float(edges[ring].mean()) if ring.any() else 0.0

    area = int(np.count_nonzero(m0))
    perimeter = int(np.count_nonzero(_contour(m0)))
    edge_draft, edge_result = along(m0), along(new)
    return {
        "box_iou": float(box_iou),
        "agreement": float(mask_iou(new, m0, empty=0.0)),
        "score": float(score),
        "stability": float(stability_score(logits)),
        "edge_draft": edge_draft,
        "edge_result": edge_result,
        "edge_gain": float(np.log((edge_result + 0.05) / (edge_draft + 0.05))),
        "area_ratio": float(np.count_nonzero(new)) / max(area, 1),
        "compactness": min(1.0, 4 * np.pi * area / max(perimeter, 1) ** 2),
        **draft_topology(m0, new),
        "outline_vertices": outline_vertices(m0),
    }


def draft_topology(mask: np.ndarray, answer: np.ndarray) -> dict[str, float]:
    """How clean a draft ``mask`` ``(h, w) bool`` is next to SAM's ``answer`` ``(h, w)
    bool`` (any one frame): ``holes_filled``, the share of the draft's holes (background
    inside its 8-connected outer contours) that the answer covers, 0 without holes; and
    ``main_piece``, the share of the draft's area in its largest 8-connected piece, 0 for
    an empty draft.  Both in [0, 1]."""
    m = mask.astype(np.uint8)
    area = int(np.count_nonzero(m))
    if area == 0:
        return {"holes_filled": 0.0, "main_piece": 0.0}
    count, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    outer, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    holes = cv2.drawContours(m.copy(), outer, -1, 1, thickness=cv2.FILLED).astype(bool) & ~mask
    total = int(np.count_nonzero(holes))
    return {
        "holes_filled": int(np.count_nonzero(holes & answer)) / total if total else 0.0,
        "main_piece": float(stats[1:count, cv2.CC_STAT_AREA].max()) / area,
    }


def outline_vertices(mask: np.ndarray, tolerance: float = OUTLINE_TOLERANCE) -> float:
    """How ragged the outline of ``mask`` ``(h, w) bool`` is: the vertices of the polygons
    that follow its outer contours within ``tolerance`` pixels (Douglas-Peucker) per 100
    pixels of contour length; 0 for an empty mask.

    At 2 px in SAM's working frame, upsampled low-resolution masks (a model's output)
    need about 3 (median 3.2 on the tuning mix of docs/benchmarks.md), GrabCut segmentations, which
    follow every pixel-scale notch of the image, about 5 (median 5.0).
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    length = sum(cv2.arcLength(c, True) for c in contours)
    if length == 0:
        return 0.0
    vertices = sum(len(cv2.approxPolyDP(c, tolerance, True)) for c in contours)
    return 100.0 * vertices / length


def keeps_draft(signals: Mapping[str, float], config: RefineConfig) -> bool:
    """The draft check on :func:`draft_signals`: True when the draft should stay, i.e. it
    is one clean piece with a smooth outline and SAM is unsure of its answer
    (``config.keep_stability``, ``keep_holes``, ``keep_main``, and ``keep_vertices`` and
    ``keep_edges`` when set); False when the check is off."""
    return (
        config.keep_stability is not None
        and signals["stability"] < config.keep_stability
        and signals["holes_filled"] <= config.keep_holes
        and signals["main_piece"] >= config.keep_main
        and (config.keep_vertices is None or signals["outline_vertices"] <= config.keep_vertices)
        and (config.keep_edges is None or signals["edge_result"] < config.keep_edges)
    )


def _expert_saliency(
    engine: SamEngine,
    emb: ImageEmbedding,
    m0: np.ndarray,
    variant: str,
    cfg: RefineConfig,
    router: Router | None,
    depth: DepthEstimator | None,
    clock: _Clock,
) -> tuple[dict[str, float], np.ndarray]:
    """The experts a PromptMoE variant uses, with their weights, and their fused
    saliency ``(h, w) float32`` in [0, 1], working frame (``m0`` ``(h, w) bool`` likewise)."""
    names = available_experts(depth, CHEAP_EXPERTS if variant == "lite" else EXPERTS)
    if cfg.experts is not None:
        missing = set(cfg.experts) - set(names)
        if missing:
            raise ValueError(
                f"experts {sorted(missing)} are not available for {variant}; "
                f"available: {', '.join(names)}"
            )
        weights = {n: 1.0 for n in cfg.experts}
    elif variant == "dense":
        weights = {n: 1.0 for n in names}
    else:
        selector = router if router is not None else load_router()
        weights = selector.select(context_features(emb, m0), names, cfg.budget)
    clock.lap("router")
    maps = expert_maps(list(weights), ExpertInput(engine, emb, m0, depth, cfg.grid))
    clock.lap("experts")
    saliency = fuse(list(maps.values()), list(weights.values()))
    clock.lap("fusion")
    return weights, saliency


def experts_answer(
    engine: SamEngine,
    emb: ImageEmbedding,
    m0: np.ndarray,
    saliency: np.ndarray,
    config: RefineConfig,
    agreement: float,
    clock: _Clock | None = None,
) -> _Answer | None:
    """SAM's answer to the PromptMoE prompts for the draft ``m0`` ``(h, w) bool`` and the
    fused expert ``saliency`` ``(h, w) float32`` in [0, 1], both working frame: PPE points
    on the saliency, and a mask prompt weaker where the experts see little object and
    overall when SAM's box answer disagrees with the draft (``agreement`` in [0, 1],
    :func:`box_agreement`).  Returns :func:`_iterate`'s result (None: an empty first
    answer)."""
    cfg = config

    def place(mask: np.ndarray) -> np.ndarray:
        first = samrefiner_points(mask) if cfg.anchor else None
        return place_points(saliency, mask, cfg.k, cfg.lam, floor=cfg.floor, first=first)

    mix = cfg.prompt_mix
    scale = mix + (1 - mix) * saliency if mix < 1 else None
    strength = cfg.strength * agreement**cfg.agreement_power
    clock = clock or _Clock()
    return _iterate(engine, emb, m0, place, cfg.iterations, cfg.gamma, strength, clock, scale)


def box_agreement(
    engine: SamEngine, emb: ImageEmbedding, m0: np.ndarray, match: float | None = None
) -> float:
    """IoU in [0, 1] of SAM's answer to the tight box of the draft ``m0`` ``(h, w) bool``
    (working frame) with the draft: what the box gate compares with
    ``RefineConfig.box_gate`` and the mask prompt's strength follows.  ``match`` is
    ``RefineConfig.box_match`` (None: SAM's best-scored mask)."""
    return _agreement(engine, emb, m0, _Clock(), match)[0]


def _validate_inputs(
    image: np.ndarray, coarse: np.ndarray, variant: str, config: RefineConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of :func:`refine` checked: ``(image, coarse)`` as ``(H, W, 3) uint8`` and
    ``(H, W) bool`` arrays.

    Raises:
        ValueError: an unknown variant, a wrong image, a coarse mask of another size or
            an empty one.
        TypeError: ``config`` is not a :class:`RefineConfig`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if not isinstance(config, RefineConfig):
        raise TypeError(f"config must be a RefineConfig, got {type(config).__name__}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    coarse = np.asarray(coarse)
    if coarse.shape != image.shape[:2]:
        raise ValueError(f"coarse mask is {coarse.shape} but the image is {image.shape[:2]} (H, W)")
    coarse = coarse.astype(bool)
    if not coarse.any():
        raise ValueError("the coarse mask is empty: nothing to refine")
    return image, coarse


def refine(
    engine: SamEngine,
    image: np.ndarray,
    coarse: np.ndarray,
    variant: str = "full",
    config: RefineConfig = RefineConfig(),
    *,
    router: Router | None = None,
    depth: DepthEstimator | None = None,
    seed: int = 0,
) -> Refinement:
    """Refine a coarse mask.

    Args:
        engine: the shared SAM engine; the image is embedded once (cached).
        image: ``(H, W, 3) uint8`` RGB.
        coarse: ``(H, W)`` non-empty coarse mask (non-zero = object), image frame.
        variant: one of :data:`VARIANTS`.
        config: the settings (:class:`RefineConfig`).
        router: the expert selector of ``full`` and ``lite``; None reads the shipped
            weights on each call that needs them (pass one to refine many masks).
        depth: the depth estimator; None leaves the depth expert out.
        seed: seeds the random parts (DualSight's negative point).

    Returns:
        :class:`Refinement` with the ``(H, W) bool`` mask in the image frame.
    """
    image, coarse = _validate_inputs(image, coarse, variant, config)
    cfg = config
    clock = _Clock()
    if variant == "unrefined":
        clock.lap("prepare")
        return Refinement(coarse.copy(), float("nan"), clock.timings)
    emb = engine.embed(image)
    clock.lap("encode")
    clock.timings["embed_encoder"] = emb.encode_seconds
    m0 = mask_to_working(emb, coarse)
    clock.lap("prepare")
    weights: dict[str, float] = {}
    signals: dict[str, float] = {}
    if variant == "sam-box":
        answer, source = _agreement(engine, emb, m0, clock)[1], "box"
    elif variant == "dualsight":
        prompt = dualsight_prompt(emb, m0, np.random.default_rng(seed))
        clock.lap("prompts")
        logits, score = _decode_pick(engine, emb, prompt, clock, reference=m0)
        answer, source = _Answer(logits, score, prompt), "dualsight"
    else:

        def plain() -> _Answer | None:
            return _iterate(
                engine, emb, m0, samrefiner_points, cfg.iterations, cfg.gamma, cfg.strength, clock
            )

        if variant == "samrefiner":
            answer, source = plain(), "plain"
        else:
            agreement, box = 1.0, None
            check = cfg.keep_stability is not None
            if cfg.box_gate is not None or cfg.agreement_power or check:
                agreement, box = _agreement(engine, emb, m0, clock, cfg.box_match)
            if cfg.box_gate is not None and agreement > cfg.box_gate:
                # SAM's own reading of the box already matches the draft: its answer follows
                # the image's edges, and further prompts mostly pull it back to the draft.
                answer, source = box, "box"
            else:
                weights, saliency = _expert_saliency(
                    engine, emb, m0, variant, cfg, router, depth, clock
                )
                answer = experts_answer(engine, emb, m0, saliency, cfg, agreement, clock)
                source = "experts"
                if cfg.stable_pick:
                    rival = plain()
                    if rival is not None and (
                        answer is None
                        or stability_score(rival.working) > stability_score(answer.working)
                    ):
                        answer, source = rival, "plain"
            if answer is not None and box is not None and answer.working is not None:
                signals = draft_signals(emb, m0, answer.working, agreement, answer.score)
                keep = keeps_draft(signals, cfg)
                clock.lap("draft_check")
                if keep:
                    # The refined answer is likely no better than the draft: do no harm.
                    return Refinement(
                        coarse.copy(),
                        answer.score,
                        clock.timings,
                        _drawn(answer.prompt),
                        weights,
                        "draft",
                        signals,
                    )
        if answer is None:
            log.warning("refinement produced an empty mask; returning the coarse mask")
            return Refinement(coarse.copy(), 0.0, clock.timings, experts=weights, signals=signals)
    mask = engine.upscale_masks(emb, answer.logits[None], "image")[0]
    clock.lap("upscale")
    if not mask.any():
        log.warning("refinement produced an empty mask; returning the coarse mask")
        mask, source = coarse.copy(), "coarse"
    drawn = _drawn(answer.prompt)
    return Refinement(mask, answer.score, clock.timings, drawn, weights, source, signals)


def _drawn(prompt: Prompt) -> Prompts:
    """A decoded prompt (image pixels) as :class:`Prompts` for drawing."""
    if prompt.points is None:
        return Prompts(box=prompt.box)
    return Prompts(prompt.points, prompt.labels, prompt.box)

"""Mask refinement behind one function: PromptMoE variants and the baselines.

``refine(engine, image, coarse, variant)`` embeds the image once (through the engine's
cache), moves the coarse mask to SAM's working frame (long side 1024), builds expert maps,
fuses them, places prompts and decodes there, and only upsamples the final low-res
logits to the image frame.

Variants: ``full`` (the selector picks 2 of the available experts), ``lite`` (the selector
over the six cheap experts), ``dense`` (all available experts, equal weights), and the
baselines ``samrefiner``, ``dualsight``, ``sam-box`` and ``unrefined`` (the input).  The
PromptMoE variants first ask SAM for its answer to the draft's box; when that answer
agrees with the draft (IoU above ``box_gate``) it is the result and no expert runs;
otherwise the experts' answer competes with the plain mask-prompt answer (SAMRefiner's
prompts) and the one SAM is more stable about is returned (``stable_pick``).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from .cli import add_engine_options, make_engine, write_json
from .baselines import dualsight_prompt, sam_box_prompt, samrefiner_points
from .experts import CHEAP_EXPERTS, EXPERTS, ExpertInput, available_experts, depth_estimator, expert_maps
from .experts.geometry import mask_iou, to_working
from .fusion import fuse
from .ppe import GAMMA, STRENGTH, place_points, refinement_prompt
from .router import Router, context_features, load_router
from .sam import ImageEmbedding, Prompt, SamEngine, stability_score

log = logging.getLogger(__name__)

VARIANTS = ("full", "lite", "dense", "samrefiner", "dualsight", "sam-box", "unrefined")

#: Defaults of the options ``refine`` accepts.  The paper's PPE settings are k=5,
#: lambda=0.05, gamma=4, strength=30 with a plain Gaussian mask prompt, and no gate (k=5,
#: prompt_mix=1, agreement_power=0, anchor=False, box_gate=None, stable_pick=False here); with
#: MobileSAM every extra positive point cost accuracy, and the box gate, the stable pick and
#: the two image-informed mask-prompt settings below gained it (README, "Refinement").
DEFAULTS: dict[str, Any] = {
    "k": 1,  # PPE positives
    "lam": 0.05,  # PPE suppressed share of the mask per point
    "floor": 0.0,  # PPE: eligible pixels have saliency >= floor * max
    "anchor": True,  # PPE: first positive at the mask's interior distance peak, then saliency peaks
    "prompt_mix": 0.5,  # mask-prompt Gaussian times (prompt_mix + (1 - prompt_mix) * saliency); 1: SAMRefiner's
    "agreement_power": 2.0,  # mask-prompt strength times IoU(SAM's box answer, coarse) ** agreement_power; 0: off
    "box_gate": 0.6,  # return SAM's box answer when its IoU with the coarse mask exceeds this; None: off
    "stable_pick": True,  # where the experts ran, return their answer or the plain mask-prompt one, whichever is more stable
    "iterations": 3,  # prompt -> decode rounds (full, lite, dense, samrefiner); SAMRefiner uses 5, 3 saves CPU time
    "gamma": GAMMA,
    "strength": STRENGTH,
    "budget": 2,  # experts the selector keeps
    "grid": 6,  # SAM-everything grid side
    "depth_model": None,  # path or hub id; default $PROMPTMOE_DEPTH_MODEL; None: no depth expert
    "router": None,  # Router, weights path, or None for the shipped weights
    "experts": None,  # fixed experts (names or "a,b"), equal weights, instead of the selector
}


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
            prompts: ``samrefiner``, or the stable pick), ``"dualsight"`` or ``"coarse"``.
    """

    mask: np.ndarray
    score: float
    timings: dict[str, float]
    prompts: Prompts = field(default_factory=Prompts)
    experts: dict[str, float] = field(default_factory=dict)
    source: str = "coarse"


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
    for _ in range(max(1, iterations)):
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


def _decode_pick(engine, emb, prompt: Prompt, clock: _Clock, reference: np.ndarray | None = None):
    """One multimask decode; the candidate with the best predicted IoU, or the best IoU
    with ``reference`` ``(h, w) bool`` working frame when given."""
    out = engine.decode(emb, [prompt], multimask=True, frame="none")
    clock.lap("decode")
    if reference is None:
        i = int(out.best()[0])
    else:
        cands = engine.upscale(emb, out.low_res_logits[0], "working") > 0
        i = int(np.argmax(mask_iou(cands, reference)))
        clock.lap("upscale")
    return out.low_res_logits[0, i], float(out.iou[0, i])


def _box_answer(engine: SamEngine, emb: ImageEmbedding, m0: np.ndarray, clock: _Clock) -> _Answer:
    """SAM's most confident answer to the tight box of ``m0`` ``(h, w) bool`` (working
    frame), without its working-frame logits."""
    prompt = sam_box_prompt(emb, m0)
    clock.lap("prompts")
    logits, score = _decode_pick(engine, emb, prompt, clock)
    return _Answer(logits, score, prompt)


def _agreement(engine: SamEngine, emb: ImageEmbedding, m0: np.ndarray, clock: _Clock) -> tuple[float, _Answer]:
    """:func:`_box_answer` for ``m0`` ``(h, w) bool`` (working frame) and how well it agrees
    with ``m0``: the IoU in [0, 1] of the answer with ``m0`` (low when the image disagrees
    with the coarse mask), and the answer.
    """
    box = _box_answer(engine, emb, m0, clock)
    answer = engine.upscale(emb, box.logits[None], "working")[0] > 0
    clock.lap("upscale")
    return float(mask_iou(answer, m0)), box


def _router(value) -> Router:
    return value if isinstance(value, Router) else load_router(value)


def _expert_saliency(
    engine: SamEngine, emb: ImageEmbedding, m0: np.ndarray, variant: str, opt: dict[str, Any], clock: _Clock
) -> tuple[dict[str, float], np.ndarray]:
    """The experts a PromptMoE variant uses, with their weights, and their fused
    saliency ``(h, w) float32`` in [0, 1], working frame (``m0`` ``(h, w) bool`` likewise)."""
    depth = depth_estimator(opt["depth_model"])
    names = available_experts(depth, CHEAP_EXPERTS if variant == "lite" else EXPERTS)
    if opt["experts"]:
        fixed = opt["experts"].split(",") if isinstance(opt["experts"], str) else list(opt["experts"])
        missing = set(fixed) - set(names)
        if missing:
            raise ValueError(f"experts {sorted(missing)} are not available for {variant}; available: {', '.join(names)}")
        weights = {n: 1.0 for n in fixed}
    elif variant == "dense":
        weights = {n: 1.0 for n in names}
    else:
        weights = _router(opt["router"]).select(context_features(emb, m0), names, opt["budget"])
    clock.lap("router")
    maps = expert_maps(list(weights), ExpertInput(engine, emb, m0, depth, opt["grid"]))
    clock.lap("experts")
    saliency = fuse(list(maps.values()), list(weights.values()))
    clock.lap("fusion")
    return weights, saliency


def _promptmoe(
    engine: SamEngine, emb: ImageEmbedding, m0: np.ndarray, variant: str, opt: dict[str, Any], agreement: float, clock: _Clock
) -> tuple[dict[str, float], _Answer | None]:
    """The PromptMoE path for ``m0`` ``(h, w) bool`` (working frame): experts and fusion,
    PPE points on the saliency, and a mask prompt weaker where the experts see little
    object and overall when SAM's box answer disagrees with the draft (``agreement`` in
    [0, 1]).  Returns the expert weights and :func:`_iterate`'s result."""
    weights, saliency = _expert_saliency(engine, emb, m0, variant, opt, clock)

    def place(mask: np.ndarray) -> np.ndarray:
        first = samrefiner_points(mask) if opt["anchor"] else None
        return place_points(saliency, mask, opt["k"], opt["lam"], floor=opt["floor"], first=first)

    scale = opt["prompt_mix"] + (1 - opt["prompt_mix"]) * saliency if opt["prompt_mix"] < 1 else None
    strength = opt["strength"] * agreement ** opt["agreement_power"]
    return weights, _iterate(engine, emb, m0, place, opt["iterations"], opt["gamma"], strength, clock, scale)


def refine(
    engine: SamEngine,
    image: np.ndarray,
    coarse: np.ndarray,
    variant: str = "full",
    *,
    seed: int = 0,
    **options: Any,
) -> Refinement:
    """Refine a coarse mask.

    Args:
        engine: the shared SAM engine; the image is embedded once (cached).
        image: ``(H, W, 3) uint8`` RGB.
        coarse: ``(H, W) bool`` non-empty coarse mask, image frame.
        variant: one of :data:`VARIANTS`.
        seed: seeds the random parts (DualSight's negative point).
        options: overrides of :data:`DEFAULTS`.

    Returns:
        :class:`Refinement` with the ``(H, W) bool`` mask in the image frame.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown refine options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opt = {**DEFAULTS, **options}
    gate = opt["box_gate"]
    if gate is not None and (isinstance(gate, bool) or not isinstance(gate, (int, float)) or not 0 <= gate <= 1):
        raise ValueError(f"box_gate must be a number in [0, 1] or None (off), got {gate!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    coarse = np.asarray(coarse)
    if coarse.shape != image.shape[:2]:
        raise ValueError(f"coarse mask is {coarse.shape} but the image is {image.shape[:2]} (H, W)")
    coarse = coarse.astype(bool)
    if not coarse.any():
        raise ValueError("the coarse mask is empty: nothing to refine")
    clock = _Clock()
    if variant == "unrefined":
        clock.lap("prepare")
        return Refinement(coarse.copy(), float("nan"), clock.timings)
    emb = engine.embed(image)
    clock.lap("encode")
    clock.timings["embed_encoder"] = emb.encode_seconds
    m0 = to_working(emb, coarse)
    clock.lap("prepare")
    weights: dict[str, float] = {}
    if variant == "sam-box":
        answer, source = _box_answer(engine, emb, m0, clock), "box"
    elif variant == "dualsight":
        prompt = dualsight_prompt(emb, m0, np.random.default_rng(seed))
        clock.lap("prompts")
        answer, source = _Answer(*_decode_pick(engine, emb, prompt, clock, reference=m0), prompt), "dualsight"
    else:
        def plain() -> _Answer | None:
            return _iterate(engine, emb, m0, samrefiner_points, opt["iterations"], opt["gamma"], opt["strength"], clock)

        if variant == "samrefiner":
            answer, source = plain(), "plain"
        else:
            agreement, box = 1.0, None
            if gate is not None or opt["agreement_power"]:
                agreement, box = _agreement(engine, emb, m0, clock)
            if gate is not None and agreement > gate:
                # SAM's own reading of the box already matches the draft: its answer follows
                # the image's edges, and further prompts mostly pull it back to the draft.
                answer, source = box, "box"
            else:
                weights, answer = _promptmoe(engine, emb, m0, variant, opt, agreement, clock)
                source = "experts"
                if opt["stable_pick"]:
                    rival = plain()
                    if rival is not None and (
                        answer is None or stability_score(rival.working) > stability_score(answer.working)
                    ):
                        answer, source = rival, "plain"
        if answer is None:
            log.warning("refinement produced an empty mask; returning the coarse mask")
            return Refinement(coarse.copy(), 0.0, clock.timings, experts=weights)
    mask = engine.upscale(emb, answer.logits[None], "image")[0] > 0
    clock.lap("upscale")
    if not mask.any():
        log.warning("refinement produced an empty mask; returning the coarse mask")
        mask, source = coarse.copy(), "coarse"
    prompt = answer.prompt
    drawn = Prompts(box=prompt.box)
    if prompt.points is not None:
        drawn = Prompts(prompt.points, prompt.labels, prompt.box)
    return Refinement(mask, answer.score, clock.timings, drawn, weights, source)


def _run_refine(args: argparse.Namespace) -> int:
    from .images import load_image, load_mask, save_mask

    image = load_image(args.image)
    coarse = load_mask(args.mask, shape=image.shape[:2])
    options = {"router": args.router} if args.router else {}
    if args.depth_model:
        options["depth_model"] = args.depth_model
    result = refine(make_engine(args), image, coarse, args.variant, seed=args.seed, **options)
    save_mask(result.mask, args.out)
    if args.overlay:
        from PIL import Image

        from .overlay import draw_overlay

        p = result.prompts
        art = draw_overlay(image, result.mask, coarse=coarse, points=p.points, labels=p.labels, box=p.box)
        Image.fromarray(art).save(args.overlay)
    stages = " ".join(f"{k}={v:.3f}s" for k, v in result.timings.items())
    experts = " ".join(f"{k}:{v:.2f}" for k, v in result.experts.items())
    print(f"{args.variant}: {result.source} answer, predicted IoU {result.score:.3f}; {stages}" + (f"; experts {experts}" if experts else ""))
    return 0


def add_refine(sub, bench) -> None:
    p = sub.add_parser("refine", help="refine a coarse mask (PromptMoE or a baseline) and write the result PNG")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--mask", required=True, help="coarse mask image (non-zero = object), same size as the image")
    p.add_argument("--variant", default="full", choices=VARIANTS, help="method (default full)")
    p.add_argument("-o", "--out", required=True, help="refined mask PNG to write (0/255)")
    p.add_argument("--overlay", help="also write an overlay PNG (result, input contour, prompts)")
    p.add_argument("--router", help="selector weights (default: the shipped weights)")
    p.add_argument("--depth-model", help="depth model path or hub id (env PROMPTMOE_DEPTH_MODEL; default: no depth expert)")
    p.add_argument("--seed", type=int, default=0)
    add_engine_options(p)
    p.set_defaults(func=_run_refine)
    add_bench_stages(sub, bench)


#: Stages that do not run SAM's encoder or decoder (``upscale`` is the bilinear map of
#: logits to the output frame).
NON_SAM_STAGES = ("prepare", "router", "experts", "fusion", "prompts", "upscale")


def stage_timings(
    engine: SamEngine, folders: list[str], variant: str = "lite", limit: int = 5, scale: int = 4, kind: str = "morph"
) -> dict[str, dict[str, float]]:
    """Mean seconds per stage of ``variant`` on dataset images at their size and upscaled
    ``scale`` times (bicubic image, nearest mask): does the pipeline stay in the working frame?

    The box gate is off, so every annotation runs the experts, fusion and PPE."""
    import cv2
    from tqdm import tqdm

    from .eval.coarse import make_coarse, sample_seed
    from .eval.datasets import load_dataset

    sums: dict[str, dict[str, float]] = {"original": {}, f"x{scale}": {}}
    samples = [s for folder in folders for s in load_dataset(folder)[:limit]]
    for sample in tqdm(samples, desc="stage timings", unit="img"):
        image, gt, _ = sample.load()
        coarse = make_coarse(gt, image, kind, sample_seed(0, sample.name))
        big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        big_mask = cv2.resize(coarse.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) > 0
        for label, (img, mask) in (("original", (image, coarse)), (f"x{scale}", (big, big_mask))):
            engine.embed(img)  # encoder time is not a stage measured here
            out = refine(engine, img, mask, variant, box_gate=None)
            for stage, sec in out.timings.items():
                sums[label][stage] = sums[label].get(stage, 0.0) + sec / len(samples)
    for label in sums:
        sums[label]["non_sam_total"] = sum(sums[label].get(s, 0.0) for s in NON_SAM_STAGES)
    return sums


def _run_stage_bench(args: argparse.Namespace) -> int:
    result = stage_timings(make_engine(args), args.data, args.variant, args.limit, args.scale)
    labels = list(result)
    stages = [s for s in (*NON_SAM_STAGES, "non_sam_total", "decode", "encode") if s in result[labels[0]]]
    print(f"{args.variant}: mean seconds per annotation and stage")
    print(f"{'stage':14s} " + " ".join(f"{lab:>10s}" for lab in labels) + "      ratio")
    for s in stages:
        a, b = result[labels[0]].get(s, 0.0), result[labels[1]].get(s, 0.0)
        print(f"{s:14s} {a:10.4f} {b:10.4f} {b / a if a > 0 else float('nan'):10.2f}")
    write_json(args.json, {"variant": args.variant, "scale": args.scale, "limit": args.limit, "stages": result})
    return 0


def add_bench_stages(sub, bench) -> None:
    p = bench.add_parser("refine-stages", help="refinement stage timings at the original size and upscaled")
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="dataset folder; repeat for several")
    p.add_argument("--variant", default="lite", choices=[v for v in VARIANTS if v != "unrefined"])
    p.add_argument("--limit", type=int, default=5, help="first N images of each dataset (default 5)")
    p.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_engine_options(p)
    p.set_defaults(func=_run_stage_bench)

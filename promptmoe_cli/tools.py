"""Commands that run one algorithm on files: ``demo``, ``refine``, ``segment``,
``train-router``, ``train-switch``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from promptmoe_plugin.demo import run_demo
from promptmoe_plugin.eval.report import write_json
from promptmoe_plugin.eval.router_data import train_router
from promptmoe_plugin.eval.switch_data import train_switch
from promptmoe_plugin.experts.depth import DepthEstimator
from promptmoe_plugin.images import load_image, load_mask, save_mask
from promptmoe_plugin.overlay import draw_overlay
from promptmoe_plugin.refine import VARIANTS, refine
from promptmoe_plugin.router import load_router
from promptmoe_plugin.smartsam import INTENTS, SmartSamSession, make_intent

from .options import (
    Subparsers,
    add_settings_options,
    engine,
    names,
    parse_click,
    parse_reference,
    prepare_out,
    settings,
)

log = logging.getLogger(__name__)


def _run_demo(args: argparse.Namespace) -> int:
    run_demo(engine(args), out=Path(args.out), image_path=args.image)
    return 0


def _run_refine(args: argparse.Namespace) -> int:
    image = load_image(args.image)
    coarse = load_mask(args.mask, shape=image.shape[:2])
    config = settings(args)
    depth = DepthEstimator(config.depth_model) if config.depth_model else None
    router = load_router(args.router) if args.router else None
    sam = engine(args)
    result = refine(sam, image, coarse, args.variant, router=router, depth=depth, seed=args.seed)
    save_mask(result.mask, prepare_out(args.out))
    if args.overlay:
        p = result.prompts
        art = draw_overlay(
            image, result.mask, coarse=coarse, points=p.points, labels=p.labels, box=p.box
        )
        Image.fromarray(art).save(prepare_out(args.overlay))
    stages = " ".join(f"{k}={v:.3f}s" for k, v in result.timings.items())
    experts = " ".join(f"{k}:{v:.2f}" for k, v in result.experts.items())
    if result.source == "draft":  # the draft check kept it: the score is of the rejected answer
        what = f"draft kept, SAM's answer (predicted IoU {result.score:.3f}) rejected"
    else:
        what = f"{result.source} answer, predicted IoU {result.score:.3f}"
    print(f"{args.variant}: {what}; {stages}" + (f"; experts {experts}" if experts else ""))
    return 0


def _run_segment(args: argparse.Namespace) -> int:
    image = load_image(args.image)
    references = []
    for image_path, mask_path in args.reference:
        ref = load_image(image_path)
        references.append((ref, load_mask(mask_path, ref.shape[:2])))
    if args.selector == "none" and references:
        log.warning(
            "selector 'none' ignores the %d reference(s); use --selector sam or dinov2",
            len(references),
        )
    sam = engine(args)
    session = SmartSamSession(
        sam,
        image,
        intent=make_intent(args.selector, sam, args.dinov2_model),
        references=references,
        seed=args.seed,
    )
    for x, y, positive in args.click:
        session.click(x, y, positive)
    out = prepare_out(args.out)
    save_mask(session.mask, out)
    if args.overlay:
        points = np.array([(x, y) for x, y, _ in args.click])
        labels = np.array([int(p) for _, _, p in args.click])
        art = draw_overlay(image, session.mask, points=points, labels=labels)
        Image.fromarray(art).save(prepare_out(args.overlay))
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in session.timings.items())
    print(
        f"mask {int(session.mask.sum())} px, predicted IoU {session.score:.3f}, "
        f"{len(session.pool)} candidates ({timings}) -> {out}"
    )
    return 0


def _run_train_router(args: argparse.Namespace) -> int:
    figures = train_router(
        engine(args),
        args.data,
        args.holdout_data,
        args.out,
        images=args.images,
        kinds=tuple(names(args.kinds)),
        holdout=args.holdout,
        epochs=args.epochs,
        seed=args.seed,
        examples=args.examples,
        include_gated=args.include_gated,
    )
    meta = figures
    print(f"trained on {len(meta['trained_on'])} images; held out {len(meta['held_out'])} images")
    header = ("split", "n", "unref", "router", "meanpair", "oracle", "top1%", "top5%")
    print(f"{header[0]:24s} " + " ".join(f"{h:>8s}" for h in header[1:]))
    f = meta["figures"]
    rows = [
        ("train", f["train"]),
        ("held-out", f["held_out"]),
        ("held-out (lite experts)", f["held_out_lite"]),
    ]
    rows += [(f"held-out {ds}", v) for ds, v in f["held_out_by_dataset"].items()]
    for label, r in rows:
        values = (
            r["examples"],
            r["unrefined_iou"],
            r["router_iou"],
            r["mean_pair_iou"],
            r["oracle_iou"],
            r["top1_accuracy"],
            r["top5_accuracy"],
        )
        print(f"{label:24s} {values[0]:8d} " + " ".join(f"{v:8.2f}" for v in values[1:]))
    print(f"wrote {args.out}")
    write_json(args.json, meta)
    return 0


def _run_train_switch(args: argparse.Namespace) -> int:
    result = train_switch(
        engine(args),
        args.data,
        args.holdout_data,
        args.out,
        loss_weight=args.loss_weight,
        temperature=args.temperature,
        references=args.references,
        class_references=args.class_references,
        seed=args.seed,
        pools_cache=args.pools,
    )
    weights = " ".join(f"{w:.3f}" for w in result["weights"])
    print(f"weights ({len(result['weights'])} features): {weights}")
    print(
        f"{'split':9s} {'pools':24s} {'n':>5s} {'sam':>7s} {'fitted':>7s} {'L':>4s} "
        f"{'shipped':>7s} {'L':>4s}"
    )
    for split, figures in result["figures"].items():
        for group, fitted in figures["fitted"].items():
            shipped = figures.get("shipped", {}).get(group)
            tail = f" {shipped['miou']:7.2f} {shipped['losses']:4d}" if shipped else ""
            print(
                f"{split:9s} {group:24s} {fitted['pools']:5d} {fitted['miou_sam']:7.2f} "
                f"{fitted['miou']:7.2f} {fitted['losses']:4d}{tail}"
            )
    print(f"wrote {args.out}")
    write_json(args.json, result)
    return 0


def _add_training_data(p: argparse.ArgumentParser, purpose: str, suffix: str) -> None:
    """``--data``, ``--holdout-data`` and ``--out`` of a training command."""
    p.add_argument(
        "--data", nargs="+", required=True, help=f"dataset folders (image + GT) {purpose}"
    )
    p.add_argument(
        "--holdout-data",
        nargs="*",
        default=[],
        help="dataset folders used only for held-out evaluation",
    )
    p.add_argument("--out", required=True, help=f"weights file to write ({suffix})")


def register(sub: Subparsers, bench: Subparsers) -> None:
    p = sub.add_parser("demo", help="segment a bundled example image and write an overlay PNG")
    p.add_argument(
        "-o", "--out", default="demo.png", help="overlay PNG to write (default demo.png)"
    )
    p.add_argument(
        "--image",
        help="use this image instead of the bundled astronaut photo (click at its centre)",
    )
    add_settings_options(p, ("engine",))
    p.set_defaults(func=_run_demo)

    p = sub.add_parser(
        "refine", help="refine a coarse mask (PromptMoE or a baseline) and write the result PNG"
    )
    p.add_argument("--image", required=True, help="image file")
    p.add_argument(
        "--mask",
        required=True,
        help="coarse mask image (non-zero = object), same size as the image",
    )
    p.add_argument("--variant", default="full", choices=VARIANTS, help="method (default full)")
    p.add_argument("-o", "--out", required=True, help="refined mask PNG to write (0/255)")
    p.add_argument("--overlay", help="also write an overlay PNG (result, input contour, prompts)")
    p.add_argument("--router", help="expert selector weights (default: the shipped weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parts (default 0)")
    add_settings_options(p, ("engine",))
    p.add_argument(
        "--depth-model",
        dest="depth_model",
        default=None,
        help="depth model path or hub id (env PROMPTMOE_DEPTH_MODEL; default: no depth expert)",
    )
    p.set_defaults(func=_run_refine)

    p = sub.add_parser(
        "segment", help="segment the clicked object with SmartSAM and write the mask PNG"
    )
    p.add_argument("--image", required=True, help="image to segment")
    p.add_argument(
        "--click",
        type=parse_click,
        action="append",
        required=True,
        metavar="X,Y[,neg]",
        help="a click in image pixels; the first (positive) runs SmartSAM, later ones refine; "
        "repeatable",
    )
    p.add_argument(
        "--reference",
        type=parse_reference,
        action="append",
        default=[],
        metavar="IMG:MASK",
        help="a reference instance of the intended kind of object (image and mask files); "
        "repeatable",
    )
    p.add_argument(
        "--selector",
        choices=INTENTS,
        default="sam",
        help="intent selector (default sam; none = pure mode)",
    )
    p.add_argument(
        "--dinov2-model",
        help="DINOv2 folder or hub id for --selector dinov2 (default facebook/dinov2-base)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the agent (default 0)")
    p.add_argument("-o", "--out", required=True, help="mask PNG to write (0 / 255)")
    p.add_argument("--overlay", help="also write an overlay PNG of the mask and clicks")
    add_settings_options(p, ("engine",))
    p.set_defaults(func=_run_segment)

    p = sub.add_parser(
        "train-router", help="train the PromptMoE expert selector from image/GT folders"
    )
    _add_training_data(p, "for training; a share is held out by image", ".pt")
    p.add_argument(
        "--images", type=int, default=0, help="seeded random images per folder (default: all)"
    )
    p.add_argument(
        "--kinds",
        default="lowres,morph,grabcut",
        help="coarse-mask generators (default lowres,morph,grabcut)",
    )
    p.add_argument(
        "--holdout", type=float, default=1 / 3, help="share of --data images held out (default 1/3)"
    )
    p.add_argument("--epochs", type=int, default=300, help="training epochs (default 300)")
    p.add_argument(
        "--include-gated",
        action="store_true",
        help="also measure drafts the box gate answers (default: only drafts where the "
        "gate stays shut, the only ones the selector is asked about)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of sampling, split and fit (default 0)"
    )
    p.add_argument(
        "--examples",
        help="cache the measured pair IoUs here (<path>.train.npz/.holdout.npz) and reuse them",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_settings_options(p, ("engine",))
    p.set_defaults(func=_run_train_router)

    p = sub.add_parser(
        "train-switch",
        help="fit SmartSAM's learned switch (first click with references) on image/GT folders",
    )
    _add_training_data(p, "to fit on", ".json")
    p.add_argument(
        "--loss-weight",
        type=float,
        default=1.0,
        help="penalty on a choice 30+ IoU points below SAM's own answer (default 1)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.03,
        help="softmax temperature of the fitted choice (default 0.03)",
    )
    p.add_argument(
        "--references",
        type=int,
        default=5,
        help="earlier images used as references in folders without classes (default 5)",
    )
    p.add_argument(
        "--class-references",
        type=int,
        default=3,
        help="same-class instances used as references where names carry a class (default 3)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first clicks (default 0)")
    p.add_argument(
        "--pools",
        help="cache the measured first-click pools here (<path>.train.npz/.holdout.npz) "
        "and reuse them",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_settings_options(p, ("engine",))
    p.set_defaults(func=_run_train_switch)

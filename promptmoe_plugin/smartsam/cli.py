"""``promptmoe segment``: SmartSAM from the command line (clicks, references, selector)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..cli import add_engine_options, make_engine

log = logging.getLogger(__name__)


def parse_click(text: str) -> tuple[float, float, bool]:
    """``"x,y"`` or ``"x,y,neg"`` / ``"x,y,pos"`` -> (x, y, positive)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"a click is x,y or x,y,neg; got {text!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"click coordinates must be numbers; got {text!r}") from None
    if len(parts) == 3 and parts[2].lower() not in ("pos", "neg"):
        raise argparse.ArgumentTypeError(f"the third field of a click is pos or neg; got {text!r}")
    return x, y, len(parts) == 2 or parts[2].lower() == "pos"


def parse_reference(text: str) -> tuple[str, str]:
    """``"IMAGE:MASK"`` -> (image path, mask path); the split is at the last colon."""
    image, sep, mask = text.rpartition(":")
    if not sep or not image or not mask:
        raise argparse.ArgumentTypeError(f"a reference is IMAGE:MASK; got {text!r}")
    return image, mask


def run_segment(args: argparse.Namespace) -> int:
    from ..images import load_image, load_mask, save_mask
    from ..overlay import draw_overlay
    from .session import SmartSamSession

    image = load_image(args.image)
    references = []
    for image_path, mask_path in args.reference:
        ref = load_image(image_path)
        references.append((ref, load_mask(mask_path, ref.shape[:2])))
    if args.selector == "none" and references:
        log.warning("selector 'none' ignores the %d reference(s); use --selector sam or dinov2", len(references))
    session = SmartSamSession(
        make_engine(args),
        image,
        selector=args.selector,
        references=references,
        seed=args.seed,
        dinov2_model=args.dinov2_model,
    )
    for x, y, positive in args.click:
        session.click(x, y, positive)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_mask(session.mask, out)
    if args.overlay:
        points = np.array([(x, y) for x, y, _ in args.click])
        labels = np.array([int(p) for _, _, p in args.click])
        Path(args.overlay).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw_overlay(image, session.mask, points=points, labels=labels)).save(args.overlay)
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in session.timings.items())
    print(
        f"mask {int(session.mask.sum())} px, predicted IoU {session.score:.3f}, "
        f"{len(session.pool)} candidates ({timings}) -> {out}"
    )
    return 0


def add_segment(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from .selectors import SELECTORS

    p = sub.add_parser("segment", help="segment the clicked object with SmartSAM and write the mask PNG")
    p.add_argument("--image", required=True, help="image to segment")
    p.add_argument(
        "--click",
        type=parse_click,
        action="append",
        required=True,
        metavar="X,Y[,neg]",
        help="a click in image pixels; the first (positive) runs SmartSAM, later ones refine; repeatable",
    )
    p.add_argument(
        "--reference",
        type=parse_reference,
        action="append",
        default=[],
        metavar="IMG:MASK",
        help="a reference instance of the intended kind of object (image and mask files); repeatable",
    )
    p.add_argument("--selector", choices=SELECTORS, default="sam", help="intent selector (default sam; none = pure mode)")
    p.add_argument("--dinov2-model", help="DINOv2 folder or hub id for --selector dinov2 (default facebook/dinov2-base)")
    p.add_argument("--seed", type=int, default=0, help="seed of the agent (default 0)")
    p.add_argument("-o", "--out", required=True, help="mask PNG to write (0 / 255)")
    p.add_argument("--overlay", help="also write an overlay PNG of the mask and clicks")
    add_engine_options(p)
    p.set_defaults(func=run_segment)

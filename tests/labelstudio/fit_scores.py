"""Fit the calibration of the backend's prediction scores (``ls_backend.results``).

SAM's predicted IoU is not a probability: it passes 1.0 for confident masks, and raw it
tells little about how good a mask is across images.  The backend maps it through
``sigmoid(a * (raw - b))``, one (a, b) per source (clicks, boxes), fitted here by least
squares to the true IoU of the masks the backend makes on a small tuning mix of the
benchmark images (never copied into the project).  Usage (about 3 minutes on a CPU):

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/labelstudio/fit_scores.py \\
        --data ../shared/data/DAVIS --data ../shared/data/GrabCut \\
        --data ../shared/data/COCO_MVal-dev --per-dataset 15 --seed 5

It prints the fitted constants and, per source, the mean absolute error of the score
as an estimate of the true IoU before (raw, clipped to [0, 1]) and after calibration,
and the spread of the scores.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy.optimize import curve_fit

from promptmoe_plugin.eval.clicker import Clicker
from promptmoe_plugin.eval.datasets import sample_datasets
from promptmoe_plugin.sam import Prompt, SamEngine
from promptmoe_plugin.smartsam import SmartSamSession
from promptmoe_plugin.smartsam.intent import make_intent


def _iou(mask: np.ndarray, gt: np.ndarray, ignore: np.ndarray) -> float:
    valid = ~ignore
    union = ((mask | gt) & valid).sum()
    return float(((mask & gt) & valid).sum() / union) if union else 1.0


def _sigmoid(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a * (x - b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--per-dataset", type=int, default=15)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    engine = SamEngine.create(device="cpu", cache_mb=128)
    intent = make_intent("sam", engine)
    pairs: dict[str, list[tuple[float, float]]] = {"click": [], "box": []}
    for _, samples in sample_datasets(args.data, args.per_dataset, rng=rng):
        for sample in samples:
            image, gt, ignore = sample.load()
            clicker = Clicker(gt, ignore)
            session = SmartSamSession(engine, image, intent=intent)
            pred = np.zeros_like(gt)
            for _ in range(3):  # clicks 1-3: masks of every quality
                click = clicker.next_click(pred)
                if click is None:
                    break
                pred = session.click(click.x, click.y, click.positive)
                pairs["click"].append((float(session.score), _iou(pred, gt, ignore)))
            ys, xs = np.nonzero(gt)
            h, w = gt.shape
            for jitter in (0.0, 0.15, 0.3):  # a tight box, then rougher ones
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                d = jitter * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
                box = np.array([x0, y0, x1, y1]) + rng.uniform(-1, 1, 4) * d
                box = np.clip(box, 0, [w, h, w, h])
                out = engine.decode(engine.embed(image), [Prompt(box=box)], multimask=False)
                pairs["box"].append((float(out.iou[0, 0]), _iou(out.masks[0, 0], gt, ignore)))
    for source, values in pairs.items():
        raw, true = np.array(values).T
        (a, b), _ = curve_fit(_sigmoid, raw, true, p0=(10.0, 0.8), maxfev=10000)
        cal = _sigmoid(raw, a, b)
        sys.stdout.write(
            f"{source}: n={len(raw)} a={a:.3f} b={b:.4f} | mean |score - IoU| raw "
            f"{np.abs(np.clip(raw, 0, 1) - true).mean():.3f} calibrated "
            f"{np.abs(cal - true).mean():.3f} | raw >= 1: {(raw >= 1).mean():.0%} | "
            f"calibrated range {cal.min():.3f}-{cal.max():.3f} | true IoU mean {true.mean():.3f}\n"
        )


if __name__ == "__main__":
    main()

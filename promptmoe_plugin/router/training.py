"""Training the selector: measure every expert pair's refined IoU, fit the pair scores.

For an image, a ground truth and a coarse mask, :func:`measure_pairs` refines the mask
once per expert pair (equal weights, one PPE step, decoded in one batch) and records the
IoU with the ground truth; :func:`fit` fits the network's pair scores to those IoUs with
a listwise softmax loss.  Collecting examples from dataset folders is the evaluation
layer's job (``promptmoe_plugin.eval.router_data``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..experts import EXPERTS, DepthEstimator, ExpertInput, available_experts, expert_maps
from ..fusion import fuse
from ..masks import mask_iou
from ..ppe import GAMMA, STRENGTH, place_points, refinement_prompt
from ..sam import SamEngine
from ..sam.frames import mask_to_working, working_to_image
from .features import context_features
from .network import DEFAULT_WEIGHTS, PairRouter, Router, load_router, save_router

#: Temperature (IoU units) of the listwise training target over pairs.
TARGET_TEMPERATURE = 0.01


@dataclass
class Example:
    """One training item: a context and the refined IoU of each expert pair.

    Attributes:
        name: the image (``dataset/sample``); examples of one image share a name.
        kind: how the coarse mask was made.
        context: ``(518,) float32`` (:func:`~.features.context_features`).
        iou: ``(n, n) float32`` refined IoU per expert pair, indexed like
            :data:`~promptmoe_plugin.experts.EXPERTS`; NaN where the pair was not
            measured (unavailable experts).
        unrefined: IoU of the coarse mask itself.
    """

    name: str
    kind: str
    context: np.ndarray
    iou: np.ndarray
    unrefined: float


def measure_pairs(
    engine: SamEngine,
    image: np.ndarray,
    coarse: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray | None = None,
    names: Sequence[str] = EXPERTS,
    k: int = 5,
    lam: float = 0.05,
    grid: int = 6,
    depth: DepthEstimator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Context and ``(n, n)`` refined IoU of every pair of ``names`` (one step, equal weights).

    ``image`` ``(H, W, 3) uint8``; ``coarse``, ``gt``, ``ignore`` ``(H, W) bool`` image frame
    (``ignore`` pixels left out of the IoU; two empty masks count as IoU 1).  ``depth``
    None leaves the depth expert out.  The positives differ per pair; negative point, box
    and mask prompt are shared, and prompts with identical points are decoded once.
    """
    emb = engine.embed(image)
    m0 = mask_to_working(emb, coarse)
    names = available_experts(depth, tuple(names))
    maps = expert_maps(names, ExpertInput(engine, emb, m0, depth, grid))
    base = refinement_prompt(emb, m0, np.zeros((0, 2)), GAMMA, STRENGTH)
    pairs = list(itertools.combinations(names, 2))
    prompts, slot, index = [], [], {}
    for e, f in pairs:
        pts = place_points(fuse([maps[e], maps[f]], [1.0, 1.0]), m0, k, lam)
        key = pts.tobytes()
        if key not in index:
            index[key] = len(prompts)
            img_pts = working_to_image(emb, pts)
            positive = np.ones(len(img_pts), np.int64)
            if base.points is None:
                points, labels = img_pts, positive
            else:
                points = np.vstack([img_pts, base.points])
                labels = np.append(positive, base.labels)
            prompts.append(dataclasses.replace(base, points=points, labels=labels))
        slot.append(index[key])
    out = engine.decode(emb, prompts, multimask=True, frame="none")
    best = out.low_res_logits[np.arange(len(prompts)), out.best()]
    masks = engine.upscale_masks(emb, best, "image")
    measured = [mask_iou(m, gt, ignore=ignore, empty=1.0) for m in masks]
    table = np.full((len(EXPERTS), len(EXPERTS)), np.nan, np.float32)
    for (e, f), s in zip(pairs, slot, strict=True):
        i, j = EXPERTS.index(e), EXPERTS.index(f)
        table[i, j] = table[j, i] = measured[s]
    return context_features(emb, m0), table


def make_example(
    engine: SamEngine,
    name: str,
    kind: str,
    image: np.ndarray,
    coarse: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray | None = None,
    names: Sequence[str] = EXPERTS,
    depth: DepthEstimator | None = None,
) -> Example:
    """:func:`measure_pairs` of one image-frame ``coarse`` mask as an :class:`Example`."""
    context, table = measure_pairs(engine, image, coarse, gt, ignore, names, depth=depth)
    return Example(name, kind, context, table, mask_iou(coarse, gt, ignore=ignore, empty=1.0))


def _pair_arrays(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contexts ``(E, 518)``, upper-triangle pair IoUs ``(E, P)`` and the triangle's indices."""
    iu = np.triu_indices(len(EXPERTS), 1)
    ious = np.stack([ex.iou[iu] for ex in examples])
    return np.stack([ex.context for ex in examples]), ious, iu


def fit(
    examples: Sequence[Example],
    base: Router | None = None,
    epochs: int = 300,
    seed: int = 0,
    lr: float = 3e-3,
) -> Router:
    """Fit pair scores to measured IoUs with a listwise softmax loss (full batch, AdamW),
    from scratch or from ``base`` (its weights and standardisation)."""
    if len(examples) == 0:
        raise ValueError("no training examples")
    torch.manual_seed(seed)
    contexts, ious, (ii, jj) = _pair_arrays(examples)
    if base is None:
        mean, std = contexts.mean(axis=0), contexts.std(axis=0) + 1e-3
        net = PairRouter()
    else:
        mean, std = base.mean, base.std
        net = PairRouter()
        net.load_state_dict(base.net.state_dict())
    valid = torch.as_tensor(np.isfinite(ious))
    target = torch.as_tensor(np.nan_to_num(ious, nan=0.0)) / TARGET_TEMPERATURE
    target = F.softmax(target.masked_fill(~valid, -torch.inf), dim=1)
    x = torch.as_tensor((contexts - mean) / std, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    net.train()
    for _ in range(epochs):
        s = net(x)[:, ii, jj].masked_fill(~valid, -torch.inf)
        loss = -(target * F.log_softmax(s, dim=1).masked_fill(~valid, 0)).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    meta = {"train_loss": float(loss.detach())}
    return Router(net, mean.astype(np.float32), std.astype(np.float32), meta)


def evaluate(
    router: Router, examples: Sequence[Example], names: Sequence[str] = EXPERTS
) -> dict[str, float]:
    """Figures of the router's top-2 pick on ``examples`` (mean IoU in points, accuracy in %).

    ``top1`` / ``top5``: the picked pair is the best / among the five best measured pairs
    (ties within 0.1 IoU points count as best); ``router``, ``mean_pair``, ``oracle``: mean
    refined IoU of the picked pair, of all pairs, and of the best pair per example.
    """
    if len(examples) == 0:
        return {}
    picked, mean_pair, oracle, top1, top5 = [], [], [], [], []
    for ex in examples:
        avail = [n for n in names if np.isfinite(ex.iou[EXPERTS.index(n)]).any()]
        chosen = list(router.select(ex.context, avail, 2))
        i, j = EXPERTS.index(chosen[0]), EXPERTS.index(chosen[-1])
        vals = ex.iou[np.triu_indices(len(EXPERTS), 1)]
        vals = vals[np.isfinite(vals)]
        got = float(ex.iou[i, j])
        picked.append(got)
        mean_pair.append(float(vals.mean()))
        oracle.append(float(vals.max()))
        top1.append(got >= vals.max() - 1e-3)
        top5.append(got >= np.sort(vals)[::-1][:5][-1] - 1e-3)
    return {
        "examples": len(examples),
        "router_iou": 100 * float(np.mean(picked)),
        "mean_pair_iou": 100 * float(np.mean(mean_pair)),
        "oracle_iou": 100 * float(np.mean(oracle)),
        "unrefined_iou": 100 * float(np.mean([ex.unrefined for ex in examples])),
        "top1_accuracy": 100 * float(np.mean(top1)),
        "top5_accuracy": 100 * float(np.mean(top5)),
    }


def refit_router(
    engine: SamEngine,
    triples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    out_path: str | Path,
    base_weights: str | Path | None = None,
    epochs: int = 100,
    names: Sequence[str] = EXPERTS,
    depth: DepthEstimator | None = None,
) -> dict:
    """Active learning: refit the selector from ``(image, draft, final)`` triples.

    Each triple is an ``(H, W, 3) uint8`` image, the draft (coarse) ``(H, W) bool`` mask the
    annotator started from and the ``(H, W) bool`` mask they accepted; the final mask plays
    the ground truth.  Starts from ``base_weights`` (default: the shipped weights) and
    writes the refit weights to ``out_path``.

    Returns:
        figures: examples, loss, and :func:`evaluate` on the triples before and after.
    """
    if len(triples) == 0:
        raise ValueError("refit_router needs at least one (image, draft, final) triple")
    examples = []
    for n, (image, draft, final) in enumerate(triples):
        if draft.shape != image.shape[:2] or final.shape != image.shape[:2] or not draft.any():
            raise ValueError(
                f"triple {n}: draft and final must be non-empty (H, W) masks matching the image"
            )
        examples.append(
            make_example(engine, f"triple{n}", "draft", image, draft, final, None, names, depth)
        )
    base = load_router(base_weights)
    before = evaluate(base, examples, names)
    router = fit(examples, base=base, epochs=epochs)
    loss = router.meta["train_loss"]
    router.meta = {
        **base.meta,
        "refit_examples": len(examples),
        "refit_from": str(base_weights or DEFAULT_WEIGHTS),
    }
    save_router(router, out_path)
    after = evaluate(router, examples, names)
    return {
        "examples": len(examples),
        "loss": loss,
        "before": before,
        "after": after,
        "out": str(out_path),
    }


def save_examples(examples: Sequence[Example], path: str | Path) -> None:
    """Write ``examples`` to one ``.npz`` file (read back by :func:`load_examples`)."""
    np.savez_compressed(
        path,
        names=np.array([e.name for e in examples]),
        kinds=np.array([e.kind for e in examples]),
        contexts=np.stack([e.context for e in examples]),
        ious=np.stack([e.iou for e in examples]),
        unrefined=np.array([e.unrefined for e in examples]),
    )


def load_examples(path: str | Path) -> list[Example]:
    """The examples :func:`save_examples` wrote to ``path``."""
    z = np.load(path)
    columns = zip(z["names"], z["kinds"], z["contexts"], z["ious"], z["unrefined"], strict=True)
    return [Example(str(n), str(k), c, i, float(u)) for n, k, c, i, u in columns]


def split_by_image(
    examples: Sequence[Example], holdout: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``: a seeded ``holdout`` share of the image names is held out,
    with every example of those images."""
    names = sorted({e.name for e in examples})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(names)[: round(holdout * len(names))])
    return [e for e in examples if e.name not in held], [e for e in examples if e.name in held]

"""Dynamic Expert Selector (DES): a small network that picks two experts per image and mask.

Context (518 numbers): SAM's image embedding averaged over its 64x64 grid (256), the
embedding averaged over the coarse mask and L2-normalised (256), and six shape features
of the mask.  The network scores every expert pair, ``S_ef = U_e + U_f + I_ef`` (utility
heads on learned expert embeddings, a symmetric interaction head); gating with budget
``b`` takes ``logsumexp_{f != e} S_ef`` per expert, a softmax, the top ``b``, renormalised.

Training (``promptmoe train-router``) measures, for image/ground-truth pairs with
generated coarse masks, the refined IoU of every expert pair (one refinement step, equal
weights, decoded in one batch) and fits the pair scores with a listwise softmax loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .cli import add_engine_options, make_engine, write_json
from .experts import CHEAP_EXPERTS, EXPERTS, ExpertInput, available_experts, depth_estimator, expert_maps
from .experts.geometry import to_image_frame, to_working
from .fusion import fuse
from .ppe import GAMMA, STRENGTH, place_points, refinement_prompt
from .sam import ImageEmbedding, SamEngine

log = logging.getLogger(__name__)

CONTEXT_DIM = 256 + 256 + 6
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "router.pt"
#: Temperature (IoU units) of the listwise training target over pairs.
TARGET_TEMPERATURE = 0.01


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Six shape numbers of a ``(h, w) bool`` mask: area share, box fill, aspect w/h,
    perimeter / (h w), compactness 4 pi A / P^2, number of connected components."""
    h, w = mask.shape
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    if area == 0:
        return np.zeros(6, np.float32)
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = max(1.0, sum(cv2.arcLength(c, True) for c in contours))
    components = cv2.connectedComponents(mask.astype(np.uint8))[0] - 1
    return np.array(
        [area / (h * w), area / (bw * bh), bw / bh, perimeter / (h * w), 4 * np.pi * area / perimeter**2, components],
        np.float32,
    )


def context_features(emb: ImageEmbedding, mask: np.ndarray) -> np.ndarray:
    """``(518,) float32`` context of an image embedding and a working-frame ``(h, w) bool`` mask."""
    feats = emb.features[0].float().cpu().numpy()  # (256, 64, 64) over the padded 1024 frame
    grid = feats.shape[-1]
    padded = np.zeros((1024, 1024), np.float32)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    weight = cv2.resize(padded, (grid, grid), interpolation=cv2.INTER_AREA)
    if weight.sum() <= 0:
        ys, xs = np.nonzero(mask)
        weight[int(ys.mean()) * grid // 1024, int(xs.mean()) * grid // 1024] = 1.0
    pooled = (feats * weight).sum(axis=(1, 2)) / weight.sum()
    pooled /= max(float(np.linalg.norm(pooled)), 1e-8)
    return np.concatenate([feats.mean(axis=(1, 2)), pooled, shape_features(mask)]).astype(np.float32)


class PairRouter(nn.Module):
    """Scores ``S`` ``(B, n, n)`` of expert pairs from ``(B, 518)`` standardised contexts."""

    def __init__(self, n_experts: int = len(EXPERTS), context_dim: int = CONTEXT_DIM, dim: int = 32, hidden: int = 64):
        super().__init__()
        self.experts = nn.Parameter(torch.randn(n_experts, dim) * 0.1)
        self.encoder = nn.Sequential(nn.Linear(context_dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim))
        self.utility = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.interaction = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        enc = self.encoder(context)  # (B, d)
        b, n, d = enc.shape[0], *self.experts.shape
        v = self.experts[None].expand(b, n, d)
        e = enc[:, None].expand(b, n, d)
        u = self.utility(torch.cat([e * v, e, v], dim=-1))[..., 0]  # (B, n)
        vi, vj = v[:, :, None].expand(b, n, n, d), v[:, None].expand(b, n, n, d)
        ee = enc[:, None, None].expand(b, n, n, d)
        pair = torch.cat([vi + vj, vi * vj, (vi - vj).abs(), ee], dim=-1)
        inter = self.interaction(pair)[..., 0]
        inter = (inter + inter.transpose(1, 2)) / 2 * (1 - torch.eye(n, device=inter.device))
        return u[:, :, None] + u[:, None, :] + inter


@dataclass
class Router:
    """A trained selector: the network, the context standardisation and its provenance."""

    net: PairRouter
    mean: np.ndarray
    std: np.ndarray
    meta: dict = field(default_factory=dict)

    @torch.inference_mode()
    def pair_scores(self, context: np.ndarray) -> np.ndarray:
        """``(n, n)`` float32 pair scores for one ``(518,)`` context."""
        self.net.eval()
        x = torch.as_tensor((context - self.mean) / self.std)[None]
        return self.net(x)[0].numpy()

    def select(self, context: np.ndarray, available: Sequence[str], budget: int = 2) -> dict[str, float]:
        """Top-``budget`` experts among ``available`` with their mixture weights (sum 1)."""
        idx = [EXPERTS.index(n) for n in available]
        if len(idx) == 0:
            raise ValueError("no expert available")
        if len(idx) == 1:
            return {available[0]: 1.0}
        s = self.pair_scores(context)[np.ix_(idx, idx)].astype(np.float64)
        np.fill_diagonal(s, -np.inf)
        top = s.max(axis=1, keepdims=True)
        logits = (top + np.log(np.exp(s - top).sum(axis=1, keepdims=True)))[:, 0]
        order = np.argsort(-logits, kind="stable")[: max(1, budget)]
        gate = np.exp(logits[order] - logits[order].max())
        gate /= gate.sum()
        return {available[i]: float(g) for i, g in zip(order, gate)}


def save_router(router: Router, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state": router.net.state_dict(), "mean": router.mean, "std": router.std, "meta": router.meta, "experts": EXPERTS},
        path,
    )


_loaded: dict[str, Router] = {}


def load_router(path: str | Path | None = None) -> Router:
    """Load selector weights (default: the weights shipped in ``promptmoe_plugin/weights``)."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    key = str(path.resolve())
    if key not in _loaded:
        if not path.is_file():
            raise FileNotFoundError(f"router weights {path} not found (train them with `promptmoe train-router`)")
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if tuple(blob["experts"]) != EXPERTS:
            raise ValueError(f"{path}: weights are for experts {blob['experts']}, this version has {EXPERTS}")
        net = PairRouter()
        net.load_state_dict(blob["state"])
        _loaded[key] = Router(net, np.asarray(blob["mean"], np.float32), np.asarray(blob["std"], np.float32), blob["meta"])
    return _loaded[key]


# --------------------------------------------------------------------------- training


@dataclass
class Example:
    """One training item: a context and the refined IoU of each expert pair.

    ``iou`` ``(n, n)`` float32, NaN where the pair was not measured (unavailable experts)."""

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
) -> tuple[np.ndarray, np.ndarray]:
    """Context and ``(n, n)`` refined IoU of every pair of ``names`` (one step, equal weights).

    ``image`` ``(H, W, 3) uint8``; ``coarse``, ``gt``, ``ignore`` ``(H, W) bool`` image frame.
    The positives differ per pair; negative point, box and mask prompt are shared, and
    prompts with identical points are decoded once.
    """
    from .eval.metrics import iou as mask_iou

    emb = engine.embed(image)
    m0 = to_working(emb, coarse)
    depth = depth_estimator() if "depth" in names else None
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
            img_pts = to_image_frame(emb, pts)
            points = img_pts if base.points is None else np.vstack([img_pts, base.points])
            labels = np.ones(len(img_pts), np.int64) if base.labels is None else np.append(np.ones(len(img_pts), np.int64), base.labels)
            prompts.append(dataclasses.replace(base, points=points, labels=labels))
        slot.append(index[key])
    out = engine.decode(emb, prompts, multimask=True, frame="none")
    best = out.low_res_logits[np.arange(len(prompts)), out.best()]
    masks = engine.upscale(emb, best, "image") > 0
    measured = [mask_iou(m, gt, ignore) for m in masks]
    table = np.full((len(EXPERTS), len(EXPERTS)), np.nan, np.float32)
    for (e, f), s in zip(pairs, slot):
        i, j = EXPERTS.index(e), EXPERTS.index(f)
        table[i, j] = table[j, i] = measured[s]
    return context_features(emb, m0), table


def _pair_arrays(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    """Fit pair scores to measured IoUs with a listwise softmax loss (full batch, AdamW)."""
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
    return Router(net, mean.astype(np.float32), std.astype(np.float32), {"train_loss": float(loss.detach())})


def evaluate(router: Router, examples: Sequence[Example], names: Sequence[str] = EXPERTS) -> dict[str, float]:
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
        top5.append(got >= np.sort(vals)[::-1][: 5][-1] - 1e-3)
    return {
        "examples": len(examples),
        "router_iou": 100 * float(np.mean(picked)),
        "mean_pair_iou": 100 * float(np.mean(mean_pair)),
        "oracle_iou": 100 * float(np.mean(oracle)),
        "unrefined_iou": 100 * float(np.mean([ex.unrefined for ex in examples])),
        "top1_accuracy": 100 * float(np.mean(top1)),
        "top5_accuracy": 100 * float(np.mean(top5)),
    }


def make_example(engine: SamEngine, name: str, kind: str, image, coarse, gt, ignore=None, names=EXPERTS) -> Example:
    from .eval.metrics import iou as mask_iou

    context, table = measure_pairs(engine, image, coarse, gt, ignore, names)
    return Example(name, kind, context, table, mask_iou(coarse, gt, ignore))


def refit_router(
    engine: SamEngine,
    triples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    out_path: str | Path,
    base_weights: str | Path | None = None,
    epochs: int = 100,
    names: Sequence[str] = EXPERTS,
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
            raise ValueError(f"triple {n}: draft and final must be non-empty (H, W) masks matching the image")
        examples.append(make_example(engine, f"triple{n}", "draft", image, draft, final, None, names))
    base = load_router(base_weights)
    before = evaluate(base, examples, names)
    router = fit(examples, base=base, epochs=epochs)
    loss = router.meta["train_loss"]
    router.meta = {**base.meta, "refit_examples": len(examples), "refit_from": str(base_weights or DEFAULT_WEIGHTS)}
    save_router(router, out_path)
    after = evaluate(router, examples, names)
    return {"examples": len(examples), "loss": loss, "before": before, "after": after, "out": str(out_path)}


def _collect(engine: SamEngine, folders: Sequence[str], images: int, kinds: Sequence[str], rng: np.random.Generator, desc: str):
    """Examples from ``images`` seeded-random images of each folder, every coarse kind."""
    from tqdm import tqdm

    from .eval.coarse import make_coarse, sample_seed
    from .eval.datasets import dataset_name, load_dataset

    chosen = []
    for folder in folders:
        samples = load_dataset(folder)
        order = rng.permutation(len(samples))[: images or len(samples)]
        chosen += [(dataset_name(folder), samples[i]) for i in sorted(order)]
    examples = []
    for dataset, sample in tqdm(chosen, desc=desc, unit="image"):
        image, gt, ignore = sample.load()
        for kind in kinds:
            coarse = make_coarse(gt, image, kind, sample_seed(0, sample.name))
            if coarse.any():
                examples.append(make_example(engine, f"{dataset}/{sample.name}", kind, image, coarse, gt, ignore))
    return examples


def _save_examples(examples: Sequence[Example], path: Path) -> None:
    np.savez_compressed(
        path,
        names=np.array([e.name for e in examples]),
        kinds=np.array([e.kind for e in examples]),
        contexts=np.stack([e.context for e in examples]),
        ious=np.stack([e.iou for e in examples]),
        unrefined=np.array([e.unrefined for e in examples]),
    )


def _load_examples(path: Path) -> list[Example]:
    z = np.load(path)
    return [Example(str(n), str(k), c, i, float(u)) for n, k, c, i, u in zip(z["names"], z["kinds"], z["contexts"], z["ious"], z["unrefined"])]


def _split_by_image(examples: Sequence[Example], holdout: float, seed: int) -> tuple[list[Example], list[Example]]:
    names = sorted({e.name for e in examples})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(names)[: round(holdout * len(names))])
    return [e for e in examples if e.name not in held], [e for e in examples if e.name in held]


def train_router(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    cache = Path(args.examples) if args.examples else None
    if cache and cache.with_suffix(".train.npz").is_file():
        train_pool = _load_examples(cache.with_suffix(".train.npz"))
        extra = _load_examples(cache.with_suffix(".holdout.npz")) if cache.with_suffix(".holdout.npz").is_file() else []
        log.info("loaded %d + %d examples from %s", len(train_pool), len(extra), cache)
    else:
        engine = make_engine(args)
        kinds = args.kinds.split(",")
        train_pool = _collect(engine, args.data, args.images, kinds, rng, "training images")
        extra = _collect(engine, args.holdout_data, args.images, kinds, rng, "held-out images") if args.holdout_data else []
        if cache:
            _save_examples(train_pool, cache.with_suffix(".train.npz"))
            if extra:
                _save_examples(extra, cache.with_suffix(".holdout.npz"))
    train, held = _split_by_image(train_pool, args.holdout, args.seed)
    held = held + extra
    t0 = time.perf_counter()
    router = fit(train, epochs=args.epochs, seed=args.seed)
    figures = {"train": evaluate(router, train), "held_out": evaluate(router, held)}
    for name, subset in (("held_out_lite", held),):
        figures[name] = evaluate(router, subset, CHEAP_EXPERTS)
    by_dataset = {}
    for ds in sorted({e.name.split("/")[0] for e in held}):
        by_dataset[ds] = evaluate(router, [e for e in held if e.name.startswith(ds + "/")])
    figures["held_out_by_dataset"] = by_dataset
    router.meta = {
        "trained_on": sorted({e.name for e in train}),
        "held_out": sorted({e.name for e in held}),
        "kinds": sorted({e.kind for e in train}),
        "seed": args.seed,
        "epochs": args.epochs,
        "figures": figures,
        "fit_seconds": time.perf_counter() - t0,
    }
    save_router(router, args.out)
    print(f"trained on {len(train)} examples ({len(router.meta['trained_on'])} images); held out {len(held)} examples ({len(router.meta['held_out'])} images)")
    print(f"{'split':24s} {'n':>4s} {'unref':>6s} {'router':>7s} {'meanpair':>8s} {'oracle':>7s} {'top1%':>6s} {'top5%':>6s}")
    rows = [("train", figures["train"]), ("held-out", figures["held_out"]), ("held-out (lite experts)", figures["held_out_lite"])]
    rows += [(f"held-out {ds}", f) for ds, f in by_dataset.items()]
    for label, f in rows:
        print(
            f"{label:24s} {f['examples']:4d} {f['unrefined_iou']:6.2f} {f['router_iou']:7.2f} {f['mean_pair_iou']:8.2f} "
            f"{f['oracle_iou']:7.2f} {f['top1_accuracy']:6.1f} {f['top5_accuracy']:6.1f}"
        )
    print(f"wrote {args.out}")
    write_json(args.json, router.meta)
    return 0


def add_train_router(sub, bench) -> None:
    p = sub.add_parser("train-router", help="train the PromptMoE expert selector from image/GT folders")
    p.add_argument("--data", nargs="+", required=True, help="dataset folders (image + GT) for training; a share is held out by image")
    p.add_argument("--holdout-data", nargs="*", default=[], help="dataset folders used only for held-out evaluation")
    p.add_argument("--out", required=True, help="weights file to write (.pt)")
    p.add_argument("--images", type=int, default=0, help="seeded random images per folder (default: all)")
    p.add_argument("--kinds", default="lowres,morph,grabcut", help="coarse-mask generators (default lowres,morph,grabcut)")
    p.add_argument("--holdout", type=float, default=1 / 3, help="share of --data images held out (default 1/3)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--examples", help="cache the measured pair IoUs here (<path>.train.npz/.holdout.npz) and reuse them")
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_engine_options(p)
    p.set_defaults(func=train_router)

"""Fitting the selector: pair scores fitted to measured pair IoUs.

An :class:`Example` holds a context and the measured refined IoU of every expert pair
(measured through the refinement pipeline by ``promptmoe_plugin.selector_data``);
:func:`fit` fits the network's pair scores to those IoUs with a listwise softmax loss and
:func:`evaluate` reports the pick's figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..experts import EXPERTS
from .network import PairRouter, Router

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
        agreement: IoU of SAM's answer to the draft's box with the draft (what the box
            gate compares); NaN when not measured.
    """

    name: str
    kind: str
    context: np.ndarray
    iou: np.ndarray
    unrefined: float
    agreement: float = math.nan


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


def save_examples(examples: Sequence[Example], path: str | Path) -> None:
    """Write ``examples`` to one ``.npz`` file (read back by :func:`load_examples`)."""
    np.savez_compressed(
        path,
        names=np.array([e.name for e in examples]),
        kinds=np.array([e.kind for e in examples]),
        contexts=np.stack([e.context for e in examples]),
        ious=np.stack([e.iou for e in examples]),
        unrefined=np.array([e.unrefined for e in examples]),
        agreement=np.array([e.agreement for e in examples]),
    )


def load_examples(path: str | Path) -> list[Example]:
    """The examples :func:`save_examples` wrote to ``path``."""
    z = np.load(path)
    agreement = z["agreement"] if "agreement" in z else np.full(len(z["names"]), np.nan)
    columns = zip(
        z["names"], z["kinds"], z["contexts"], z["ious"], z["unrefined"], agreement, strict=True
    )
    return [Example(str(n), str(k), c, i, float(u), float(a)) for n, k, c, i, u, a in columns]


def split_by_image(
    examples: Sequence[Example], holdout: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``: a seeded ``holdout`` share of the image names is held out,
    with every example of those images."""
    names = sorted({e.name for e in examples})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(names)[: round(holdout * len(names))])
    return [e for e in examples if e.name not in held], [e for e in examples if e.name in held]

"""The learned switch: with references, when a first click leaves SAM's own answer.

Every rival candidate of the first click is described by ten differences to SAM's own
answer (:data:`FEATURES`, :func:`switch_features`); a linear score of them decides
(:func:`switch_choice`): the best eligible rival replaces SAM's answer when its score is
above 0.  The weights are fitted (:func:`fit_switch`) on first-click pools measured
against ground truth (``promptmoe train-switch``) to maximise the expected IoU of the
choice less a penalty on losing 30+ points against SAM's answer.  They are fitted on the
``sam`` intent's three-part features (:meth:`~.intent.SamIntent.parts`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

log = logging.getLogger(__name__)

#: What each column of :func:`switch_features` holds (a rival minus SAM's answer).
FEATURES = (
    "iou",  # SAM's predicted IoU
    "centrality",  # the click's centrality (session.centrality)
    "centrality_shortfall",  # min(0, centrality difference)
    "log_area",  # log of the area ratio
    "similarity",  # cosine to the references (max over them)
    "similarity_sam",  # the SAM-embedding part at the candidate's best reference
    "similarity_colour",  # the colour part there
    "similarity_texture",  # the texture part there
    "added_similarity",  # the region added to SAM's answer, less SAM's answer's similarity
    "chain",  # 1 for a chain candidate (absolute, SAM's answer is never one)
)
#: The weights shipped with the package (``promptmoe train-switch``; docs/benchmarks.md,
#: "First click").
DEFAULT_SWITCH = Path(__file__).resolve().parents[1] / "weights" / "smartsam_switch.json"
#: The name that stands for :data:`DEFAULT_SWITCH` in settings (``switch="default"``).
SHIPPED = "default"
#: A choice loses when its IoU is this far below SAM's answer's (as ``bench click``).
LOSS = 0.30


@dataclass(frozen=True)
class SwitchWeights:
    """``weights`` ``(len(FEATURES),) float64`` and where they came from (``meta``)."""

    weights: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, np.float64)
        if w.shape != (len(FEATURES),) or not np.isfinite(w).all():
            raise ValueError(f"switch weights must be {len(FEATURES)} finite numbers, got {w!r}")
        object.__setattr__(self, "weights", w)

    def save(self, path: str | Path) -> None:
        """Write ``{"features": [...], "weights": [...], "meta": {...}}`` to ``path``."""
        data = {"features": list(FEATURES), "weights": self.weights.tolist(), "meta": self.meta}
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


@lru_cache(maxsize=8)
def load_switch(path: str | Path = SHIPPED) -> SwitchWeights:
    """Switch weights from a JSON file written by :meth:`SwitchWeights.save` (cached);
    :data:`SHIPPED` reads :data:`DEFAULT_SWITCH`.

    Raises:
        ValueError: the file is not such a file, or names other features.
    """
    if path == SHIPPED:
        path = DEFAULT_SWITCH
    try:
        data = json.loads(Path(path).read_text())
        names, weights = data["features"], data["weights"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read switch weights from {path}: {exc}") from exc
    if tuple(names) != FEATURES:
        raise ValueError(f"{path} holds weights of features {names}, expected {list(FEATURES)}")
    return SwitchWeights(np.asarray(weights, np.float64), data.get("meta", {}))


def switch_features(
    iou: np.ndarray,
    centrality: np.ndarray,
    area: np.ndarray,
    chain: np.ndarray,
    part_similarity: np.ndarray,
    added_similarity: np.ndarray,
    sam: int,
) -> np.ndarray:
    """``(N, len(FEATURES)) float64`` differences of N candidates to candidate ``sam``.

    Args:
        iou: ``(N,)`` SAM's predicted IoU.
        centrality: ``(N,)`` the click's centrality in [0, 1].
        area: ``(N,)`` share of the image (floored at 1e-6 for the ratio).
        chain: ``(N,) bool`` chain candidates.
        part_similarity: ``(N, R, 3)`` weighted part cosines (SAM embedding, colour,
            texture) of each candidate to each of R references; their sum is the cosine.
        added_similarity: ``(N,)`` cosine (max over the references) of the region each
            candidate adds to SAM's answer; NaN where it adds nothing.
        sam: index of SAM's own answer (its row is all zeros but ``chain``).
    """
    total = part_similarity.sum(axis=2)  # (N, R)
    best = total.argmax(axis=1)
    sim = total.max(axis=1)
    parts = part_similarity[np.arange(len(iou)), best]  # (N, 3)
    d_cen = centrality - centrality[sam]
    added = np.where(np.isnan(added_similarity), 0.0, added_similarity - sim[sam])
    return np.column_stack(
        [
            iou - iou[sam],
            d_cen,
            np.minimum(d_cen, 0.0),
            np.log(np.maximum(area, 1e-6) / max(float(area[sam]), 1e-6)),
            sim - sim[sam],
            parts - parts[sam],
            added,
            np.asarray(chain, np.float64),
        ]
    )


def switch_choice(features: np.ndarray, eligible: np.ndarray, sam: int, weights: np.ndarray) -> int:
    """The chosen candidate: the best-scored ``eligible`` ``(N,) bool`` rival when its
    score ``features @ weights`` is above 0 (SAM's answer scores 0), else ``sam``; the
    best eligible one when ``sam`` itself is not eligible."""
    score = features @ weights
    score[sam] = 0.0
    score = np.where(eligible, score, -np.inf)
    best = int(np.argmax(score))
    return best if not eligible[sam] or score[best] > 0 else sam


@dataclass(frozen=True)
class SwitchPool:
    """One first click's pool, measured: ``features`` ``(N, F)``, ``eligible`` ``(N,)
    bool``, ``gt_iou`` ``(N,)`` IoU of each candidate with the ground truth, ``sam``
    (index of SAM's own answer) and ``name`` (``dataset/image/first click``)."""

    features: np.ndarray
    eligible: np.ndarray
    gt_iou: np.ndarray
    sam: int
    name: str = ""


def _objective(
    w: np.ndarray, pools: Sequence[SwitchPool], loss_weight: float, temperature: float, l2: float
) -> float:
    total = 0.0
    for p in pools:
        z = p.features @ w
        z[p.sam] = 0.0
        z = np.where(p.eligible, z / temperature, -np.inf)
        prob = np.exp(z - z.max())
        prob /= prob.sum()
        lost = p.gt_iou < p.gt_iou[p.sam] - LOSS
        total += prob @ (p.gt_iou - loss_weight * lost)
    return -total / len(pools) + l2 * float(w @ w)


def fit_switch(
    pools: Sequence[SwitchPool],
    loss_weight: float = 1.0,
    temperature: float = 0.03,
    l2: float = 1e-3,
) -> np.ndarray:
    """``(F,)`` weights maximising the mean expected IoU of a softmax choice (scores /
    ``temperature``) less ``loss_weight`` times its chance of a loss (:data:`LOSS`), with
    an L2 penalty ``l2``; Powell's method from the hand rule's weights (predicted IoU +
    0.2 x centrality shortfall + 0.5 x similarity).  Deterministic."""
    if not pools:
        raise ValueError("no first-click pools to fit the switch on")
    start = np.zeros(len(FEATURES))
    start[[FEATURES.index("iou"), FEATURES.index("centrality_shortfall")]] = 1.0, 0.2
    start[FEATURES.index("similarity")] = 0.5
    result = minimize(
        _objective,
        start,
        args=(pools, loss_weight, temperature, l2),
        method="Powell",
        options={"maxiter": 3000, "xtol": 1e-3, "ftol": 1e-5},
    )
    log.info("switch fit: %s (objective %.5f)", result.message, result.fun)
    return np.asarray(result.x, np.float64)


def pool_figures(pools: Sequence[SwitchPool], weights: np.ndarray | None) -> dict[str, float]:
    """Mean IoU of the choice (``weights``; None keeps SAM's answer) and of SAM's
    answer, in points, and the losses (:data:`LOSS`) over ``pools``."""
    chosen = [
        p.sam if weights is None else switch_choice(p.features, p.eligible, p.sam, weights)
        for p in pools
    ]
    got = np.array([p.gt_iou[c] for p, c in zip(pools, chosen, strict=True)])
    sam = np.array([p.gt_iou[p.sam] for p in pools])
    return {
        "pools": len(pools),
        "miou": 100 * float(got.mean()),
        "miou_sam": 100 * float(sam.mean()),
        "losses": int((got < sam - LOSS).sum()),
        "switched": int(sum(c != p.sam for p, c in zip(pools, chosen, strict=True))),
    }

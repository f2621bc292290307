"""The selector network, its gating, and its weights on disk.

The network scores every expert pair, ``S_ef = U_e + U_f + I_ef`` (utility heads on
learned expert embeddings, a symmetric interaction head); gating with budget ``b`` takes
``logsumexp_{f != e} S_ef`` per expert, a softmax, the top ``b``, renormalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..experts import EXPERTS
from .features import CONTEXT_DIM

#: The shipped selector weights.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "router.pt"


class PairRouter(nn.Module):
    """Scores ``S`` ``(B, n, n)`` of expert pairs from ``(B, 518)`` standardised contexts."""

    def __init__(
        self,
        n_experts: int = len(EXPERTS),
        context_dim: int = CONTEXT_DIM,
        dim: int = 32,
        hidden: int = 64,
    ):
        super().__init__()
        self.experts = nn.Parameter(torch.randn(n_experts, dim) * 0.1)
        self.encoder = nn.Sequential(
            nn.Linear(context_dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim)
        )
        self.utility = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.interaction = nn.Sequential(
            nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

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
    """A trained selector: the network, the context standardisation (``(518,) float32``
    mean and std) and its provenance."""

    net: PairRouter
    mean: np.ndarray
    std: np.ndarray
    meta: dict = field(default_factory=dict)

    @torch.inference_mode()
    def pair_scores(self, context: np.ndarray) -> np.ndarray:
        """``(n, n) float32`` pair scores for one ``(518,)`` context."""
        self.net.eval()
        x = torch.as_tensor((context - self.mean) / self.std)[None]
        return self.net(x)[0].numpy()

    def select(
        self, context: np.ndarray, available: Sequence[str], budget: int = 2
    ) -> dict[str, float]:
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
        return {available[i]: float(g) for i, g in zip(order, gate, strict=True)}


def save_router(router: Router, path: str | Path) -> None:
    """Write ``router`` to ``path`` (parents created), with the expert names it scores."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "state": router.net.state_dict(),
        "mean": router.mean,
        "std": router.std,
        "meta": router.meta,
        "experts": EXPERTS,
    }
    torch.save(blob, path)


def load_router(path: str | Path | None = None) -> Router:
    """Read selector weights from ``path`` (default :data:`DEFAULT_WEIGHTS`), each call anew.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the weights score other experts than :data:`~.experts.EXPERTS`.
    """
    path = Path(path) if path else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"router weights {path} not found (train them with `promptmoe train-router`)"
        )
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if tuple(blob["experts"]) != EXPERTS:
        raise ValueError(
            f"{path}: weights are for experts {blob['experts']}, this version has {EXPERTS}"
        )
    net = PairRouter()
    net.load_state_dict(blob["state"])
    mean = np.asarray(blob["mean"], np.float32)
    return Router(net, mean, np.asarray(blob["std"], np.float32), blob["meta"])

"""Fusion of expert maps into one saliency map, with the disagreement penalty."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: How strongly disagreement between the selected experts lowers the saliency.
DISAGREEMENT = 1.4


def minmax(x: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] (all zeros for a constant array); float32."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12:
        return np.zeros(x.shape, np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def fuse(maps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Saliency ``minmax(sum w_i E_i) * clip(1 - 1.4 * minmax(std_i E_i), 0, 1)``.

    Args:
        maps: expert maps, each ``(h, w) float32`` in [0, 1] (working frame).
        weights: one non-negative weight per map.

    Returns:
        ``(h, w) float32`` saliency in [0, 1]; a single map is only min-max scaled.
    """
    if len(maps) == 0 or len(maps) != len(weights):
        raise ValueError(
            f"fuse needs one weight per map, got {len(maps)} maps and {len(weights)} weights"
        )
    w = np.asarray(weights, np.float32)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"fusion weights must be non-negative with a positive sum, got {w.tolist()}"
        )
    stack = np.stack(maps).astype(np.float32)
    blend = minmax(np.tensordot(w / w.sum(), stack, axes=1))
    if len(maps) == 1:
        return blend
    disagreement = minmax(stack.std(axis=0))
    return blend * np.clip(1.0 - DISAGREEMENT * disagreement, 0.0, 1.0)

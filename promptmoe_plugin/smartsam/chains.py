"""Next chain clickers: where an annotator-like agent would click next (SmartSAM Sec. 3.2).

Everything here works on one candidate's logits in the low-res frame, cropped to the
working image (``(lh, lw)``, see :mod:`.frames`).  "Uncertain" is relative to the
candidate's own logit distribution: a pixel outside the mask is uncertain when its logit
is above ``rho`` times the confident background level (a low quantile of the negative
logits); a pixel inside when it is below ``rho`` times the confident foreground level.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

Action = Literal["add", "cut"]

#: Quantile of the negative (positive) logits taken as the confident level.
CONFIDENT_QUANTILE = 0.05


def uncertain_regions(logits: np.ndarray, rho: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Uncertain pixels outside and inside the mask ``logits > 0``.

    Args:
        logits: ``(lh, lw) float32`` low-res logits of one candidate.
        rho: fraction of the confident level below which a logit counts as uncertain,
            in (0, 1]; larger values give larger uncertain regions.

    Returns:
        ``(outside, inside)``, two ``(lh, lw) bool`` maps.
    """
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    fg = logits > 0
    outside = np.zeros_like(fg)
    inside = np.zeros_like(fg)
    if (~fg).any():
        low = np.quantile(logits[~fg], CONFIDENT_QUANTILE)
        outside = ~fg & (logits > rho * low)
    if fg.any():
        high = np.quantile(logits[fg], 1 - CONFIDENT_QUANTILE)
        inside = fg & (logits < rho * high)
    return outside, inside


def deepest_pixel(region: np.ndarray, min_depth: float = 1.0) -> tuple[int, int] | None:
    """``(row, col)`` of the pixel of ``region`` ``(lh, lw) bool`` farthest from its border
    (the image border counts as border), as a simulated annotator clicks; None when the
    region is empty or thinner than ``min_depth`` pixels."""
    if not region.any():
        return None
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    idx = int(np.argmax(depth))
    if depth.flat[idx] < min_depth:
        return None
    return divmod(idx, region.shape[1])


def next_click(
    logits: np.ndarray, predicted_iou: float, rng: np.random.Generator, rho: float = 0.5
) -> tuple[tuple[int, int], Action] | None:
    """The agent's next click on a candidate.

    With the candidate's predicted IoU ``h``, Bernoulli(``h``) picks Add (a positive click
    in the deepest uncertain region outside the mask) over Cut (a negative click in the
    deepest uncertain region inside); the other action is used when the chosen one has no
    uncertain region.  The paper's Table 7 finds Add the productive action, and confident
    (high-IoU) masks are where SAM tends to stop at a part, hence Add with probability h.

    Args:
        logits: ``(lh, lw) float32`` low-res logits of the candidate.
        predicted_iou: SAM's predicted IoU of the candidate, clipped to [0, 1].
        rng: the session's generator (one draw per call).

    Returns:
        ``((row, col), action)`` in the low-res grid, or None when nothing is uncertain.
    """
    outside, inside = uncertain_regions(logits, rho)
    first: Action = "add" if rng.random() < float(np.clip(predicted_iou, 0, 1)) else "cut"
    order: tuple[Action, Action] = (first, "cut" if first == "add" else "add")
    for action in order:
        pixel = deepest_pixel(outside if action == "add" else inside)
        if pixel is not None:
            return pixel, action
    return None

"""Prior initial sampler: extra prompts around the user's click (SmartSAM Sec. 3.2).

Points lie at a distance ``beta * Gamma(2, 1)`` from the click in a uniformly random
direction (Gamma rather than Normal: it rarely lands on the click itself); boxes have an
aspect ratio of 0.67, 1 or 1.5 and a long side drawn from the paper's 200-800 px at SAM's
1024 frame, scaled here to the image's long side, and always contain the click.
"""

from __future__ import annotations

import numpy as np

#: Box aspect ratios (width / height), after anchor-based detectors.
ASPECTS = (0.67, 1.0, 1.5)
#: Box long side as a fraction of the image's long side (the paper's 200-800 px of 1024).
BOX_SIDE = (200 / 1024, 800 / 1024)


def sample_points(
    click: tuple[float, float], size: tuple[int, int], n: int, beta: float, rng: np.random.Generator
) -> np.ndarray:
    """``n`` points around ``click`` (x, y) in an image of ``size`` (H, W) pixels.

    Returns ``(n, 2) float64`` (x, y) image pixels, clipped into the image.
    """
    H, W = size
    radius = beta * max(H, W) * rng.gamma(2.0, 1.0, n)
    theta = rng.uniform(0.0, 2.0 * np.pi, n)
    pts = np.asarray(click, np.float64) + radius[:, None] * np.stack(
        [np.cos(theta), np.sin(theta)], 1
    )
    return np.clip(pts, 0, [W - 1, H - 1])


def sample_boxes(
    click: tuple[float, float], size: tuple[int, int], n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` boxes that contain ``click`` (x, y) in an image of ``size`` (H, W).

    The click sits at a uniformly random position in the middle half of each box.
    Returns ``(n, 4) float64`` x0, y0, x1, y1 image pixels, clipped into the image.
    """
    H, W = size
    long_side = rng.uniform(*BOX_SIDE, n) * max(H, W)
    aspect = rng.choice(ASPECTS, n)
    bw = np.where(aspect >= 1, long_side, long_side * aspect)
    bh = np.where(aspect >= 1, long_side / aspect, long_side)
    offset = rng.uniform(0.25, 0.75, (n, 2))  # where the click lies inside the box
    x0 = click[0] - offset[:, 0] * bw
    y0 = click[1] - offset[:, 1] * bh
    boxes = np.stack([x0, y0, x0 + bw, y0 + bh], 1)
    return np.clip(boxes, 0, [W - 1, H - 1, W - 1, H - 1])

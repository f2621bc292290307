"""Prompt-Placement Explorer invariants and the mask prompt's frame and values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptmoe_plugin.experts.geometry import edge_distance
from promptmoe_plugin.ppe import (
    STRENGTH,
    gaussian_mask_prompt,
    negative_point,
    place_points,
    refinement_prompt,
)
from promptmoe_plugin.sam.frames import mask_to_working, working_to_image


def blob(h: int = 120, w: int = 160) -> np.ndarray:
    """A disk joined to a thin bar: an irregular mask."""
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - 60) ** 2 + (xx - 50) ** 2 <= 30**2
    mask[55:65, 50:150] = True
    return mask


@pytest.mark.parametrize("lam", [0.02, 0.05, 0.1])
def test_points_lie_in_the_mask_and_respect_the_adaptive_radius(lam):
    mask = blob()
    rng = np.random.default_rng(1)
    sal = (edge_distance(mask) * 0.5 + rng.random(mask.shape) * 0.5).astype(np.float32)
    pts = place_points(sal, mask, k=5, lam=lam)
    assert 1 <= len(pts) <= 5
    xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert mask[ys, xs].all()
    my, mx = np.nonzero(mask)
    n_s = math.ceil(lam * len(my))
    for i in range(len(pts)):
        d = np.sqrt((mx - xs[i]) ** 2 + (my - ys[i]) ** 2)
        radius = np.partition(d, n_s - 1)[n_s - 1]  # distance to the n_s-th nearest mask pixel
        later = pts[i + 1 :]
        assert (np.hypot(later[:, 0] - xs[i], later[:, 1] - ys[i]) > radius).all()
    # The first point is the saliency peak.
    masked = np.where(mask, sal, 0)
    assert masked[ys[0], xs[0]] == masked.max()


def test_points_with_no_suppression_and_a_fixed_radius():
    mask = blob()
    sal = edge_distance(mask)
    pts = place_points(sal, mask, k=3, radius=20)
    assert len(pts) == 3
    d = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(3, 1)].min() > 20
    assert len(place_points(np.zeros_like(sal), mask, k=3)) == 0  # nothing salient
    with pytest.raises(ValueError):
        place_points(sal, mask, k=0)


def test_negative_point_is_background_inside_the_box():
    mask = blob()
    neg = negative_point(mask)
    x, y = neg.astype(int)
    assert not mask[y, x]
    ys, xs = np.nonzero(mask)
    assert xs.min() <= x <= xs.max() and ys.min() <= y <= ys.max()
    full = np.zeros((20, 20), bool)
    full[5:10, 5:10] = True
    assert negative_point(full) is None  # a rectangle fills its box


def test_gaussian_mask_prompt_frame_and_values():
    h, w = 512, 1024  # working frame of a 2:1 image
    yy, xx = np.mgrid[:h, :w]
    r = 100
    mask = (yy - 256) ** 2 + (xx - 300) ** 2 <= r * r
    p = gaussian_mask_prompt(mask, gamma=4.0, strength=STRENGTH)
    assert p.shape == (256, 256) and p.dtype == np.float32
    assert (p[128:] == -STRENGTH).all()  # padding below the image
    assert p[64, 75] == pytest.approx(STRENGTH, rel=0.02)  # centre of the disk (low-res frame = /4)
    inside = p > 0
    assert inside.sum() == pytest.approx(np.pi * (r / 4) ** 2, rel=0.1)
    # Soft prompt: near the boundary exp(-gamma * r^2 / (pi r^2)) = exp(-4/pi) of strength,
    # not the hard +-strength of a normalised-distance Gaussian.
    edge_value = p[64, 75 + 24]
    assert 0.2 * STRENGTH < edge_value < 0.45 * STRENGTH
    assert set(np.unique(p[~inside])) == {-STRENGTH}
    with pytest.raises(ValueError):
        gaussian_mask_prompt(np.zeros((2048, 100), bool))


def test_mask_prompt_scale_shapes_the_inside_only():
    h, w = 512, 1024
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - 256) ** 2 + (xx - 300) ** 2 <= 100**2
    plain = gaussian_mask_prompt(mask)
    assert np.array_equal(gaussian_mask_prompt(mask, scale=np.ones((h, w), np.float32)), plain)
    scale = np.where(xx < 300, 0.5, 1.0).astype(np.float32)  # the left half half as sure
    shaped = gaussian_mask_prompt(mask, scale=scale)
    assert shaped[64, 60] == pytest.approx(0.5 * plain[64, 60], rel=0.02)
    assert shaped[64, 90] == pytest.approx(plain[64, 90], rel=1e-6)
    outside = plain < 0
    assert np.array_equal(shaped[outside], plain[outside])  # the background stays -strength


def test_refinement_prompt_maps_to_image_pixels(engine, voc):
    emb = engine.embed(voc["rgb"])
    gt = voc["masks"][np.argmax(voc["masks"].sum(axis=(1, 2)))]
    m = mask_to_working(emb, gt)
    pos = place_points(edge_distance(m), m, k=2)
    prompt = refinement_prompt(emb, m, pos)
    assert prompt.mask_logits.shape == (256, 256)
    assert prompt.labels.tolist() == [1, 1, 0]
    np.testing.assert_allclose(prompt.points[:2], working_to_image(emb, pos))
    H, W = gt.shape
    assert (prompt.points[:, 0] < W).all() and (prompt.points[:, 1] < H).all()
    ys, xs = np.nonzero(gt)
    x0, y0, x1, y1 = prompt.box
    assert abs(x0 - xs.min()) <= 2 and abs(y1 - ys.max()) <= 2  # the tight box, in image pixels


def test_floor_keeps_points_among_confident_pixels():
    mask = blob()
    sal = edge_distance(mask)
    pts = place_points(sal, mask, k=5, lam=0.02, floor=0.6).astype(int)
    assert len(pts) >= 1
    assert (sal[pts[:, 1], pts[:, 0]] >= 0.6 * sal.max()).all()


def test_first_points_come_before_the_saliency_peaks_and_suppress_their_disk():
    mask = blob()
    sal = edge_distance(mask)
    anchor = np.array([[140, 60]])  # on the thin bar, far from the disk's saliency peak
    pts = place_points(sal, mask, k=3, radius=15, first=anchor)
    assert len(pts) == 3
    assert tuple(pts[0]) == (140, 60)
    assert (np.hypot(pts[1:, 0] - 140, pts[1:, 1] - 60) > 15).all()
    masked = np.where(mask, sal, 0)
    assert masked[int(pts[1, 1]), int(pts[1, 0])] == masked.max()  # then the saliency peak

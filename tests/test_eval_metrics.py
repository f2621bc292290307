"""Known-answer tests for the metrics and the coarse-mask generators."""

from __future__ import annotations

import numpy as np
import pytest

from promptmoe_plugin.eval.coarse import KINDS, make_coarse, sample_seed
from promptmoe_plugin.eval.metrics import boundary_iou, inner_boundary, iou, promptmoe_band


def square(lo: int, hi: int, size: int = 50) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[lo:hi, lo:hi] = True
    return m


def test_iou_known_answers():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[0:10, 0:10] = True
    b[0:10, 5:15] = True
    assert iou(a, b) == pytest.approx(50 / 150)
    ignore = np.zeros((20, 20), bool)
    ignore[:, 10:15] = True
    assert iou(a, b, ignore) == pytest.approx(50 / 100)
    assert iou(a, np.zeros_like(a)) == 0.0
    assert iou(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_boundary_iou_known_answers():
    # 50x50 image: 2% of the diagonal (70.7) is 1.41 -> d = 1 in both flavours.
    a, b = square(10, 30), square(11, 29)
    # Cheng: a's inner ring (76 px) and b's inner ring (68 px) are disjoint.
    assert inner_boundary(a, 1).sum() == 20 * 20 - 18 * 18
    assert boundary_iou(a, b, kind="cheng") == 0.0
    # PromptMoE bands: a -> [9,31)^2 minus [11,29)^2, b -> [10,30)^2 minus [12,28)^2.
    assert promptmoe_band(a, 1).sum() == 22 * 22 - 18 * 18
    assert boundary_iou(a, b) == pytest.approx((400 - 324) / (484 - 256))
    assert boundary_iou(a, a) == 1.0 and boundary_iou(a, a, kind="cheng") == 1.0
    assert iou(a, b) == pytest.approx(324 / 400)


def test_boundary_conventions_at_image_border_and_ignore():
    full = np.ones((50, 50), bool)
    # The image border is a contour for Cheng et al. but not for the PromptMoE band.
    assert inner_boundary(full, 1).sum() == 50 * 50 - 48 * 48
    assert not promptmoe_band(full, 1).any()
    a, b = square(10, 30), square(11, 29)
    ignore = np.zeros_like(a)
    ignore[28:30] = True  # rows 28-29: 22 + 22 px of the union, 2 + 20 of the intersection
    assert boundary_iou(a, b, ignore) == pytest.approx((76 - 22) / (228 - 44))
    with pytest.raises(ValueError, match="kind"):
        boundary_iou(a, b, kind="other")
    with pytest.raises(ValueError, match="shapes differ"):
        iou(a, np.zeros((10, 10), bool))


def disk_gt(size=(120, 160), radius=35):
    yy, xx = np.mgrid[: size[0], : size[1]]
    return (yy - 60) ** 2 + (xx - 70) ** 2 < radius**2


def test_lowres_known_answer():
    gt = np.zeros((64, 64), bool)
    gt[0:32] = True  # a straight edge on the 16x16 cells survives exactly
    assert np.array_equal(make_coarse(gt, np.zeros((64, 64, 3), np.uint8), "lowres"), gt)
    gt[:, 32:] = False  # its corner is rounded: bilinear 0.53 * 0.53 < 0.5 at (31, 31)
    coarse = make_coarse(gt, np.zeros((64, 64, 3), np.uint8), "lowres")
    assert not coarse[31, 31] and coarse[:24, :24].all() and not (coarse & ~gt).any()
    gt = np.zeros((64, 64), bool)
    gt[20:26, 20:26] = True  # smaller than a cell: vanishes
    assert not make_coarse(gt, np.zeros((64, 64, 3), np.uint8), "lowres").any()


@pytest.mark.parametrize("kind", KINDS)
def test_coarse_deterministic_and_damaged(kind):
    gt = disk_gt()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (*gt.shape, 3), dtype=np.uint8)
    image[gt] += np.array([150, 100, 40], np.uint8)
    first = make_coarse(gt, image, kind, seed=3)
    assert first.dtype == bool and first.shape == gt.shape
    assert np.array_equal(first, make_coarse(gt, image, kind, seed=3))
    assert 0.3 < iou(first, gt) < 1.0 if kind == "morph" else 0.8 < iou(first, gt)
    if kind == "morph":
        assert not np.array_equal(first, make_coarse(gt, image, kind, seed=4))


def test_grabcut_of_an_object_filling_the_image_keeps_a_border():
    gt = np.ones((80, 100), bool)  # the GT box is the whole image: no background pixels
    rng = np.random.default_rng(1)
    image = rng.integers(0, 40, (*gt.shape, 3), dtype=np.uint8)
    image[4:-4, 4:-4] = rng.integers(180, 255, (72, 92, 3), dtype=np.uint8)
    coarse = make_coarse(gt, image, "grabcut", seed=0)
    assert coarse.shape == gt.shape and coarse[10:-10, 10:-10].all()
    assert not coarse[0].any() and not coarse[:, -1].any()  # outside the inset box


def test_coarse_bad_input_and_seed():
    with pytest.raises(ValueError, match="unknown coarse kind"):
        make_coarse(disk_gt(), np.zeros((120, 160, 3), np.uint8), "blur")
    with pytest.raises(ValueError, match="matching gt"):
        make_coarse(disk_gt(), np.zeros((10, 10, 3), np.uint8), "lowres")
    assert sample_seed(0, "a") == sample_seed(0, "a") != sample_seed(1, "a")

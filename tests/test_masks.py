"""The one mask IoU: known answers, the empty rule, ignored pixels, broadcasting."""

from __future__ import annotations

import numpy as np
import pytest

from promptmoe_plugin.masks import mask_iou


def _masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.zeros((4, 6), bool)
    a[:, :3] = True  # 12 pixels
    b = np.zeros((4, 6), bool)
    b[:, 2:4] = True  # 8 pixels, 4 shared
    return a, b, np.zeros((4, 6), bool)


def test_known_answers_and_a_float_for_two_masks():
    a, b, _ = _masks()
    got = mask_iou(a, b)
    assert type(got) is float and got == pytest.approx(4 / 16)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, ~a) == 0.0
    assert mask_iou(a, b) == mask_iou(b, a)


def test_the_empty_rule_is_explicit():
    a, _, empty = _masks()
    assert mask_iou(empty, empty) == 1.0  # default: two empty masks agree
    assert mask_iou(empty, empty, empty=0.0) == 0.0
    assert mask_iou(a, empty, empty=1.0) == 0.0  # only both empty take the rule
    batch = mask_iou(np.stack([empty, a]), empty, empty=0.5)
    np.testing.assert_array_equal(batch, [0.5, 0.0])


def test_ignored_pixels_leave_both_masks():
    a, b, _ = _masks()
    ignore = np.zeros_like(a)
    ignore[:, 3] = True  # b's column outside a: b keeps 4 pixels, all shared
    assert mask_iou(a, b, ignore=ignore) == pytest.approx(4 / 12)
    assert mask_iou(a & ~a, b & ignore, ignore=ignore, empty=0.25) == 0.25  # empty after ignoring


def test_broadcast_over_leading_dimensions():
    a, b, empty = _masks()
    batch = mask_iou(np.stack([a, b, empty]), a, empty=0.0)  # (3, h, w) against one mask
    assert batch.shape == (3,) and batch.dtype == np.float64
    np.testing.assert_allclose(batch, [1.0, 4 / 16, 0.0])
    grid = mask_iou(np.stack([np.stack([a, b])] * 2), np.stack([b, b]))  # (2, 2, h, w) vs (2, h, w)
    assert grid.shape == (2, 2)
    np.testing.assert_allclose(grid, [[4 / 16, 1.0], [4 / 16, 1.0]])
    ignore = np.zeros_like(a)
    ignore[:, 3] = True
    np.testing.assert_allclose(mask_iou(np.stack([a, b]), b, ignore=ignore), [4 / 12, 1.0])


def test_bad_masks_are_rejected():
    a, b, _ = _masks()
    with pytest.raises(ValueError, match="bool"):
        mask_iou(a.astype(np.uint8), b)
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(a, b[:3])
    with pytest.raises(ValueError, match="ignore"):
        mask_iou(a, b, ignore=np.stack([a, a]))

"""SmartSAM parts without SAM: prior sampler, chain clicker, similarity, settings."""

from __future__ import annotations

import numpy as np
import pytest

from promptmoe_plugin.smartsam.chains import deepest_pixel, next_click, uncertain_regions
from promptmoe_plugin.smartsam.intent import matmul, similarity
from promptmoe_plugin.smartsam.sampler import ASPECTS, BOX_SIDE, sample_boxes, sample_points
from promptmoe_plugin.smartsam.session import (
    PAPER_AGENT,
    SmartSamConfig,
    _duplicates,
    centrality,
)


def test_points_follow_gamma_distance_and_uniform_angle():
    rng = np.random.default_rng(0)
    size, click, beta = (10_000, 10_000), (5000.0, 5000.0), 0.01  # beta * long side = 100 px
    pts = sample_points(click, size, 20_000, beta, rng)
    d = pts - click
    r = np.hypot(d[:, 0], d[:, 1]) / 100
    # Gamma(2, 1): mean 2, variance 2, mode 1, P(r < 0.1) ~ 0.005
    assert abs(r.mean() - 2) < 0.05 and abs(r.var() - 2) < 0.1
    assert (r < 0.1).mean() < 0.01
    hist, _ = np.histogram(r, bins=np.arange(0, 6, 0.5))
    assert np.argmax(hist) in (1, 2)  # the peak lies around r = 1
    theta = np.arctan2(d[:, 1], d[:, 0])
    counts, _ = np.histogram(theta, bins=8, range=(-np.pi, np.pi))
    assert counts.min() > 0.9 * len(theta) / 8


def test_points_are_seeded_and_clipped():
    a = sample_points((5, 5), (100, 200), 50, 0.5, np.random.default_rng(3))
    b = sample_points((5, 5), (100, 200), 50, 0.5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert (a >= 0).all() and (a[:, 0] <= 199).all() and (a[:, 1] <= 99).all()
    assert not np.array_equal(
        a, sample_points((5, 5), (100, 200), 50, 0.5, np.random.default_rng(4))
    )


def test_boxes_contain_the_click_with_paper_shapes():
    size, click = (4000, 4000), (2000.0, 2000.0)  # large enough that nothing is clipped
    boxes = sample_boxes(click, size, 3000, np.random.default_rng(1))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert ((boxes[:, 0] <= click[0]) & (boxes[:, 2] >= click[0])).all()
    assert ((boxes[:, 1] <= click[1]) & (boxes[:, 3] >= click[1])).all()
    ratio = w / h
    for a in ASPECTS:
        assert (np.abs(ratio - a) < 1e-9).mean() > 0.25
    long_side = np.maximum(w, h) / 4000
    assert long_side.min() >= BOX_SIDE[0] - 1e-9 and long_side.max() <= BOX_SIDE[1] + 1e-9
    assert abs(np.median(long_side) - np.mean(BOX_SIDE)) < 0.03


def _part_whole_logits() -> np.ndarray:
    """Low-res logits of a 'head' mask: the head is confident, the attached body is an
    uncertain negative, the background a confident negative."""
    logits = np.full((64, 64), -20.0, np.float32)
    logits[5:20, 25:40] = 12.0  # head: the current mask
    logits[20:60, 15:50] = -2.0  # body: not in the mask, but SAM is unsure
    return logits


def test_add_clicks_the_middle_of_the_uncertain_part():
    logits = _part_whole_logits()
    outside, inside = uncertain_regions(logits, rho=0.5)
    assert outside[20:60, 15:50].all() and not outside[:5].any()
    assert not inside.any()  # the head is uniformly confident
    (row, col), action = next_click(logits, 1.0, np.random.default_rng(0))
    assert action == "add" and 35 <= row <= 45 and 28 <= col <= 37


def test_cut_when_add_has_nothing_and_bernoulli_mix():
    logits = np.full((40, 40), -20.0, np.float32)
    logits[5:35, 5:35] = 10.0
    logits[15:25, 15:25] = 1.0  # an unsure hole inside the mask
    (row, col), action = next_click(logits, 1.0, np.random.default_rng(0))
    assert action == "cut" and 17 <= row <= 22 and 17 <= col <= 22
    mixed = _part_whole_logits()
    mixed[8:12, 30:34] = 2.0  # something to cut as well
    rng = np.random.default_rng(0)
    actions = [next_click(mixed, 0.8, rng)[1] for _ in range(400)]
    assert 0.72 < actions.count("add") / 400 < 0.88  # Add with probability = predicted IoU
    assert next_click(np.full((8, 8), -5.0, np.float32), 0.5, rng) is None


def test_deepest_pixel_and_relative_uncertainty():
    region = np.zeros((9, 9), bool)
    region[2:7, 2:7] = True
    assert deepest_pixel(region) == (4, 4)
    assert deepest_pixel(np.zeros((3, 3), bool)) is None
    # uncertainty is relative: the same picture at 10x the logit scale gives the same regions
    a = uncertain_regions(_part_whole_logits())
    b = uncertain_regions(10 * _part_whole_logits())
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError):
        uncertain_regions(_part_whole_logits(), rho=0)


def test_similarity_max_and_mean():
    refs = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    cands = np.array([[1.0, 0.0], [np.sqrt(0.5), np.sqrt(0.5)]], np.float32)
    np.testing.assert_allclose(similarity(cands, refs, "max"), [1.0, np.sqrt(0.5)], rtol=1e-6)
    np.testing.assert_allclose(similarity(cands, refs, "mean"), [0.5, np.sqrt(0.5)], rtol=1e-6)
    with pytest.raises(ValueError):
        similarity(cands, refs, "median")


def test_matmul_of_views_equals_numpy():
    rng = np.random.default_rng(0)
    a = rng.random((5, 64), np.float32)
    grid = rng.random((32, 64), np.float32)
    frozen = grid.T.copy()
    frozen.flags.writeable = False
    for b in (grid.T, grid[::-1].T, frozen):  # transposed, negative stride, read-only
        np.testing.assert_allclose(matmul(a, b), a @ b, rtol=1e-5)
    np.testing.assert_allclose(matmul(a.astype(np.float64), grid.T), a @ grid.T, rtol=1e-5)


def test_duplicates_keep_the_better_scored():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :5] = True
    masks[1, :5] = True
    masks[1, 5, 0] = True  # near-duplicate of 0 (IoU 50/51)
    masks[2, 5:] = True
    drop = _duplicates(masks, np.array([0.8, 0.9, 0.5]), 0.95)
    assert drop.tolist() == [True, False, False]


def test_centrality_is_depth_over_the_deepest():
    masks = np.zeros((3, 21, 21), bool)
    masks[0, 5:16, 5:16] = True  # click (10, 10) at the centre of an 11x11 square
    masks[1, 10:21, 0:21] = True  # the click on the top rim of a band
    masks[2, :, :10] = True  # the click outside
    cen = centrality(masks, 10, 10)
    assert cen[0] == pytest.approx(1.0)
    assert 0 < cen[1] < 0.25 and cen[2] == 0
    # the image border counts as boundary: a full mask is deepest at its centre
    assert centrality(np.ones((1, 21, 21), bool), 10, 10)[0] == pytest.approx(1.0)
    assert centrality(np.ones((1, 21, 21), bool), 0, 0)[0] == pytest.approx(1 / 11)


def test_config_from_strings():
    config = SmartSamConfig.from_strings({"n_chains": "30", "beta": "0.2", "reduce": "mean"})
    assert config == SmartSamConfig(n_chains=30, beta=0.2, reduce="mean")
    assert SmartSamConfig.from_strings({}) == SmartSamConfig()
    paper = {"n_points": "6", "n_boxes": "3", "n_chains": "30", "chain_steps": "3"}
    assert SmartSamConfig.from_strings(paper) == PAPER_AGENT
    with pytest.raises(
        ValueError, match=r"unknown SmartSamConfig fields \['n_point'\]; known: n_points"
    ):
        SmartSamConfig.from_strings({"n_point": "3"})
    with pytest.raises(ValueError, match=r"SmartSamConfig\.n_chains: invalid literal"):
        SmartSamConfig.from_strings({"n_chains": "2.5"})
    with pytest.raises(ValueError, match="reduce must be"):
        SmartSamConfig.from_strings({"reduce": "median"})


def test_config_rejects_bad_options():
    with pytest.raises(ValueError):
        SmartSamConfig(reduce="median")
    with pytest.raises(ValueError):
        SmartSamConfig(n_chains=-1)
    with pytest.raises(ValueError):
        SmartSamConfig(max_area=0)
    with pytest.raises(ValueError, match="centre_weight"):
        SmartSamConfig(centre_weight=-0.1)
    with pytest.raises(ValueError, match="sim_weight"):
        SmartSamConfig.from_strings({"sim_weight": "-1"})
    with pytest.raises(ValueError, match="hold_area"):
        SmartSamConfig(hold_area=1.5)
    with pytest.raises(ValueError, match="hold_area_references"):
        SmartSamConfig(hold_area_references=-0.5)
    assert SmartSamConfig.from_strings({"hold_area": "none"}).hold_area is None

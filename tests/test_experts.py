"""Known-answer tests of the ten experts and of fusion, on synthetic and real images."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from promptmoe_plugin.experts import (
    EXPERTS,
    DepthEstimator,
    ExpertInput,
    available_experts,
    expert_map,
)
from promptmoe_plugin.experts.appearance import (
    brightness_similarity,
    color_similarity,
    contrast_similarity,
    texture_similarity,
)
from promptmoe_plugin.experts.depth import depth_similarity
from promptmoe_plugin.experts.geometry import edge_distance, tight_box
from promptmoe_plugin.experts.sam_experts import (
    everything_regions,
    sam_box_query,
    sam_coverage,
    sam_weighted_coverage,
)
from promptmoe_plugin.experts.superpixel import (
    image_slic_labels,
    region_coverage,
    slic_labels,
    superpixel_coverage,
)
from promptmoe_plugin.fusion import fuse
from promptmoe_plugin.sam import SamEngine
from promptmoe_plugin.sam.frames import mask_to_working


def disk(h: int = 96, w: int = 128, cy: int = 48, cx: int = 64, r: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def disk_on_gradient() -> tuple[np.ndarray, np.ndarray]:
    """A red disk on a horizontal blue-grey gradient: ``(96, 128, 3) uint8`` and its mask."""
    mask = disk()
    ramp = np.linspace(40, 200, 128, dtype=np.float32)
    image = np.stack([ramp * 0.2, ramp * 0.5, ramp], axis=-1)[None].repeat(96, axis=0)
    image[mask] = (220, 30, 30)
    return image.astype(np.uint8), mask


def test_edge_distance_peaks_at_centre_and_vanishes_outside():
    mask = disk()
    e = edge_distance(mask)
    assert e.dtype == np.float32 and e.shape == mask.shape
    assert e.max() == pytest.approx(1.0) and e[48, 64] == pytest.approx(1.0, abs=0.05)
    assert (e[~mask] == 0).all()
    assert e[48, 50] < e[48, 60] < e[48, 64]  # grows towards the centre


def test_color_and_brightness_single_out_the_disk():
    image, mask = disk_on_gradient()
    for fn in (color_similarity, brightness_similarity):
        s = fn(image, mask)
        assert s.dtype == np.float32 and 0 <= s.min() and s.max() <= 1
        assert s[mask].min() > 0.99  # uniform colour inside: at the mean
        assert s[~mask].mean() < 0.5
    assert color_similarity(image, mask)[~mask].max() < 0.2  # no blue-grey is red


def test_texture_and_contrast_prefer_the_textured_region():
    rng = np.random.default_rng(0)
    image = np.full((96, 128, 3), 120, np.uint8)
    image[:, :64] = rng.integers(0, 255, (96, 64, 1), dtype=np.uint8)  # noisy left half
    mask = np.zeros((96, 128), bool)
    mask[10:86, 8:56] = True
    for fn in (texture_similarity, contrast_similarity):
        s = fn(image, mask)
        assert 0 <= s.min() and s.max() <= 1
        assert s[20:80, 10:50].mean() > s[20:80, 80:120].mean() + 0.2


def test_similarity_rejects_an_empty_mask():
    image, _ = disk_on_gradient()
    with pytest.raises(ValueError, match="non-empty"):
        color_similarity(image, np.zeros(image.shape[:2], bool))


def test_region_coverage_known_answer():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    cov, share = region_coverage(labels, mask)
    np.testing.assert_allclose(cov, [[1, 1, 0.25, 0.25], [1, 1, 0.25, 0.25]])
    np.testing.assert_allclose(share, [[0.8, 0.8, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])


def test_superpixel_coverage_follows_colour_regions():
    image = np.zeros((96, 128, 3), np.uint8)
    image[:, 64:] = 255
    mask = np.zeros((96, 128), bool)
    mask[:, :70] = True  # the dark half and a sliver of the bright one
    s = superpixel_coverage(slic_labels(image), mask)
    assert s[:, :56].min() == pytest.approx(1.0)
    assert s[:, 100:].max() < 0.5


def test_depth_is_available_with_an_estimator_only(monkeypatch):
    monkeypatch.setenv("PROMPTMOE_DEPTH_MODEL", "some/model")  # the environment plays no part
    assert "depth" not in available_experts(None)
    assert len(available_experts(None)) == len(EXPERTS) - 1
    estimator = DepthEstimator("some/model")  # the model loads on first use, not here
    assert available_experts(estimator) == EXPERTS


def test_depth_similarity_known_answer():
    depth = np.where(disk(), 1.0, 5.0).astype(np.float32)
    s = depth_similarity(depth, disk())
    assert s[disk()].min() == 1.0 and s[~disk()].max() == 0.0


def test_fusion_penalises_disagreement():
    a = np.array([[1.0, 1.0, 0.0]], np.float32)
    b = np.array([[1.0, 0.0, 0.0]], np.float32)
    sal = fuse([a, b], [1, 1])
    assert sal[0, 0] == pytest.approx(1.0)  # both agree: full saliency
    assert sal[0, 1] == 0.0  # maximal disagreement: suppressed
    np.testing.assert_allclose(fuse([a], [2.0]), a)
    with pytest.raises(ValueError):
        fuse([a, b], [1.0])
    with pytest.raises(ValueError):
        fuse([a, b], [-1.0, 1.0])


@pytest.fixture(scope="module")
def voc_object(engine, voc):
    """The VOC photo, its largest instance mask and embedding, mask in the working frame."""
    masks = voc["masks"]
    gt = masks[np.argmax(masks.sum(axis=(1, 2)))]
    emb = engine.embed(voc["rgb"])
    return voc["rgb"], gt, emb, mask_to_working(emb, gt)


def test_sam_experts_reuse_the_embedding_and_find_the_object(engine, voc_object):
    image, gt, emb, gt_w = voc_object
    encodes = engine.stats().encodes
    box = sam_box_query(engine, emb, gt_w)
    assert box.shape == gt_w.shape and set(np.unique(box)) <= {0.0, 1.0}
    assert (box.astype(bool) & gt_w).sum() / (box.astype(bool) | gt_w).sum() > 0.6
    regions = everything_regions(engine, emb, grid=3)
    assert regions.shape == gt_w.shape and regions.dtype == np.int32 and regions.max() >= 1
    assert everything_regions(engine, emb, grid=3) is regions  # cached per image and grid
    assert (emb.key, 3) in engine.image_cache("sam_everything_regions", 64)
    for fn in (sam_coverage, sam_weighted_coverage):
        m = fn(regions, gt_w)
        assert 0 <= m.min() and m.max() <= 1
        assert m[gt_w].mean() > m[~gt_w].mean() + 0.3
    assert engine.stats().encodes == encodes  # no second encoder pass


def test_expert_map_dispatch_covers_every_available_expert(engine, voc_object):
    _, _, emb, gt_w = voc_object
    inp = ExpertInput(engine, emb, gt_w, None, grid=3)
    for name in available_experts(None):
        m = expert_map(name, inp)
        assert m.shape == gt_w.shape and m.dtype == np.float32, name
        assert np.isfinite(m).all() and 0 <= m.min() and m.max() <= 1 + 1e-6, name
    with pytest.raises(ValueError, match="depth model"):
        expert_map("depth", inp)
    with pytest.raises(ValueError, match="unknown expert"):
        expert_map("nope", inp)


def test_tight_box():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 3:9] = True
    np.testing.assert_array_equal(tight_box(mask), [3, 2, 8, 4])
    with pytest.raises(ValueError):
        tight_box(np.zeros((4, 4), bool))


def _engine_without_confident_answers(engine: SamEngine) -> SamEngine:
    """Another engine on a copy of the model whose decoder predicts IoU -10 for every mask,
    so the everything grid keeps no proposal."""
    model = copy.deepcopy(engine.sam.model)
    head = model.mask_decoder.iou_prediction_head.layers[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
    sam = dataclasses.replace(engine.sam, model=model, model_id=engine.sam.model_id + "-doubtful")
    return SamEngine(sam, cache_mb=32)


def test_engines_do_not_share_per_image_results(engine, voc_object):
    """The everything regions and SLIC labels are cached by the engine that computed them:
    an engine with another model computes its own regions of the same image."""
    image, _, emb, _ = voc_object
    regions = everything_regions(engine, emb, grid=3)
    labels = image_slic_labels(engine, emb)
    assert regions.max() >= 1 and image_slic_labels(engine, emb) is labels
    other = _engine_without_confident_answers(engine)
    other_emb = other.embed(image)
    assert other_emb.key == emb.key  # same image content, same key
    other_regions = everything_regions(other, other_emb, grid=3)
    assert other_regions.max() == 0  # its own answer, not the first engine's cached one
    assert everything_regions(engine, emb, grid=3) is regions
    other_labels = image_slic_labels(other, other_emb)
    assert other_labels is not labels  # computed again, in the other engine's cache
    np.testing.assert_array_equal(other_labels, labels)  # same working image, same SLIC

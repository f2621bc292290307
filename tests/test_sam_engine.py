"""The SAM engine on the real embedded MobileSAM: build, accuracy, cache, batching."""

from __future__ import annotations

import logging
import re
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
import torch
from conftest import data_dir
from PIL import Image
from scipy import ndimage

from promptmoe_plugin.images import load_image
from promptmoe_plugin.masks import mask_iou
from promptmoe_plugin.sam import (
    CheckpointError,
    LRUCache,
    Prompt,
    PromptError,
    SamEngine,
    default_checkpoint,
    detect_model_type,
    load_sam,
    stability_score,
)
from promptmoe_plugin.sam.build import resolve_device
from promptmoe_plugin.sam.frames import (
    crop_lowres,
    lowres_pixel,
    lowres_shape,
    lowres_shape_rounded,
    lowres_to_image,
    mask_to_working,
    working_shape,
    working_to_image,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return mask_iou(a, b, empty=1.0)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def torch_engine(engine):
    """The session's model with the fp32 PyTorch encoder, for bit-exact known answers (the
    default runtime on a CPU may run the encoder at bf16, see tests/test_runtimes.py)."""
    return SamEngine(engine.sam, cache_mb=64, runtime="torch")


def test_mobilesam_build_matches_known_figures(torch_engine, astronaut):
    # Known figures of the official MobileSAM on this photo and click; a build whose
    # TinyViT attention-bias cache was filled before the weights gives [447, 18507, 102096].
    engine = torch_engine
    assert engine.runtime_info.name == "torch"
    emb = engine.embed(astronaut)
    out = engine.decode(emb, [Prompt(points=[[256, 179]], labels=[1])])
    areas = out.masks[0].sum(axis=(1, 2))
    np.testing.assert_allclose(areas, [10375, 18270, 105276], rtol=0.01)
    np.testing.assert_allclose(out.iou[0], [0.664, 0.962, 0.967], atol=0.01)


def test_tinyvit_attention_bias_cache_holds_loaded_weights(engine):
    checked = 0
    for module in engine.model.image_encoder.modules():
        if hasattr(module, "attention_bias_idxs"):
            expected = module.attention_biases[:, module.attention_bias_idxs]
            assert torch.equal(module.ab, expected)
            assert module.ab.abs().sum() > 0
            checked += 1
    assert checked > 0


def _instances(voc, name: str) -> list[np.ndarray]:
    label = voc["class_names"].index(name)
    return [m for m, lab in zip(voc["masks"], voc["labels"], strict=True) if lab == label]


def _deepest_point(mask: np.ndarray) -> list[float]:
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), mask.shape)
    return [float(x), float(y)]


def _tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max(), ys.max()]


def test_point_prompt_segments_voc_object(engine, voc):
    # The bottle is the one well-separated object of the crowded VOC photo: one click
    # on it (its deepest pixel), best of 3 masks by predicted IoU.
    (gt,) = _instances(voc, "bottle")
    emb = engine.embed(voc["rgb"])
    out = engine.decode(emb, [Prompt(points=[_deepest_point(gt)], labels=[1])])
    assert iou(out.masks[0, out.best()[0]], gt) >= 0.7


def test_box_prompt_segments_voc_objects(engine, voc):
    people = sorted(_instances(voc, "person"), key=lambda m: -m.sum())[:3]
    emb = engine.embed(voc["rgb"])
    out = engine.decode(emb, [Prompt(box=_tight_box(m)) for m in people], multimask=False)
    assert out.masks.shape == (3, 1, *people[0].shape)
    for mask, gt in zip(out.masks[:, 0], people, strict=True):
        assert iou(mask, gt) >= 0.7


def test_grabcut_clicks_and_boxes(engine):
    folder = data_dir("GrabCut")

    click_ious, box_ious = [], []
    for path in sorted((folder / "data_GT").iterdir())[:8]:
        image = load_image(path)
        raw = np.asarray(Image.open(folder / "boundary_GT" / f"{path.stem}.bmp").convert("L"))
        gt, valid = raw == 255, raw != 128
        emb = engine.embed(image)
        out = engine.decode(
            emb, [Prompt(points=[_deepest_point(gt)], labels=[1]), Prompt(box=_tight_box(gt))]
        )
        best = out.best()
        click_ious.append(iou(out.masks[0, best[0]] & valid, gt & valid))
        box_ious.append(iou(out.masks[1, best[1]] & valid, gt & valid))
    assert np.mean(click_ious) >= 0.7
    assert np.mean(box_ious) >= 0.8


def test_stability_score_known_answers():
    ramp = np.tile(np.linspace(-4, 4, 9, dtype=np.float32), (3, 1))  # columns at -4, -3, ..., 4
    assert stability_score(ramp) == pytest.approx(3 / 5)  # columns > 1: 2, 3, 4; > -1: 0 .. 4
    assert stability_score(ramp, offset=0.5) == pytest.approx(4 / 5)
    sharp = np.where(np.arange(9) < 4, -10.0, 10.0) * np.ones((3, 1))
    batch = stability_score(np.stack([sharp, ramp, np.full((3, 9), -5.0)]))
    assert batch.shape == (3,)
    np.testing.assert_allclose(
        batch, [1.0, 0.6, 1.0]
    )  # a hard edge is stable; an empty mask counts as 1


def test_many_prompts_encode_once(astronaut):
    engine = SamEngine.create(device="cpu", cache_mb=64)
    emb = engine.embed(astronaut)
    for x in range(50, 500, 50):
        engine.decode(
            engine.embed(astronaut), [Prompt(points=[[x, 200]], labels=[1])], frame="none"
        )
    stats = engine.stats()
    assert stats.encodes == 1
    assert stats.cache.misses == 1 and stats.cache.hits == 9
    assert engine.embed(astronaut.copy()) is emb  # keyed by content, not object identity


def test_cache_eviction_respects_bound(astronaut):
    engine = SamEngine.create(device="cpu", cache_mb=10)  # one 7 MB embedding fits, two do not
    for i in range(3):
        img = astronaut.copy()
        img[0, 0, 0] = i
        engine.embed(img)
    stats = engine.stats()
    assert stats.encodes == 3 and stats.cache.entries == 1 and stats.cache.evictions == 2
    assert stats.cache.bytes <= stats.cache.capacity_bytes


def test_lru_cache_order_and_bound():
    cache: LRUCache[str] = LRUCache(capacity_mb=3 / 1024 / 1024 * 10)  # 30 bytes
    cache.put("a", "A", 10)
    cache.put("b", "B", 10)
    cache.put("c", "C", 10)
    assert cache.get("a") == "A"  # a becomes most recent
    cache.put("d", "D", 10)  # evicts b, the least recent
    assert cache.get("b") is None and cache.get("c") == "C" and cache.get("d") == "D"
    cache.put("huge", "H", 1000)  # larger than the whole cache: not stored
    assert "huge" not in cache
    stats = cache.stats()
    assert stats.bytes == 30 and stats.evictions == 1
    with pytest.raises(ValueError):
        LRUCache(-1)


def test_lru_cache_pop_removes_and_returns():
    cache: LRUCache[str] = LRUCache(capacity_mb=30 / 1024 / 1024)  # 30 bytes
    cache.put("a", "A", 10)
    cache.put("b", "B", 20)
    assert cache.pop("a") == "A" and "a" not in cache and len(cache) == 1
    assert cache.pop("a") is None  # absent
    assert cache.stats().bytes == 20
    cache.put("c", "C", 10)  # fits in the bytes "a" freed: nothing evicted
    assert cache.stats().evictions == 0 and cache.get("b") == "B"


def test_image_caches_belong_to_their_engine(engine):
    regions = engine.image_cache("test_regions", 1)
    assert engine.image_cache("test_regions", 1) is regions  # created once, same object after
    assert engine.image_cache("test_labels", 1) is not regions
    other = SamEngine(engine.sam, cache_mb=8)
    assert other.image_cache("test_regions", 1) is not regions
    regions.put(("key", 3), "value", 8)
    assert ("key", 3) not in other.image_cache("test_regions", 1)
    with pytest.raises(ValueError, match="another capacity"):
        engine.image_cache("test_regions", 2)


def test_batched_decode_equals_one_at_a_time(engine, astronaut):
    engine = SamEngine(engine.sam, cache_mb=64)
    engine.decode_chunk = 64  # one decoder call per signature group, whatever the device
    emb = engine.embed(astronaut)
    first = engine.decode(emb, [Prompt(points=[[256, 179]], labels=[1])], frame="none")
    logits = first.low_res_logits[0, 0]
    prompts = [
        Prompt(points=[[256, 179]], labels=[1]),
        Prompt(points=[[100, 400], [300, 300]], labels=[1, 0]),
        Prompt(box=[150, 20, 320, 300]),
        Prompt(points=[[400, 100]], labels=[1]),
        Prompt(points=[[256, 179]], labels=[1], mask_logits=logits),
        Prompt(points=[[230, 120], [260, 60]], labels=[1, 1], box=[140, 20, 310, 260]),
        Prompt(points=[[50, 450]], labels=[1]),
        Prompt(points=[[60, 60]], labels=[0], box=[10, 10, 500, 500], mask_logits=logits),
        Prompt(points=[[480, 480]], labels=[1]),
        Prompt(points=[[120, 120]], labels=[1]),
        Prompt(points=[[330, 30]], labels=[1]),
    ]
    batched = engine.decode(emb, prompts)
    for i, p in enumerate(prompts):
        alone = engine.decode(emb, [p])
        np.testing.assert_allclose(batched.iou[i], alone.iou[0], atol=1e-4)
        np.testing.assert_allclose(batched.low_res_logits[i], alone.low_res_logits[0], atol=1e-3)
        disagree = (batched.masks[i] != alone.masks[0]).mean()
        assert disagree < 1e-4


def test_frames_and_upscale(engine, voc):
    emb = engine.embed(voc["rgb"])
    assert emb.original_size == (375, 500) and emb.input_size == (768, 1024)
    assert emb.image.shape == (768, 1024, 3)
    prompt = Prompt(points=[[250, 180]], labels=[1])
    image = engine.decode(emb, [prompt])
    working = engine.decode(emb, [prompt], frame="working")
    none = engine.decode(emb, [prompt], frame="none")
    assert image.masks.shape == (1, 3, 375, 500) and image.masks.dtype == bool
    assert working.masks.shape == (1, 3, 768, 1024)
    assert none.masks is None
    up = engine.upscale(emb, none.low_res_logits[0], "image")
    np.testing.assert_array_equal(up > 0, image.masks[0])


@pytest.mark.parametrize(
    ("src_hw", "out_hw"),
    [((768, 1024), (6000, 8000)), ((819, 1024), (1000, 1251)), ((77, 51), (30, 20))],
)
def test_banded_threshold_equals_resize_then_threshold(src_hw, out_hw):
    import cv2

    from promptmoe_plugin.sam.engine import _greater_zero_resized

    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(12, 9)).astype(np.float32)
    logits = cv2.resize(coarse, src_hw[::-1], interpolation=cv2.INTER_LINEAR)
    out = np.zeros(out_hw, bool)
    _greater_zero_resized(logits, out, rows=97)  # bands that do not divide the height
    ref = cv2.resize(logits, out_hw[::-1], interpolation=cv2.INTER_LINEAR) > 0
    assert 0.2 < ref.mean() < 0.8
    assert (out != ref).sum() <= out.size * 1e-6


def test_large_image_is_encoded_at_working_size(engine):
    big = np.zeros((6000, 8000, 3), np.uint8)
    big[1500:4500, 2000:6000] = (200, 30, 30)
    emb = engine.embed(big)
    assert emb.input_size == (768, 1024) and emb.original_size == (6000, 8000)
    out = engine.decode(emb, [Prompt(points=[[4000, 3000]], labels=[1])], multimask=False)
    mask = out.masks[0, 0]
    assert mask.shape == (6000, 8000)
    assert iou(mask, big[:, :, 0] > 0) > 0.9


def test_disk_cache_survives_a_new_engine(tmp_path, astronaut):
    first = SamEngine.create(device="cpu", disk_cache=tmp_path)
    emb = first.embed(astronaut)
    second = SamEngine.create(device="cpu", disk_cache=tmp_path)
    again = second.embed(astronaut)
    assert second.stats().encodes == 0 and second.stats().disk_hits == 1
    assert torch.equal(emb.features, again.features)


def test_engines_sharing_a_disk_cache_do_not_collide(engine, tmp_path, astronaut, monkeypatch):
    """Two engines (two workers) encode the same image at once into one folder: the
    second stores its file while the first is between writing and renaming its own.  Both
    get their embedding and the folder ends with one complete file, no temporary one."""
    first = SamEngine(engine.sam, disk_cache=tmp_path, runtime="torch")
    second = SamEngine(engine.sam, disk_cache=tmp_path, runtime="torch")
    save, done = np.save, []

    def interleaved(path, array, *args, **kwargs):
        save(path, array, *args, **kwargs)
        if not done:  # the first writer: let the other worker write and rename meanwhile
            done.append(True)
            worker = threading.Thread(target=lambda: done.append(second.embed(astronaut)))
            worker.start()
            worker.join()

    monkeypatch.setattr(np, "save", interleaved)
    emb = first.embed(astronaut)
    assert torch.equal(emb.features, done[1].features)
    (folder,) = tmp_path.iterdir()
    assert [p.name for p in folder.iterdir()] == [f"{emb.key}.npy"]


def test_an_unwritable_disk_cache_is_logged_not_raised(engine, tmp_path, astronaut, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    cached = SamEngine(engine.sam, disk_cache=blocked, runtime="torch")
    with caplog.at_level(logging.WARNING):
        emb = cached.embed(astronaut)
    assert emb.features.shape[-2:] == (64, 64) and cached.stats().encodes == 1
    assert "could not store the embedding" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "needs points, a box or a mask"),
        ({"points": [[1, 2, 3]], "labels": [1]}, "shape (N, 2)"),
        ({"points": [[1, 2]]}, "labels must have shape"),
        ({"points": [[1, 2]], "labels": [2]}, "1 (positive) or 0"),
        ({"points": [[np.nan, 2]], "labels": [1]}, "finite"),
        ({"box": [10, 10, 5, 20]}, "x0 <= x1"),
        ({"box": [1, 2, 3]}, "4 finite numbers"),
        ({"mask_logits": np.zeros((64, 64))}, "(256, 256)"),
        ({"labels": [1]}, "needs points"),
    ],
)
def test_bad_prompts_have_clear_errors(kwargs, message):
    with pytest.raises(PromptError, match=re.escape(message)):
        Prompt(**kwargs)


def test_bad_engine_inputs(engine, astronaut):
    emb = engine.embed(astronaut)
    with pytest.raises(PromptError, match="no prompts"):
        engine.decode(emb, [])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        engine.embed(astronaut.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        engine.embed(astronaut[:, :, 0])


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_sam(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_sam(garbage)
    other = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        load_sam(other)


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_sam(device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")


def test_model_type_is_read_from_state_dict():
    state = torch.load(default_checkpoint(), map_location="cpu", weights_only=True)
    assert detect_model_type(state) == "vit_t"
    vit = {
        "mask_decoder.x": torch.zeros(1),
        "image_encoder.pos_embed": torch.zeros(1, 64, 64, 1024),
    }
    assert detect_model_type(vit) == "vit_l"
    vit["image_encoder.pos_embed"] = torch.zeros(1, 64, 64, 1280)
    assert detect_model_type(vit) == "vit_h"
    hq = {**vit, "mask_decoder.hf_token.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="SAM-HQ"):
        detect_model_type(hq)


def test_official_vit_checkpoint_builds(tmp_path):
    # A ViT-B-shaped state dict (random weights) must build through the same path as an
    # official checkpoint: type read from the state dict, strict load.
    from promptmoe_plugin.sam.build import _sam, _vit

    model = _sam(_vit(768))
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(model.state_dict(), path)
    loaded = load_sam(path, device="cpu")
    assert loaded.model_type == "vit_b" and loaded.model_id.startswith("vit_b-")


def test_working_shape_is_sams_resize():
    from segment_anything.utils.transforms import ResizeLongestSide

    for size in [(375, 500), (480, 854), (371, 513), (6000, 8000), (1024, 1), (3, 2000)]:
        assert working_shape(size) == ResizeLongestSide.get_preprocess_shape(*size, 1024)
    assert working_shape((480, 854)) == (576, 1024)


def _emb(original: tuple[int, int]) -> SimpleNamespace:
    """The sizes of an embedding (all the frame maps read)."""
    working = working_shape(original)
    return SimpleNamespace(
        original_size=original, input_size=working, scale=working[0] / original[0]
    )


def test_the_two_low_res_crops():
    # GrabCut's llama, 513x371: working 1024x741 covers 185.25 low-res rows.
    llama = _emb((371, 513))
    assert llama.input_size == (741, 1024)
    assert lowres_shape(llama) == (186, 256)  # every row it touches
    assert lowres_shape_rounded(llama) == (185, 256)  # rows it mostly covers
    davis = _emb((480, 854))  # a multiple of 4: both agree
    assert lowres_shape(davis) == lowres_shape_rounded(davis) == (144, 256)
    assert lowres_shape_rounded(_emb((1, 1024))) == (1, 256)  # never empty
    logits = np.zeros((2, 256, 256), np.float32)
    assert crop_lowres(logits, lowres_shape(llama)).shape == (2, 186, 256)


def test_coordinate_maps_between_frames():
    emb = _emb((375, 500))  # working 768x1024: 2.048 working pixels per image pixel
    np.testing.assert_allclose(working_to_image(emb, [[1024, 768]]), [[500, 375]])
    np.testing.assert_allclose(working_to_image(emb, [0, 0, 512, 384]), [0, 0, 250, 187.5])
    assert lowres_pixel(emb, 250, 187.5) == (96, 128)
    assert lowres_pixel(emb, -10, 10_000) == (191, 0)  # clipped into the 192x256 grid
    np.testing.assert_allclose(lowres_to_image(emb, [[128, 96]]), [[128.5 / 0.512, 96.5 / 0.512]])
    mask = np.zeros((375, 500), bool)
    mask[100:200, 50:150] = True
    working = mask_to_working(emb, mask)
    assert working.shape == (768, 1024) and working.dtype == bool
    ys, xs = np.nonzero(working)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    np.testing.assert_allclose(box, np.array([50, 100, 150, 200]) * 2.048, atol=1.5)
    with pytest.raises(ValueError, match="mask is"):
        mask_to_working(emb, mask[:10])

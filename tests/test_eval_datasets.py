"""Dataset folders (layouts, ignore band, errors) and the one sampler of their images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import data_dir
from promptmoe_plugin.eval.datasets import (
    DatasetError,
    interleave,
    load_dataset,
    read_gt,
    sample_datasets,
)


def write_pair(folder, name, image, mask, layout=("img", "gt")):
    (folder / layout[0]).mkdir(parents=True, exist_ok=True)
    (folder / layout[1]).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / layout[0] / f"{name}.jpg")
    mask.save(folder / layout[1] / f"{name}.png")


def test_dataset_layouts_ignore_band_and_palette(tmp_path):
    image = np.full((8, 10, 3), 100, np.uint8)
    grey = np.zeros((8, 10), np.uint8)
    grey[2:6, 2:6] = 255
    grey[1, 1:7] = 128
    write_pair(tmp_path / "g", "a", image, Image.fromarray(grey), ("data_GT", "boundary_GT"))
    samples = load_dataset(tmp_path / "g")
    assert [s.name for s in samples] == ["a"]
    img, gt, ignore = samples[0].load()
    assert (
        img.shape == (8, 10, 3) and gt.sum() == 16 and ignore.sum() == 6 and not (gt & ignore).any()
    )
    # Palette masks: every id merged, 128 is an id there, not an ignore band.
    ids = np.zeros((8, 10), np.uint8)
    ids[0, 0], ids[3, 3:5], ids[7, 9] = 1, 2, 128
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [7] * (256 * 3 - 9))
    write_pair(tmp_path / "d", "b", image, palette)
    _, gt, ignore = load_dataset(tmp_path / "d")[0].load()
    assert gt.sum() == 4 and not ignore.any()
    # A mask with values other than 0/128/255 has no ignore band.
    odd = grey.copy()
    odd[0, 0] = 7
    Image.fromarray(odd).save(tmp_path / "odd.png")
    gt, ignore = read_gt(tmp_path / "odd.png")
    assert not ignore.any() and gt.sum() == 16 + 6 + 1


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty" / "img").mkdir(parents=True)
    (tmp_path / "empty" / "gt").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="expected sub-folders"):
        load_dataset(tmp_path / "empty" / "img")
    image = np.zeros((8, 10, 3), np.uint8)
    write_pair(tmp_path / "d", "a", image, Image.fromarray(np.zeros((8, 10), np.uint8)))
    Image.fromarray(image).save(tmp_path / "d" / "img" / "b.png")
    with pytest.raises(DatasetError, match="without a mask.*b"):
        load_dataset(tmp_path / "d")
    write_pair(tmp_path / "s", "a", image, Image.fromarray(np.zeros((9, 10), np.uint8)))
    with pytest.raises(DatasetError, match="10x9.*10x8"):
        load_dataset(tmp_path / "s")[0].load()


def test_real_datasets_load():
    grabcut = load_dataset(data_dir("GrabCut"))
    davis = load_dataset(data_dir("DAVIS"))
    assert len(grabcut) == 50 and len(davis) == 345
    _, gt, ignore = grabcut[1].load()  # 124080 has an ignore band
    assert gt.any() and ignore.any()


def tiny_dataset(folder, n):
    """A dataset of ``n`` 4x4 images named ``00``, ``01``, ... with full masks."""
    for i in range(n):
        write_pair(
            folder,
            f"{i:02d}",
            np.zeros((4, 4, 3), np.uint8),
            Image.fromarray(np.full((4, 4), 255, np.uint8)),
        )
    return folder


def names(data):
    return [(name, [s.name for s in samples]) for name, samples in data]


def test_first_n_per_dataset_in_name_order(tmp_path):
    # The click and refine benchmarks and the stage timings: the first N of each folder.
    a, b = tiny_dataset(tmp_path / "A", 12), tiny_dataset(tmp_path / "B", 3)
    assert names(sample_datasets([a, b], 5)) == [
        ("A", ["00", "01", "02", "03", "04"]),
        ("B", ["00", "01", "02"]),
    ]
    every = [("A", [f"{i:02d}" for i in range(12)]), ("B", ["00", "01", "02"])]
    assert names(sample_datasets([a, b])) == names(sample_datasets([a, b], 0)) == every
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="distinct folder names"):
        sample_datasets([a, tiny_dataset(tmp_path / "other" / "A", 1)])


def test_seeded_draw_continues_one_stream_across_calls(tmp_path):
    # Router training: one permutation per folder from one generator shared by the training
    # and held-out folders, drawn also when every image is taken; kept in name order.
    a, b = tiny_dataset(tmp_path / "A", 12), tiny_dataset(tmp_path / "B", 7)
    rng = np.random.default_rng(0)
    assert names(sample_datasets([a], 5, rng=rng)) == [("A", ["02", "04", "05", "07", "09"])]
    assert names(sample_datasets([b], 5, rng=rng)) == [("B", ["00", "01", "02", "03", "06"])]
    rng = np.random.default_rng(3)
    assert len(sample_datasets([a], 0, rng=rng)[0][1]) == 12
    assert names(sample_datasets([b], 3, rng=rng)) == [("B", ["00", "04", "05"])]


def test_real_datasets_sampled_as_before():
    grabcut, davis = data_dir("GrabCut"), data_dir("DAVIS")
    rng = np.random.default_rng(0)
    assert names(sample_datasets([grabcut], 4, rng=rng)) == [
        ("GrabCut", ["181079", "69020", "book", "person1"])
    ]
    assert names(sample_datasets([davis], 3, rng=rng)) == [("DAVIS", ["055", "119", "147"])]
    # The server benchmark: round robin over the folders.
    mixed = interleave(sample_datasets([grabcut, davis]), 5)
    assert [s.name for s in mixed] == ["106024", "000", "124080", "001", "153077"]
    assert len(interleave(sample_datasets([grabcut, davis]))) == 395


def test_interleave_takes_turns_until_every_dataset_is_used(tmp_path):
    data = sample_datasets([tiny_dataset(tmp_path / "A", 3), tiny_dataset(tmp_path / "B", 1)])
    assert [s.image_path.parent.parent.name + s.name for s in interleave(data)] == [
        "A00",
        "B00",
        "A01",
        "A02",
    ]
    assert len(interleave(data, 2)) == 2 and interleave([]) == []

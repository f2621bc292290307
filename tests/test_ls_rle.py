"""Brush RLE against label-studio-sdk's implementation, in both directions."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from ls_backend import rle


def _sdk_encode(mask: np.ndarray) -> list[int]:
    return brush.mask2rle(mask.astype(np.uint8) * 255)


def _sdk_decode(data: list[int], h: int, w: int) -> np.ndarray:
    return brush.decode_rle(data).reshape(h, w, 4)[:, :, 3] > 0


def _blobs(h: int, w: int, seed: int) -> np.ndarray:
    """A mask with a few discs and a rectangle: realistic runs, long and short."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(h, w) / 4)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    mask[h // 3 : h // 2, w // 5 : w // 2] ^= True
    return mask


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (37, 53), (64, 64)])
def test_random_masks_match_sdk_both_ways(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.5, 1.0):
        mask = rng.random(shape) < density
        ours = rle.encode(mask)
        sdk = _sdk_encode(mask)
        # Same chunks; the SDK pads a whole extra zero byte when already byte-aligned.
        assert sdk[: len(ours)] == ours and all(b == 0 for b in sdk[len(ours) :])
        assert np.array_equal(_sdk_decode(ours, *shape), mask)
        assert np.array_equal(rle.decode(sdk, *shape), mask)


@pytest.mark.parametrize("shape", [(480, 640), (3000, 4000)])
def test_large_masks_match_sdk_both_ways(shape):
    mask = _blobs(*shape, seed=shape[0])
    ours = rle.encode(mask)
    assert np.array_equal(rle.decode(_sdk_encode(mask), *shape), mask)
    if shape[0] * shape[1] <= 640 * 480:  # the SDK's pure-Python decoder is slow
        assert np.array_equal(_sdk_decode(ours, *shape), mask)
    assert np.array_equal(rle.decode(ours, *shape), mask)


def test_runs_longer_than_16_bits():
    mask = np.ones((300, 400), bool)  # 480000 words: several 2**16 chunks
    mask[150, 200] = False
    assert rle.encode(mask) == _sdk_encode(mask)[: len(rle.encode(mask))]
    assert np.array_equal(rle.decode(rle.encode(mask), 300, 400), mask)


def _pack(fields: list[tuple[int, int]]) -> list[int]:
    bits = "".join(format(v, f"0{n}b") for v, n in fields)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_decoder_reads_other_word_and_run_sizes_and_literals():
    # 3-bit words, run sizes 2/5/9/12, a multi-word literal chunk then a repeat chunk,
    # as the browser's encoder may write.
    fields = [(9, 32), (2, 5), (1, 4), (4, 4), (8, 4), (11, 4)]
    fields += [(0, 1), (0, 2), (3, 2), (1, 3), (7, 3), (0, 3), (5, 3)]  # literal 1 7 0 5
    fields += [(1, 1), (1, 2), (4, 5), (6, 3)]  # 6 repeated 5 times
    assert rle.decode_words(_pack(fields)).tolist() == [1, 7, 0, 5, 6, 6, 6, 6, 6]


def test_bad_streams_raise_clear_errors():
    mask = _blobs(20, 30, seed=1)
    data = rle.encode(mask)
    with pytest.raises(rle.RLEError, match="30x21 image: RLE holds 2400 values, expected 2520"):
        rle.decode(data, 21, 30)
    with pytest.raises(rle.RLEError, match="ends"):
        rle.decode(data[: len(data) // 2], 20, 30)
    with pytest.raises(rle.RLEError, match="integers"):
        rle.decode([1, 2, 300], 1, 1)
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2), bool))


def _pack_words(words: np.ndarray, rng: np.random.Generator) -> list[int]:
    """``words`` (uint8) as rle-pack chunks of random kinds and lengths, at any alignment:
    literal chunks of up to 8 words and repeat chunks of equal words (run sizes 3 and 8)."""
    fields = [(words.size, 32), (7, 5), (2, 4), (7, 4), (2, 4), (7, 4)]
    pos = 0
    while pos < words.size:
        n = int(rng.integers(1, 9))
        run = words[pos : pos + n]
        if run.size > 1 and (run == run[0]).all() and rng.random() < 0.7:
            fields += [(1, 1), (0, 2), (run.size - 1, 3), (int(run[0]), 8)]
        else:
            fields += [(0, 1), (0, 2), (run.size - 1, 3)] + [(int(v), 8) for v in run]
        pos += run.size
    return _pack(fields)


def test_decode_keeps_alphas_of_chunks_at_any_alignment():
    rng = np.random.default_rng(5)
    for h, w in ((1, 1), (3, 5), (17, 9)):
        alpha = rng.random((h, w)) < 0.5
        canvas = np.repeat(np.where(alpha, 255, 0)[..., None], 4, axis=2).astype(np.uint8)
        canvas[..., :3] = rng.integers(0, 3, (h, w, 3))  # colours unrelated to alpha
        canvas[alpha, 3] = rng.integers(1, 256, int(alpha.sum()))
        data = _pack_words(canvas.reshape(-1), rng)
        assert np.array_equal(rle.decode_words(data), canvas.reshape(-1))
        assert np.array_equal(rle.decode(data, h, w), alpha)


def test_sizes_are_checked_before_allocating():
    import tracemalloc

    header = [*(16384 * 16384 * 4).to_bytes(4, "big"), *rle.encode(np.zeros((1, 1), bool))[4:]]
    tracemalloc.start()
    try:
        with pytest.raises(rle.RLEError, match="16384x16384 mask is 268.4 MP, above the limit"):
            rle.decode(header, 16384, 16384)
        with pytest.raises(rle.RLEError, match="RLE holds 1073741824 values, expected 400"):
            rle.decode(header, 10, 10)
        with pytest.raises(rle.RLEError, match="above the limit of 1000"):
            rle.decode_words(header, max_words=1000)
        with pytest.raises(rle.RLEError, match="positive integers"):
            rle.decode(header, True, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    mask = _blobs(30, 40, seed=2)
    assert np.array_equal(rle.decode(rle.encode(mask), np.int64(30), 40, max_pixels=1200), mask)
    with pytest.raises(rle.RLEError, match="above the limit of 0.001199 MP"):
        rle.decode(rle.encode(mask), 30, 40, max_pixels=1199)

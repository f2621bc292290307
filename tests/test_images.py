"""Image and mask loading: modes, EXIF rotation, bit depths, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from promptmoe_plugin.images import ImageError, load_image, load_mask, resize_longest, save_mask


def _rgb(h: int = 30, w: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    np.testing.assert_array_equal(out, arr)


def test_grayscale_rgba_palette(tmp_path):
    gray = _rgb()[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (30, 40, 3) and (out == gray[:, :, None]).all()

    rgba = np.dstack([_rgb(), np.full((30, 40), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgba[:, :, :3])

    pal = Image.fromarray(_rgb()).quantize(8)
    pal.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_16_bit_is_scaled_to_8_bit(tmp_path):
    ramp = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "d.png")
    out = load_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert np.all(np.diff(out[:, :, 0].ravel().astype(int)) >= 0)  # monotone


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(_rgb(30, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (40, 30, 3)


def test_bytes_and_stream_sources(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, "PNG")
    assert load_image(buf.getvalue()).shape == (30, 40, 3)
    buf.seek(0)
    assert load_image(buf).shape == (30, 40, 3)


def test_not_an_image_gives_clear_error(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello, I am text")
    with pytest.raises(ImageError, match="notes.png: not a readable image"):
        load_image(bad)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(b"\x89PNG\r\n\x1a\n truncated")


def test_too_large_image_is_refused_before_decoding(tmp_path, monkeypatch):
    import promptmoe_plugin.images as images

    Image.new("L", (200, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    with pytest.raises(ImageError, match="above the 0 MP limit|MP limit"):
        load_image(tmp_path / "big.png")


def test_masks(tmp_path):
    m = np.zeros((30, 40), bool)
    m[5:20, 10:30] = True
    save_mask(m, tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), m)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", shape=(30, 40)), m)
    with pytest.raises(ImageError, match="mask is 40x30 but the image is 50x30"):
        load_mask(tmp_path / "m.png", shape=(30, 50))
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 3] = m * 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "a.png"), m)


def test_resize_longest():
    img = _rgb(300, 400)
    assert resize_longest(img, 1024).shape == (768, 1024, 3)
    assert resize_longest(img, 400) is img

"""Image and mask loading.

Every loader returns arrays in the *image pixel* frame, after EXIF rotation:
images as ``(H, W, 3) uint8`` RGB, masks as ``(H, W) bool``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

ImageSource = str | Path | bytes | BinaryIO

#: Refuse images above this many pixels (a 8000x6000 photo is 48 MP).  SAM works at a
#: long side of 1024, so larger inputs buy nothing.
MAX_PIXELS = 250_000_000


class ImageError(ValueError):
    """An input that is not a readable image or mask; the message says which and why."""


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", "<stream>")


def _open(source: ImageSource) -> Image.Image:
    """Open and fully decode ``source`` with EXIF orientation applied."""
    name = _describe(source)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ImageError(f"{name}: no such file")
    try:
        with Image.open(source) as img:
            pixels = img.width * img.height
            if pixels > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {img.width}x{img.height} is {pixels / 1e6:.0f} MP, above the "
                    f"{MAX_PIXELS / 1e6:.0f} MP limit"
                )
            if pixels == 0:
                raise ImageError(f"{name}: image has no pixels")
            img.load()
            return ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from exc


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map an integer or float single-channel array to uint8.

    16-bit (and wider integer) data is scaled by its dtype's full range when it uses more
    than 8 bits, so a 16-bit photo keeps its look; floats are min-max scaled.
    """
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return np.round(np.nan_to_num(scaled) * 255).astype(np.uint8)
    hi = int(arr.max())
    if hi <= 255 and int(arr.min()) >= 0:
        return arr.astype(np.uint8)
    top = 65535 if hi <= 65535 else int(np.iinfo(arr.dtype).max)
    return np.round(np.clip(arr, 0, top).astype(np.float64) * (255.0 / top)).astype(np.uint8)


def to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to ``(H, W, 3) uint8`` RGB.

    Alpha is dropped (colour channels kept as stored); palette, grayscale, CMYK, YCbCr
    and 16/32-bit integer or float modes are converted.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA" if img.mode != "LA" else "LA")
        arr = np.asarray(img)
        if img.mode == "LA":
            return np.repeat(arr[:, :, :1], 3, axis=2).copy()
        return arr[:, :, :3].copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image(source: ImageSource) -> np.ndarray:
    """Load an image file, bytes or stream as ``(H, W, 3) uint8`` RGB, EXIF-rotated.

    Raises:
        ImageError: the source is missing, not an image, or above :data:`MAX_PIXELS`.
    """
    return to_rgb(_open(source))


def load_mask(source: ImageSource, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Load a mask image as ``(H, W) bool``: any non-zero pixel is foreground.

    Colour masks count a pixel as foreground when any channel is non-zero; an alpha
    channel, when present, is the mask.  ``shape`` (H, W), if given, must match.

    Raises:
        ImageError: unreadable source or a size that differs from ``shape``.
    """
    img = _open(source)
    if img.mode in ("RGBA", "LA", "PA"):
        mask = np.asarray(img.getchannel("A")) > 0
    elif img.mode == "P":
        mask = np.asarray(img) > 0
    else:
        arr = np.asarray(img)
        mask = arr.any(axis=2) if arr.ndim == 3 else arr > 0
    if shape is not None and mask.shape != tuple(shape):
        raise ImageError(
            f"{_describe(source)}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
            f"{shape[1]}x{shape[0]} (width x height)"
        )
    return mask


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write a ``(H, W) bool`` mask as an 8-bit PNG with values 0 and 255."""
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def resize_longest(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize ``(H, W, 3) uint8`` so its long side is ``long_side`` (bilinear, antialiased).

    Returns the image unchanged when it already has that long side.
    """
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
    if (new_h, new_w) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))

"""Label Studio's brush RLE: a vectorised encoder and a general decoder.

The editor stores a brush mask as the ``H x W x 4`` RGBA bytes of its canvas (row-major),
packed with ``@thi.ng/rle-pack``.  The bitstream, most significant bit first:

* 32 bits: number of words ``N`` (``H * W * 4`` for a brush mask);
* 5 bits: word size - 1 (7 for bytes);
* 4 x 4 bits: the four run-length field sizes - 1;
* chunks: 1 flag bit, 2 bits choosing one of the four field sizes, ``size`` bits holding
  ``count - 1``; then one word repeated ``count`` times (flag 1) or ``count`` literal
  words (flag 0);
* zero bits up to a byte boundary.

The encoder writes what ``label_studio_sdk.converter.brush.mask2rle`` writes (field sizes
3, 4, 8, 16; one chunk per run), without a Python loop over runs or bits.

Decoding is bounded before anything is allocated: :func:`decode` takes the mask size
from its caller (the image's when known), refuses sizes above ``max_pixels`` (at most
:data:`MAX_PIXELS`) and a header whose word count is not ``height * width * 4``; it keeps
only the alpha bytes (one byte per pixel, never the ``4 x`` canvas).
:func:`decode_words` refuses a header above ``max_words``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from promptmoe_plugin.images import MAX_PIXELS as _IMAGE_MAX_PIXELS

#: Run-length field sizes (bits) the encoder announces in the header, as the SDK does.
RUN_SIZES = (3, 4, 8, 16)
_MAX_RUN = 1 << RUN_SIZES[-1]
#: Hard ceiling of a decoded mask in pixels: no mask can be larger than the largest image
#: the backend loads.  ``MAX_MASK_PIXELS`` (the server's limit) may only be lower.
MAX_PIXELS = _IMAGE_MAX_PIXELS


class RLEError(ValueError):
    """A brush RLE that cannot be decoded, or that does not fit the image size."""


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths ``(R,) int64`` and values ``(R,)`` of a non-empty 1-D array."""
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return lengths.astype(np.int64), flat[starts]


def _pack_fields(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate ``values[i]`` written in ``widths[i]`` bits (MSB first) into bits.

    ``values`` ``(F,) int64`` non-negative, ``widths`` ``(F,) int64`` in 1..62.
    Returns ``(sum(widths),) uint8`` of 0/1.
    """
    field = np.repeat(np.arange(values.size), widths)
    ends = np.cumsum(widths)
    # Position of each bit inside its field, counted from the field's last bit.
    shift = ends[field] - 1 - np.arange(field.size)
    return ((values[field] >> shift) & 1).astype(np.uint8)


def _encode_runs(num: int, lengths: np.ndarray, values: np.ndarray) -> list[int]:
    """Bitstream of ``num`` byte words given as runs ``lengths`` ``(R,) int64`` of ``values``."""
    header = np.array([num, 8 - 1, *(s - 1 for s in RUN_SIZES)], np.int64)
    header_bits = _pack_fields(header, np.array([32, 5, 4, 4, 4, 4], np.int64))
    # Field size class per run (the SDK's choice): literal for a single word, else the
    # smallest size that holds the run; runs above 2**16 split into 2**16-word chunks.
    cls = np.searchsorted(np.array([8, 16, 256]), lengths, side="left")
    n_chunks = -(-lengths // _MAX_RUN)
    run = np.repeat(np.arange(lengths.size), n_chunks)
    first_of_run = np.cumsum(n_chunks) - n_chunks
    k = np.arange(run.size) - first_of_run[run]
    count = np.where(k < n_chunks[run] - 1, _MAX_RUN, lengths[run] - k * _MAX_RUN)
    size = np.asarray(RUN_SIZES, np.int64)[cls[run]]
    flag = (lengths[run] > 1).astype(np.int64)
    chunk = (((flag << 2 | cls[run]) << size | (count - 1)) << 8) | values[run].astype(np.int64)
    bits = np.concatenate([header_bits, _pack_fields(chunk, 1 + 2 + size + 8)])
    return np.packbits(bits).tolist()


def encode(mask: np.ndarray) -> list[int]:
    """Brush RLE of a ``(H, W) bool`` mask in the image frame (pixels painted with 255).

    The payload is the mask's RGBA canvas (each pixel as 4 equal bytes, 0 or 255); runs
    are found on the pixels and scaled by 4, so the canvas is never materialised.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be 2-D (H, W) and non-empty, got shape {mask.shape}")
    lengths, values = _runs(mask.reshape(-1).astype(bool))
    return _encode_runs(mask.size * 4, lengths * 4, np.where(values, 255, 0))


class _BitReader:
    """Reads big-endian bit fields of up to 32 bits from a byte string."""

    def __init__(self, data: bytes):
        self.data = data + b"\0" * 8
        self.nbits = 8 * len(data)
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > self.nbits:
            raise RLEError(f"RLE ends early: needs bit {self.pos + n}, has {self.nbits}")
        start = self.pos >> 3
        chunk = int.from_bytes(self.data[start : start + 5], "big")
        value = (chunk >> (40 - (self.pos & 7) - n)) & ((1 << n) - 1)
        self.pos += n
        return value

    def read_many(self, n_words: int, size: int) -> np.ndarray:
        """``n_words`` consecutive fields of ``size`` bits as ``(n_words,) int64``."""
        if self.pos + n_words * size > self.nbits:
            raise RLEError("RLE ends inside a literal chunk")
        first, last = self.pos >> 3, (self.pos + n_words * size + 7) >> 3
        bits = np.unpackbits(np.frombuffer(self.data[first:last], np.uint8))
        offset = self.pos - 8 * first
        words = bits[offset : offset + n_words * size].reshape(n_words, size).astype(np.int64)
        self.pos += n_words * size
        return words @ (1 << np.arange(size - 1, -1, -1, dtype=np.int64))


def _header(rle: Sequence[int] | bytes) -> tuple[_BitReader, int, int, list[int]]:
    """A reader past the header, and the header's word count, word size and run sizes."""
    try:
        data = bytes(rle)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RLEError(f"RLE must be a list of integers 0..255 ({exc})") from exc
    reader = _BitReader(data)
    num = reader.read(32)
    word_size = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    return reader, num, word_size, sizes


def _chunks(reader: _BitReader, num: int, word_size: int, sizes: list[int]):
    """Yield ``(pos, count, word | None, words | None)`` per chunk: a repeated ``word`` or
    ``count`` literal ``words`` ``(count,) int64`` starting at word ``pos``."""
    pos = 0
    while pos < num:
        repeat = reader.read(1)
        count = reader.read(sizes[reader.read(2)]) + 1
        if pos + count > num:
            raise RLEError(f"RLE chunk runs past the announced {num} values")
        if repeat:
            yield pos, count, reader.read(word_size), None
        else:
            yield pos, count, None, reader.read_many(count, word_size)
        pos += count


def decode_words(
    rle: Sequence[int] | bytes, expected: int | None = None, max_words: int = 4 * MAX_PIXELS
) -> np.ndarray:
    """Decode any rle-pack stream (any word size, run sizes, literal chunks) to ``(N,)`` words
    (uint8 for word sizes up to 8 bits, else int64).

    ``expected``, when given, is the required ``N``; it and ``max_words`` are checked
    before allocating.
    """
    reader, num, word_size, sizes = _header(rle)
    if expected is not None and num != expected:
        raise RLEError(f"RLE holds {num} values, expected {expected}")
    if num > max_words:
        raise RLEError(f"RLE announces {num} values, above the limit of {max_words}")
    out = np.empty(num, np.uint8 if word_size <= 8 else np.int64)
    for pos, count, word, words in _chunks(reader, num, word_size, sizes):
        out[pos : pos + count] = word if words is None else words
    return out


def _mask_size(height: object, width: object, max_pixels: int | None) -> tuple[int, int]:
    """``(height, width)`` as ints when they are positive integers within the limit."""
    ok = all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
        for v in (height, width)
    )
    if not ok:
        raise RLEError(f"mask size must be positive integers, got {width!r}x{height!r}")
    h, w = int(height), int(width)  # type: ignore[call-overload]
    cap = MAX_PIXELS if max_pixels is None else min(max_pixels, MAX_PIXELS)
    if h * w > cap:
        raise RLEError(
            f"a {w}x{h} mask is {h * w / 1e6:.1f} MP, above the limit of {cap / 1e6:g} MP "
            "(MAX_MASK_PIXELS)"
        )
    return h, w


def decode(
    rle: Sequence[int] | bytes, height: int, width: int, max_pixels: int | None = None
) -> np.ndarray:
    """Decode a brush RLE to a ``(height, width) bool`` mask (pixels with non-zero alpha).

    ``height * width`` must be at most ``max_pixels`` (default and ceiling
    :data:`MAX_PIXELS`) and the header's word count ``height * width * 4``; both are
    checked before allocating.  Only the alpha bytes are kept (1 byte per pixel).

    Raises:
        RLEError: a malformed stream, a size above the limit, or one whose word count is
            not ``height * width * 4`` (the message gives the image size it was checked
            against).
    """
    try:
        h, w = _mask_size(height, width, max_pixels)
        reader, num, word_size, sizes = _header(rle)
        if num != h * w * 4:
            raise RLEError(f"RLE holds {num} values, expected {h * w * 4}")
        alpha = np.zeros(h * w, bool)
        for pos, count, word, words in _chunks(reader, num, word_size, sizes):
            if words is None:  # words pos..pos+count-1 hold alphas pos//4 .. (pos+count)//4-1
                if word:
                    alpha[pos // 4 : (pos + count) // 4] = True
            else:
                first = (3 - pos) % 4  # index of the chunk's first alpha word
                values = words[first::4]
                start = (pos + first) // 4
                alpha[start : start + values.size] = values != 0
    except RLEError as exc:
        raise RLEError(f"brush RLE for a {width}x{height} image: {exc}") from exc
    return alpha.reshape(h, w)

"""SAM's embedding of one image, with the sizes that map its frames (see :mod:`.frames`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ImageEmbedding:
    """SAM's embedding of one image, with the sizes needed to map frames.

    Attributes:
        key: content hash of the image (the cache key).
        features: ``(1, 256, 64, 64)`` float32 tensor on the engine's device.
        original_size: ``(H, W)`` of the image frame.
        input_size: ``(h, w)`` of the working frame (long side 1024).
        image: ``(h, w, 3)`` uint8 RGB, the image in the working frame.
        encode_seconds: wall time the encoder took (0 for a disk-cache load).
    """

    key: str
    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image: np.ndarray
    encode_seconds: float = 0.0

    @property
    def scale(self) -> float:
        """Working-frame pixels per image-frame pixel."""
        return self.input_size[0] / self.original_size[0]

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement() + self.image.nbytes

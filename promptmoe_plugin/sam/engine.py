"""The SAM engine: one model, an image-embedding cache and batched prompt decoding.

Frames (image, working, low-res) are defined in :mod:`.frames`: prompts come in image
pixels, decoded logits are low-res, and :meth:`SamEngine.upscale` maps them to the image
or working frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.transforms.functional import resize, to_pil_image

from ..atomic import replaced_atomically
from .build import LoadedSam, load_sam
from .cache import CacheStats, LRUCache, image_key
from .embedding import ImageEmbedding
from .frames import IMAGE_SIZE, LOW_RES, working_shape
from .runtimes import (
    DecoderRuntime,
    EncoderRuntime,
    RuntimeInfo,
    load_decoder,
    load_encoder,
    parse_runtime,
)

log = logging.getLogger(__name__)

#: Prompt sets per mask-decoder call, by device type.  On a CPU the decoder is
#: memory-bound: per prompt, batches of 1/2/4/8/16 took 91/93/110/149/172 ms (MobileSAM,
#: 2 cores, ``promptmoe bench engine``), so there each set gets its own call; a GPU gains
#: from large batches.  The chunk also bounds one call's memory.
DECODE_CHUNK = {"cpu": 1, "cuda": 64}
#: Above this size of one mask's float32 logits in the image frame, an exported decoder's
#: masks are thresholded in bands of rows (:func:`_greater_zero_resized`) instead of
#: resizing the whole map first: 192 MB for an 8000 x 6000 image.
BANDED_UPSCALE_BYTES = 64 * 1024 * 1024

Frame = Literal["image", "working", "none"]


class PromptError(ValueError):
    """A prompt with wrong shapes or values; the message says which."""


@dataclass(frozen=True)
class Prompt:
    """One prompt set for SAM.

    Attributes:
        points: ``(N, 2)`` float (x, y) in image pixels, or None.
        labels: ``(N,)`` int, 1 positive and 0 negative; required with ``points``.
        box: ``(4,)`` float ``x0, y0, x1, y1`` in image pixels, or None.
        mask_logits: ``(256, 256)`` float32 logits in SAM's low-res padded frame (e.g. a
            previous decode's ``low_res_logits``), or None.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.points is None and self.box is None and self.mask_logits is None:
            raise PromptError("a prompt needs points, a box or a mask")
        if self.points is not None:
            pts = np.asarray(self.points, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
                raise PromptError(f"points must have shape (N, 2) with N >= 1, got {pts.shape}")
            labels = np.asarray(self.labels if self.labels is not None else [], dtype=np.int64)
            if labels.shape != (len(pts),):
                raise PromptError(f"labels must have shape ({len(pts)},), got {labels.shape}")
            if not np.isin(labels, (0, 1)).all():
                raise PromptError("labels must be 1 (positive) or 0 (negative)")
            if not np.isfinite(pts).all():
                raise PromptError("points must be finite")
            object.__setattr__(self, "points", pts)
            object.__setattr__(self, "labels", labels)
        elif self.labels is not None:
            raise PromptError("labels given without points")
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.shape != (4,) or not np.isfinite(box).all():
                raise PromptError(f"box must be 4 finite numbers x0, y0, x1, y1, got {self.box!r}")
            if box[2] < box[0] or box[3] < box[1]:
                raise PromptError(f"box must have x0 <= x1 and y0 <= y1, got {box.tolist()}")
            object.__setattr__(self, "box", box)
        if self.mask_logits is not None:
            m = np.asarray(self.mask_logits, dtype=np.float32)
            if m.shape != (LOW_RES, LOW_RES):
                raise PromptError(f"mask_logits must have shape (256, 256), got {m.shape}")
            object.__setattr__(self, "mask_logits", m)

    @property
    def signature(self) -> tuple[int, bool, bool]:
        """Prompts with equal signatures decode together in one exact batch."""
        n = 0 if self.points is None else len(self.points)
        return (n, self.box is not None, self.mask_logits is not None)


def stability_score(logits: np.ndarray, offset: float = 1.0) -> np.ndarray:
    """SAM's stability score: the IoU of the masks ``logits > offset`` and ``logits > -offset``
    (the first lies inside the second), near 1 when the boundary does not move as the
    threshold does.

    ``logits`` ``(..., h, w)`` float in any frame; returns ``(...)`` float64 in [0, 1]
    (1 for an empty mask).
    """
    inner = (logits > offset).sum(axis=(-2, -1))
    outer = (logits > -offset).sum(axis=(-2, -1))
    return np.where(outer > 0, inner / np.maximum(outer, 1), 1.0)


@dataclass
class Decoded:
    """Output of :meth:`SamEngine.decode` for B prompts and M masks each (M = 3 or 1).

    Attributes:
        iou: ``(B, M)`` float32 predicted IoU.
        low_res_logits: ``(B, M, 256, 256)`` float32 logits in the low-res padded frame.
        masks: ``(B, M, H, W)`` bool in the requested frame, or None for frame "none".
    """

    iou: np.ndarray
    low_res_logits: np.ndarray
    masks: np.ndarray | None = None

    def best(self) -> np.ndarray:
        """``(B,)`` index of the mask with the highest predicted IoU for each prompt."""
        return np.argmax(self.iou, axis=1)


@dataclass
class EngineStats:
    encodes: int = 0
    encode_seconds: float = 0.0
    decode_calls: int = 0
    decoded_prompts: int = 0
    disk_hits: int = 0
    cache: CacheStats = field(default_factory=CacheStats)


class SamEngine:
    """One SAM model shared by every caller, with an embedding cache and the caches of
    per-image results computed from it (:meth:`image_cache`).

    Args:
        sam: a loaded model (see :func:`load_sam`).
        cache_mb: bound of the in-memory embedding cache (one embedding is ~4.6 MB).
        disk_cache: optional folder where embeddings are also stored, so a restarted
            process or a benchmark re-run does not encode again.
        runtime: what runs the image encoder (see :mod:`.runtimes`): ``"auto"`` (the
            fastest runtime whose masks agree with fp32 PyTorch; PyTorch on CUDA),
            ``"torch"`` (fp32 eager, bit-exact with the official model), ``"openvino"``,
            ``"onnxruntime"``, or a name with a precision (``"openvino-f32"``).
        runtime_cache: folder of the exported encoder and decoder graphs (default
            ``~/.cache/promptmoe/runtimes``).
        decoder_runtime: what runs the prompt encoder + mask decoder (see
            :func:`.runtimes.load_decoder`); None follows ``runtime``: ``"torch"`` when it
            is torch, else ``"auto"`` (ONNX Runtime f32 on a CPU).  PyTorch decodes with
            the model's modules and upscales with ``F.interpolate`` (bit-exact with the
            official model); an exported decoder upscales with OpenCV (the same bilinear
            map, float32: no mask pixel flipped on the benchmark images).
    """

    def __init__(
        self,
        sam: LoadedSam,
        cache_mb: float = 512,
        disk_cache: str | Path | None = None,
        runtime: str = "auto",
        runtime_cache: str | Path | None = None,
        decoder_runtime: str | None = None,
    ):
        self.sam = sam
        self.model = sam.model
        self.device = next(self.model.parameters()).device
        self.encoder: EncoderRuntime = load_encoder(sam, runtime, runtime_cache)
        if decoder_runtime is None:
            decoder_runtime = "torch" if parse_runtime(runtime)[0] == "torch" else "auto"
        self.decoder: DecoderRuntime = load_decoder(sam, decoder_runtime, runtime_cache)
        with torch.inference_mode():  # a constant of the model, the same on every call
            self._dense_pe = self.model.prompt_encoder.get_dense_pe()
        self.decode_chunk = DECODE_CHUNK.get(self.device.type, 1)
        self.transform = ResizeLongestSide(IMAGE_SIZE)
        self.cache: LRUCache[ImageEmbedding] = LRUCache(cache_mb)
        # Embeddings of another runtime or precision differ slightly: each has its folder.
        info = self.encoder.info
        folder = sam.model_id if info.name == "torch" else f"{sam.model_id}-{info.tag}"
        self.disk_cache = Path(disk_cache) / folder if disk_cache else None
        self._encode_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats = EngineStats()
        self._image_caches: dict[str, LRUCache] = {}
        self._image_caches_lock = threading.Lock()

    @classmethod
    def create(
        cls,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        cache_mb: float = 512,
        disk_cache: str | Path | None = None,
        runtime: str = "auto",
        runtime_cache: str | Path | None = None,
        decoder_runtime: str | None = None,
    ) -> SamEngine:
        """Load SAM (default: embedded MobileSAM) and wrap it in an engine (see the class
        doc for ``runtime``, ``runtime_cache`` and ``decoder_runtime``)."""
        return cls(
            load_sam(checkpoint, device),
            cache_mb=cache_mb,
            disk_cache=disk_cache,
            runtime=runtime,
            runtime_cache=runtime_cache,
            decoder_runtime=decoder_runtime,
        )

    @property
    def model_id(self) -> str:
        return self.sam.model_id

    @property
    def runtime_info(self) -> RuntimeInfo:
        """What runs the image encoder: runtime name, version, precision, fallback reason."""
        return self.encoder.info

    @property
    def decoder_info(self) -> RuntimeInfo:
        """What runs the prompt encoder + mask decoder (same fields as :attr:`runtime_info`)."""
        return self.decoder.info

    def image_cache(self, name: str, capacity_mb: float) -> LRUCache:
        """The engine's LRU cache ``name`` for results derived from its images (e.g. the
        SAM-everything regions), created with ``capacity_mb`` on first use and the same
        object after.  Callers key entries by :attr:`ImageEmbedding.key` plus any
        parameter the result depends on; results of another engine never mix in.

        Raises:
            ValueError: ``name`` exists with another capacity.
        """
        with self._image_caches_lock:
            cache = self._image_caches.get(name)
            if cache is None:
                cache = self._image_caches[name] = LRUCache(capacity_mb)
            elif cache.capacity_mb != capacity_mb:
                raise ValueError(
                    f"image cache {name!r} exists with another capacity than {capacity_mb} MB"
                )
            return cache

    def stats(self) -> EngineStats:
        with self._stats_lock:
            stats = EngineStats(**{k: v for k, v in vars(self._stats).items() if k != "cache"})
        stats.cache = self.cache.stats()
        return stats

    # ------------------------------------------------------------------ encoding
    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Embedding of ``image`` ``(H, W, 3) uint8`` RGB; encoded at most once per content."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        key = image_key(image)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        with self._encode_lock:
            hit = self.cache.get(key) if key in self.cache else None
            if hit is not None:
                return hit
            emb = self._load_disk(key, image) or self._encode(key, image)
            self.cache.put(key, emb, emb.nbytes)
        return emb

    @staticmethod
    def _working_image(image: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` image -> ``(h, w, 3) uint8`` working frame, resized as SAM's
        ``ResizeLongestSide.apply_image`` does (PIL bilinear)."""
        return np.array(resize(to_pil_image(image), working_shape(image.shape[:2])))

    @torch.inference_mode()
    def _encode(self, key: str, image: np.ndarray) -> ImageEmbedding:
        start = time.perf_counter()
        resized = self._working_image(image)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].float()
        features = self.encoder.encode(self.model.preprocess(x))
        seconds = time.perf_counter() - start
        with self._stats_lock:
            self._stats.encodes += 1
            self._stats.encode_seconds += seconds
        log.debug("encoded %s %s in %.2fs", key[:8], image.shape[:2], seconds)
        emb = ImageEmbedding(
            key=key,
            features=features,
            original_size=image.shape[:2],
            input_size=resized.shape[:2],
            image=resized,
            encode_seconds=seconds,
        )
        if self.disk_cache is not None:
            self._save_disk(key, features)
        return emb

    def _save_disk(self, key: str, features: torch.Tensor) -> None:
        """Store ``features`` as ``<key>.npy`` in the disk cache, atomically: written to a
        temporary name of this process and thread, then renamed, so processes sharing the
        folder never read a partial file nor collide.  A failed write is logged, never
        raised: the cache only saves time."""
        try:
            self.disk_cache.mkdir(parents=True, exist_ok=True)
            with replaced_atomically(self.disk_cache / f"{key}.npy", ".tmp.npy") as tmp:
                np.save(tmp, features.cpu().numpy())
        except OSError as exc:
            log.warning("could not store the embedding in %s: %s", self.disk_cache, exc)

    def _load_disk(self, key: str, image: np.ndarray) -> ImageEmbedding | None:
        if self.disk_cache is None:
            return None
        path = self.disk_cache / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            features = torch.from_numpy(np.load(path)).to(self.device)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cached embedding %s: %s", path, exc)
            return None
        with self._stats_lock:
            self._stats.disk_hits += 1
        resized = self._working_image(image)
        return ImageEmbedding(key, features, image.shape[:2], resized.shape[:2], resized)

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        emb: ImageEmbedding,
        prompts: Sequence[Prompt],
        multimask: bool | Literal["all"] = True,
        frame: Frame = "image",
    ) -> Decoded:
        """Decode many prompt sets against one embedding.

        Prompts with the same signature (number of points, box or not, mask or not) go
        through the mask decoder together, ``decode_chunk`` at a time (see
        :data:`DECODE_CHUNK`), so the result equals decoding each alone.

        Args:
            emb: the image's embedding.
            prompts: B prompt sets, coordinates in image pixels.
            multimask: 3 masks per prompt when True, else 1; ``"all"``: the single mask
                then the 3 (the decoder computes all 4 in one run).
            frame: "image" for ``(H, W)`` masks, "working" for ``(h, w)``, "none" to skip
                upsampling (use :meth:`upscale` later on the logits you keep).
        """
        if len(prompts) == 0:
            raise PromptError("no prompts to decode")
        m = 4 if multimask == "all" else 3 if multimask else 1
        iou = np.empty((len(prompts), m), np.float32)
        logits = np.empty((len(prompts), m, LOW_RES, LOW_RES), np.float32)
        groups: dict[tuple[int, bool, bool], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.signature, []).append(i)
        calls = 0
        for indices in groups.values():
            for start in range(0, len(indices), self.decode_chunk):
                chunk = indices[start : start + self.decode_chunk]
                g_logits, g_iou = self._decode_group(emb, [prompts[i] for i in chunk], multimask)
                logits[chunk] = g_logits
                iou[chunk] = g_iou
                calls += 1
        with self._stats_lock:
            self._stats.decode_calls += calls
            self._stats.decoded_prompts += len(prompts)
        masks = None
        if frame != "none":
            masks = self.upscale_masks(emb, logits.reshape(-1, LOW_RES, LOW_RES), frame)
            masks = masks.reshape(len(prompts), m, *masks.shape[1:])
        return Decoded(iou=iou, low_res_logits=logits, masks=masks)

    def _decode_group(
        self, emb: ImageEmbedding, prompts: list[Prompt], multimask: bool | str
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.decoder.info.name == "torch":
            return self._decode_torch(emb, prompts, multimask)
        return self._decode_exported(emb, prompts, multimask)

    def _decode_exported(
        self, emb: ImageEmbedding, prompts: list[Prompt], multimask: bool | str
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exported decoder graph, given the prompts as ``PromptEncoder`` sees them:
        points, then a padding point (label -1) when there is no box, then the box's two
        corners (labels 2 and 3); the mask prompt or zeros with a has-mask flag."""
        first, b = prompts[0], len(prompts)
        coords = np.zeros((b, 0, 2))
        labels = np.zeros((b, 0), np.int64)
        if first.points is not None:
            coords = np.stack(
                [self.transform.apply_coords(p.points, emb.original_size) for p in prompts]
            )
            labels = np.stack([p.labels for p in prompts])
            if first.box is None:
                coords = np.concatenate([coords, np.zeros((b, 1, 2))], axis=1)
                labels = np.concatenate([labels, np.full((b, 1), -1)], axis=1)
        if first.box is not None:
            corners = np.stack(
                [self.transform.apply_boxes(p.box[None], emb.original_size)[0] for p in prompts]
            ).reshape(b, 2, 2)
            coords = np.concatenate([coords, corners], axis=1)
            labels = np.concatenate([labels, np.tile([2, 3], (b, 1))], axis=1)
        mask_input = np.zeros((b, 1, LOW_RES, LOW_RES), np.float32)
        has_mask = np.zeros(b, np.float32)
        if first.mask_logits is not None:
            mask_input[:, 0] = np.stack([p.mask_logits for p in prompts])
            has_mask[:] = 1
        features = emb.features.detach().cpu().numpy()
        low_res, iou = self.decoder.run(features, coords, labels, mask_input, has_mask)
        # as MaskDecoder.forward; "all" keeps the 4
        pick = slice(None) if multimask == "all" else slice(1, None) if multimask else slice(0, 1)
        return np.ascontiguousarray(low_res[:, pick]), np.ascontiguousarray(iou[:, pick])

    @torch.inference_mode()
    def _decode_torch(
        self, emb: ImageEmbedding, prompts: list[Prompt], multimask: bool | str
    ) -> tuple[np.ndarray, np.ndarray]:
        first = prompts[0]
        points = boxes = masks = None
        if first.points is not None:
            coords = np.stack(
                [self.transform.apply_coords(p.points, emb.original_size) for p in prompts]
            )
            labels = np.stack([p.labels for p in prompts])
            points = (
                torch.as_tensor(coords, dtype=torch.float32, device=self.device),
                torch.as_tensor(labels, dtype=torch.int64, device=self.device),
            )
        if first.box is not None:
            b = np.stack(
                [self.transform.apply_boxes(p.box[None], emb.original_size)[0] for p in prompts]
            )
            boxes = torch.as_tensor(b, dtype=torch.float32, device=self.device)
        if first.mask_logits is not None:
            mk = np.stack([p.mask_logits for p in prompts])[:, None]
            masks = torch.as_tensor(mk, dtype=torch.float32, device=self.device)
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        if multimask == "all":  # MaskDecoder.forward without its slice
            low_res, iou = self.model.mask_decoder.predict_masks(
                emb.features, self._dense_pe, sparse, dense
            )
            return low_res.float().cpu().numpy(), iou.float().cpu().numpy()
        low_res, iou = self.model.mask_decoder(
            image_embeddings=emb.features,
            image_pe=self._dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return low_res.float().cpu().numpy(), iou.float().cpu().numpy()

    def upscale_masks(
        self, emb: ImageEmbedding, low_res_logits: np.ndarray, frame: Frame = "image"
    ) -> np.ndarray:
        """``(N, 256, 256)`` low-res logits -> ``(N, H, W)`` (image) or ``(N, h, w)``
        (working) bool masks, logits > 0 after :meth:`upscale`; one mask at a time, so only
        one mask's float32 logits are held at full size (192 MB for an 8000 x 6000 image,
        instead of N times that)."""
        out_hw = _frame_shape(emb, frame)
        masks = np.empty((len(low_res_logits), *out_hw), bool)
        banded = (
            self.decoder.info.name != "torch"
            and frame == "image"
            and 4 * out_hw[0] * out_hw[1] > BANDED_UPSCALE_BYTES
        )
        for i in range(len(low_res_logits)):
            if banded:
                working = self._upscale_one(emb, low_res_logits[i], "working")
                _greater_zero_resized(working, masks[i])
            else:
                np.greater(self._upscale_one(emb, low_res_logits[i], frame), 0, out=masks[i])
        return masks

    def upscale(
        self, emb: ImageEmbedding, low_res_logits: np.ndarray, frame: Frame = "image"
    ) -> np.ndarray:
        """Map ``(N, 256, 256)`` low-res logits to ``(N, H, W)`` (image) or ``(N, h, w)``
        (working) float32 logits, bilinear as SAM does; threshold at 0 for masks (or use
        :meth:`upscale_masks`, which holds less)."""
        out_hw = _frame_shape(emb, frame)
        out = np.empty((len(low_res_logits), *out_hw), np.float32)
        for i in range(len(low_res_logits)):
            self._upscale_one(emb, low_res_logits[i], frame, out=out[i])
        return out

    @torch.inference_mode()
    def _upscale_one(
        self,
        emb: ImageEmbedding,
        logits: np.ndarray,
        frame: Frame,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """One ``(256, 256)`` low-res logit map -> ``(H, W)`` or ``(h, w)`` float32, written
        into ``out`` when given (else possibly a view: read it, do not keep it).

        With the torch decoder, ``F.interpolate`` as SAM's postprocessing; with an exported
        one, ``cv2.resize`` (the same half-pixel bilinear map in float32, within ~1e-4 of
        it, a few times faster, and resized straight into ``out``)."""
        h, w = emb.input_size
        out_hw = _frame_shape(emb, frame)
        resize_to_image = frame == "image" and out_hw != (h, w)
        if self.decoder.info.name != "torch":
            up = cv2.resize(
                np.asarray(logits, np.float32),
                (IMAGE_SIZE, IMAGE_SIZE),
                interpolation=cv2.INTER_LINEAR,
            )[:h, :w]
            if resize_to_image:
                return cv2.resize(up, out_hw[::-1], dst=out, interpolation=cv2.INTER_LINEAR)
        else:
            t = torch.as_tensor(logits, dtype=torch.float32, device=self.device)[None, None]
            t = F.interpolate(t, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
            t = t[..., :h, :w]
            if resize_to_image:
                t = F.interpolate(t, out_hw, mode="bilinear", align_corners=False)
            up = t[0, 0].cpu().numpy()
        if out is None:
            return up
        out[...] = up
        return out


def _frame_shape(emb: ImageEmbedding, frame: Frame) -> tuple[int, int]:
    """``(H, W)`` of the image frame or ``(h, w)`` of the working frame."""
    return emb.original_size if frame == "image" else emb.input_size


def _greater_zero_resized(logits: np.ndarray, out: np.ndarray, rows: int = 512) -> None:
    """Write ``resize(logits) > 0`` into ``out`` ``(H, W)`` bool, ``rows`` output rows at a
    time; ``logits`` ``(h, w)`` float32.

    The bilinear map is ``cv2.resize``'s (half-pixel centres, edges clamped): a horizontal
    pass to ``(h, W)`` with cv2, then each band's vertical blend of two rows in numpy, so
    only ``(h, W)`` and one band are held in float32, never the ``(H, W)`` map."""
    h = logits.shape[0]
    height, width = out.shape
    across = cv2.resize(np.asarray(logits, np.float32), (width, h), interpolation=cv2.INTER_LINEAR)
    scale = h / height
    for r0 in range(0, height, rows):
        ys = (np.arange(r0, min(height, r0 + rows)) + 0.5) * scale - 0.5
        top = np.floor(ys)
        weight = (ys - top).astype(np.float32)
        weight[top < 0] = 0
        top = np.clip(top, 0, h - 1).astype(np.intp)
        band = across[top]
        band *= (1 - weight)[:, None]
        below = across[np.minimum(top + 1, h - 1)]
        below *= weight[:, None]
        band += below
        np.greater(band, 0, out=out[r0 : r0 + len(ys)])

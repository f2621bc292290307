"""Plain SAM click interaction: the baseline every click method is compared with.

A session holds one image and the clicks so far; each click decodes all clicks together
with the previous low-res logits as the mask prompt, as SAM's interactive demo does.  With
``corrections`` each later click chooses among a few candidates and guards small
corrections instead (:mod:`.corrections`), and from ``zoom_from`` on decodes on a crop
around the object (:mod:`.zoom`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .corrections import Correction, CorrectionConfig, correct_click
from .sam import ImageEmbedding, Prompt, SamEngine
from .zoom import (
    Box,
    contains,
    crop_image,
    focus_box,
    mask_prompt,
    object_box,
    paste,
    to_crop,
)


class ClickSession(Protocol):
    """What every click method offers (``sam``, ``sam-single``, SmartSAM, ...)."""

    #: ``(H, W) bool`` current mask in the image frame (all False before the first click).
    mask: np.ndarray
    #: Predicted IoU of the current mask, in [0, 1].
    score: float

    def click(self, x: float, y: float, positive: bool = True) -> np.ndarray:
        """Add a click at image pixel ``(x, y)``; returns the new ``(H, W) bool`` mask."""
        ...

    def next_crop(self) -> Box | None:
        """The crop (x0, y0, x1, y1 image pixels) the next click will start zooming on,
        or None."""
        ...


@dataclass
class SamClickSession:
    """Plain SAM clicks on one image.

    Args:
        engine: the shared SAM engine (the image is embedded once, through its cache).
        image: ``(H, W, 3) uint8`` RGB.
        multimask_first: at the first click take the best of SAM's 3 masks by predicted
            IoU (method ``sam``); when False use single-mask output (``sam-single``).
        corrections: how later clicks choose their mask (:func:`.corrections.correct_click`);
            None is plain SAM (the single mask decoded with the previous logits).
        feed_logits: plain SAM feeds the previous low-res logits back as the mask prompt;
            False decodes every click from all the clicks (and the box) alone (method
            ``sam-fresh``).

    An object may also be started with a box (:meth:`frame`): the box then stays part
    of every later click's prompt.

    With ``corrections.zoom_from`` later clicks from that one on are decoded on a crop
    around the object (``crop``, its embedding ``crop_emb`` and the crop's low-res
    ``crop_logits``); ``logits`` is then stale until the object outgrows the zoom and the
    session returns to the whole image, seeded with the current mask.
    """

    engine: SamEngine
    image: np.ndarray
    multimask_first: bool = True
    corrections: CorrectionConfig | None = None
    feed_logits: bool = True
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    logits: np.ndarray | None = None  # (256, 256) float32, low-res frame
    score: float = 0.0
    #: ``(M, H, W) bool`` candidate masks of the first click (for oracle figures).
    candidates: np.ndarray | None = None
    #: ``(4,)`` float x0, y0, x1, y1 image pixels of the box the object was started with.
    box: np.ndarray | None = None
    crop: Box | None = None
    crop_emb: ImageEmbedding | None = None
    crop_logits: np.ndarray | None = None  # (256, 256) float32, the crop's low-res frame
    #: How the latest click's mask was chosen (None: a first or a plain click).
    last: Correction | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.emb: ImageEmbedding = self.engine.embed(self.image)
        self.mask = np.zeros(self.emb.original_size, bool)

    def frame(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Start the object with a box (image pixels): SAM's single mask for it; returns the
        ``(H, W) bool`` mask.  Later clicks keep the box in their prompt."""
        if self.logits is not None:
            raise ValueError("a box can only start an object, not follow its clicks")
        self.box = np.array([x0, y0, x1, y1], np.float64)
        out = self.engine.decode(self.emb, [Prompt(box=self.box)], multimask=False)
        self.candidates = out.masks[0]
        self.set_state(out.masks[0], out.iou[0], out.low_res_logits[0], 0)
        return self.mask

    def click(self, x: float, y: float, positive: bool = True) -> np.ndarray:
        ahead = self.next_crop()
        self.points.append((float(x), float(y)))
        self.labels.append(1 if positive else 0)
        first = self.logits is None
        if not first and self.corrections is not None:
            if self._focus(ahead):
                return self._zoomed_click()
            c = correct_click(
                self.engine,
                self.emb,
                np.array(self.points),
                np.array(self.labels),
                self.logits,
                self.score,
                self.corrections,
                self.box,
            )
            masks = self.engine.upscale_masks(self.emb, c.logits[None], "image")
            self.set_state(masks, np.array([c.iou]), c.logits[None], 0)
            self.last = c
            return self.mask
        self.last = None
        prompt = Prompt(
            points=np.array(self.points),
            labels=np.array(self.labels),
            box=self.box,
            mask_logits=self.logits if self.feed_logits else None,
        )
        out = self.engine.decode(self.emb, [prompt], multimask=first and self.multimask_first)
        if first:
            self.candidates = out.masks[0]
        self.set_state(out.masks[0], out.iou[0], out.low_res_logits[0], int(out.best()[0]))
        return self.mask

    def next_crop(self) -> Box | None:
        """The crop the next click will start zooming on, from the current mask and clicks
        (it is used when it holds the next click), or None when the next click will not
        start a zoom.  A server can encode it while the annotator looks at the mask."""
        z = self.corrections
        if z is None or not z.zoom_from or self.logits is None or self.crop is not None:
            return None
        if self._interactions() + 1 < z.zoom_from or not (self.mask.any() or any(self.labels)):
            return None
        return self._crop_around(z, self._object_box())

    def _object_box(self) -> Box:
        """The box around the mask and the positive clicks (:func:`.zoom.object_box`)."""
        return object_box(self.mask, np.array(self.points), np.array(self.labels))

    def _crop_around(self, z: CorrectionConfig, need: Box) -> Box | None:
        """The crop (:func:`.zoom.focus_box`) for the object box ``need``."""
        return focus_box(need, self.mask.shape, z.zoom_expand, z.zoom_min_side, z.zoom_max_share)

    def _interactions(self) -> int:
        """Clicks so far, a starting box counting as the first."""
        return len(self.points) + (self.box is not None)

    def _focus(self, ahead: Box | None) -> bool:
        """Place the crop for the clicks so far (keep it while it holds the mask and the
        positive clicks; start on ``ahead``, :meth:`next_crop` before this click, when it
        holds them); False when there is no zoom for this click."""
        z = self.corrections
        if z is None or not z.zoom_from or self._interactions() < z.zoom_from:
            return False
        need = self._object_box()
        if self.crop is not None and contains(self.crop, need):
            return True
        box = ahead if ahead is not None and contains(ahead, need) else self._crop_around(z, need)
        if box is None:
            if self.crop is not None:  # back to the whole image, from the current mask
                self.logits = mask_prompt(self.emb, self.mask)
                self.crop = self.crop_emb = self.crop_logits = None
            return False
        if box != self.crop:
            x0, y0, x1, y1 = box
            self.crop = box
            self.crop_emb = self.engine.embed(crop_image(self.image, box))
            self.crop_logits = mask_prompt(self.crop_emb, self.mask[y0:y1, x0:x1])
        return True

    def _zoomed_click(self) -> np.ndarray:
        """The latest click decoded on the crop (guarded against the crop's current mask)."""
        x0, y0, x1, y1 = self.crop
        box = None
        if self.box is not None:
            box = np.clip(to_crop(self.box, self.crop), 0, [x1 - x0, y1 - y0] * 2)
        c = correct_click(
            self.engine,
            self.crop_emb,
            to_crop(np.array(self.points), self.crop),
            np.array(self.labels),
            self.crop_logits,
            self.score,
            self.corrections,
            box,
        )
        crop_mask = self.engine.upscale_masks(self.crop_emb, c.logits[None], "image")[0]
        self.mask = paste(crop_mask, self.crop, self.mask.shape)
        self.score = c.iou
        self.crop_logits = c.logits
        self.last = c
        return self.mask

    def set_state(self, masks: np.ndarray, iou: np.ndarray, logits: np.ndarray, index: int) -> None:
        """Make output ``index`` of a decode the current mask; later clicks refine it.

        ``masks`` ``(M, H, W) bool`` image frame, ``iou`` ``(M,)``, ``logits``
        ``(M, 256, 256)`` low-res frame.
        """
        self.mask = masks[index]
        self.score = float(iou[index])
        self.logits = logits[index]

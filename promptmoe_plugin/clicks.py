"""Plain SAM click interaction: the baseline every click method is compared with.

A session holds one image and the clicks so far; each click decodes all clicks together
with the previous low-res logits as the mask prompt, as SAM's interactive demo does.  With
``corrections`` each later click chooses among a few candidates and guards small
corrections instead (:mod:`.corrections`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .corrections import CorrectionConfig, correct_click
from .sam import ImageEmbedding, Prompt, SamEngine


class ClickSession(Protocol):
    """What every click method offers (``sam``, ``sam-single``, SmartSAM, ...)."""

    #: ``(H, W) bool`` current mask in the image frame (all False before the first click).
    mask: np.ndarray
    #: Predicted IoU of the current mask, in [0, 1].
    score: float

    def click(self, x: float, y: float, positive: bool = True) -> np.ndarray:
        """Add a click at image pixel ``(x, y)``; returns the new ``(H, W) bool`` mask."""
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
        self.points.append((float(x), float(y)))
        self.labels.append(1 if positive else 0)
        first = self.logits is None
        if not first and self.corrections is not None:
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
            return self.mask
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

    def set_state(self, masks: np.ndarray, iou: np.ndarray, logits: np.ndarray, index: int) -> None:
        """Make output ``index`` of a decode the current mask; later clicks refine it.

        ``masks`` ``(M, H, W) bool`` image frame, ``iou`` ``(M,)``, ``logits``
        ``(M, 256, 256)`` low-res frame.
        """
        self.mask = masks[index]
        self.score = float(iou[index])
        self.logits = logits[index]

"""``promptmoe demo``: one click on an example photo, written as an overlay PNG."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from .clicks import SamClickSession
from .images import load_image
from .overlay import draw_overlay
from .sam import SamEngine

log = logging.getLogger(__name__)

#: The astronaut photo bundled with scikit-image and a click on the helmet/face.
ASTRONAUT_CLICK = (256.0, 179.0)


def run_demo(engine: SamEngine, out: Path, image_path: str | None = None) -> np.ndarray:
    """Segment the clicked object and save an overlay to ``out``; returns the mask.

    Without ``image_path`` the bundled astronaut photo is used with a click on the
    astronaut; with it, the click is at the image centre.  The mask is ``(H, W) bool`` in
    the image frame.
    """
    if image_path is None:
        import skimage.data

        image, click = skimage.data.astronaut(), ASTRONAUT_CLICK
    else:
        image = load_image(image_path)
        click = (image.shape[1] / 2, image.shape[0] / 2)
    session = SamClickSession(engine, image)
    mask = session.click(*click)
    overlay = draw_overlay(image, mask, points=np.array([click]), labels=np.array([1]))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay).save(out)
    log.info(
        "clicked (%.0f, %.0f): mask of %d px, predicted IoU %.3f; overlay written to %s",
        *click,
        int(mask.sum()),
        session.score,
        out,
    )
    return mask

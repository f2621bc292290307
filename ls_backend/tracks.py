"""Click tracks: the SmartSAM sessions of one label on one image, kept between requests.

Label Studio sends every click of a label again with each new click.  A track remembers
the clicks it has applied, so a request continues the track of its clicks so far and
applies only the new ones.  Each positive click on no object starts a new object
(session) of the label; labels are never merged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from promptmoe_plugin.sam import Prompt, SamEngine
from promptmoe_plugin.sam.cache import LRUCache, image_key
from promptmoe_plugin.smartsam import SmartSamSession

from .tasks import Click

#: Memory for click tracks kept for later clicks (one per (image, label, clicks so far)).
SESSION_CACHE_MB = 256
#: Estimated bytes one click session holds beyond the shared embedding: a copy of the
#: image, its masks (1 byte per pixel each), its candidate logits, and once its later
#: clicks zoom, a crop's embedding (4 MB of features and the crop at up to 1024 px, 3 MB).
_SESSION_FIXED_BYTES = 9 * 2**20


@dataclass
class Track:
    """The click sessions (one per object) of one label on one image, and its clicks."""

    sessions: list[SmartSamSession] = field(default_factory=list)
    clicks: tuple[Click, ...] = ()


class ClickTracks:
    """Tracks by (image, project, label, clicks), bounded in bytes, least recently used
    dropped first.

    A request takes its track out of the cache while it advances it, so a track never
    sits under a key whose clicks it no longer has, then stores it under its new clicks.
    """

    def __init__(self, capacity_mb: float = SESSION_CACHE_MB):
        self._cache: LRUCache[Track] = LRUCache(capacity_mb)

    def apply(
        self,
        engine: SamEngine,
        image: np.ndarray,
        project: str,
        label: str,
        clicks: tuple[Click, ...],
        new_session: Callable[[], SmartSamSession],
    ) -> list[SmartSamSession]:
        """The objects of ``label`` after all its ``clicks`` (image pixels) on ``image``
        ``(H, W, 3) uint8``: the track of the longest prefix of ``clicks`` continues (else a
        new one starts) and only the clicks beyond it are applied; ``new_session`` starts
        an object."""
        base = (image_key(image), project, label)
        track = None
        for n in range(len(clicks), 0, -1):
            track = self._cache.pop((*base, clicks[:n]))
            if track is not None:
                break
        track = track or Track()
        for click in clicks[len(track.clicks) :]:
            _add_click(track, click, engine, image, new_session)
        track.clicks = clicks
        per_session = image.nbytes + 2 * image[..., 0].nbytes + _SESSION_FIXED_BYTES
        self._cache.put((*base, clicks), track, len(track.sessions) * per_session)
        return track.sessions


def _add_click(
    track: Track,
    click: Click,
    engine: SamEngine,
    image: np.ndarray,
    new_session: Callable[[], SmartSamSession],
) -> None:
    """Apply one click to the object under it; else a negative click goes to the latest
    object and a positive one to the object its own SAM mask touches, or starts a new
    object of the label."""
    h, w = image.shape[:2]
    row, col = min(max(int(click.y), 0), h - 1), min(max(int(click.x), 0), w - 1)
    target = next((s for s in track.sessions if s.mask[row, col]), None)
    if target is None and track.sessions:
        target = _touched(track, click, engine, image) if click.positive else track.sessions[-1]
    if target is None:
        if not click.positive:
            return  # a negative click before any object: nothing to remove
        target = new_session()
        track.sessions.append(target)
    target.click(click.x, click.y, click.positive)


def _touched(
    track: Track, click: Click, engine: SamEngine, image: np.ndarray
) -> SmartSamSession | None:
    """The session whose mask overlaps most the object SAM finds under a positive click
    (dilated by 2 px), or None when it touches none."""
    emb = engine.embed(image)
    prompt = Prompt(points=np.array([[click.x, click.y]]), labels=np.array([1]))
    out = engine.decode(emb, [prompt])
    own = ndimage.binary_dilation(out.masks[0, out.best()[0]], iterations=2)
    overlaps = [int((own & s.mask).sum()) for s in track.sessions]
    return track.sessions[int(np.argmax(overlaps))] if max(overlaps) > 0 else None

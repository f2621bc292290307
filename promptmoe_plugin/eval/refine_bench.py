"""The refinement benchmark: refine generated coarse masks with refine methods.

Each dataset's images are processed in a fixed order (sorted by name), every coarse kind
of an image with every method.  The result holds the figures of
:func:`.stats.summarize_refine`, ``per_image`` and ``config``; with ``out`` a
``report.md`` plus overlay PNGs of the best and worst IoU gains of every method are
written there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..sam import SamEngine
from .coarse import KINDS, sample_seed, try_coarse
from .datasets import sample_datasets
from .methods import UNREFINED, refine_methods, refine_runners
from .metrics import boundary_iou, iou
from .options import recorded, refine_options
from .report import (
    LEGEND,
    Case,
    Extremes,
    config_text,
    refine_tables,
    write_overlays,
    write_report,
)
from .stats import summarize_refine

log = logging.getLogger(__name__)


class EncoderClock:
    """Encoder seconds per image, from real encodes on an engine without caches.

    SAM encodes a fixed 1024x1024 padded input, so its time does not depend on the image:
    with ``images`` set, only the first ``images`` images of a run are encoded and the rest
    get the median of those (saves an encode per image on a busy machine); ``images=None``
    encodes every image; ``images=0`` disables timing (0 s).
    """

    def __init__(self, engine: SamEngine, images: int | None = None):
        self.timer = type(engine)(engine.sam, cache_mb=0) if images != 0 else None
        self.images = images
        self.measured: list[float] = []

    def seconds(self, image: np.ndarray) -> float:
        """Encoder time for ``image`` ``(H, W, 3) uint8``: measured or the median so far."""
        if self.timer is None:
            return 0.0
        if self.images is None or len(self.measured) < self.images:
            self.measured.append(self.timer.embed(image).encode_seconds)
            return self.measured[-1]
        return float(np.median(self.measured))


def _quality(mask: np.ndarray, gt: np.ndarray, ignore: np.ndarray) -> tuple[float, float, float]:
    """IoU, PromptMoE's Boundary IoU and Cheng et al.'s of ``mask`` against ``gt``, all
    ``(H, W) bool`` image frame, ``ignore`` pixels excluded."""
    return (
        iou(mask, gt, ignore),
        boundary_iou(mask, gt, ignore),
        boundary_iou(mask, gt, ignore, kind="cheng"),
    )


def run_refine_bench(
    engine: SamEngine,
    folders: Sequence[str],
    methods: Sequence[str],
    kinds: Sequence[str] = KINDS,
    *,
    limit: int | None = None,
    baseline: str = "samrefiner",
    bootstrap: int = 2000,
    seed: int = 0,
    options: Mapping[str, Mapping[str, str]] | None = None,
    depth_model: str | None = None,
    encoder_images: int | None = None,
    out: str | Path | None = None,
    overlays: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Refine generated coarse masks with every method on every image.

    ``sec_per_annotation`` = the image's encoder time + the method's wall time (``unrefined``
    uses no encoder).  The encoder time is measured by a real encode of the image, once, on
    an engine that shares the model but has no cache (the benchmark itself uses the cached
    embedding, so every method sees identical features); see :class:`EncoderClock`.

    Args:
        engine: the SAM engine every method shares.
        folders: dataset folders (see :mod:`.datasets`), distinct directory names.
        methods: refine variants (:data:`promptmoe_plugin.refine.VARIANTS`); ``baseline``
            is added when missing.
        kinds: coarse-mask kinds (:data:`.coarse.KINDS`).
        limit: first ``limit`` images of each dataset (None or 0: all).
        baseline: the method the differences and their CI are computed against.
        bootstrap: bootstrap resamples of the 95% CI (0: none).
        seed: run seed: coarse masks and DualSight use :func:`.coarse.sample_seed` of the
            image, the bootstrap uses it directly.
        options: ``--option`` strings per target (:func:`.options.parse_options`).
        depth_model: depth model (path or hub id) of the depth expert for methods whose
            options name none (None: no depth expert).
        encoder_images: :class:`EncoderClock`'s ``images``.
        out: folder for ``report.md`` and the overlays (None: no report).
        overlays: best and worst IoU gains drawn per method when ``out`` is given.
        progress: show a progress bar per dataset.

    Returns:
        the JSON payload: ``summary``, ``by_group``, ``bands``, ``unrefined``, ``timings``
        (:func:`.stats.summarize_refine`), ``per_image`` records and the run's ``config``.

    Raises:
        ValueError: an unknown method or coarse kind, bad options, or unusable folders.
    """
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown coarse kind {kind!r}: use one of {', '.join(KINDS)}")
    names = list(dict.fromkeys([*methods, baseline]))
    chosen = refine_methods(names)
    runners = refine_runners(engine, chosen, refine_options(options or {}, chosen), depth_model)
    data = sample_datasets(folders, limit)
    clock = EncoderClock(engine, encoder_images)
    config = {
        "benchmark": "refine",
        "datasets": {n: len(s) for n, s in data},
        "methods": names,
        "coarse": list(kinds),
        "baseline": baseline,
        "seed": seed,
        "options": recorded(options or {}),
        "model": engine.model_id,
        "encoder_timed_images": "all" if encoder_images is None else encoder_images,
        "bootstrap": bootstrap,
    }
    keep = overlays if out else 0
    per_image: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    extremes = {r.name: Extremes(keep) for r in runners}
    for name, samples in data:
        for sample in tqdm(samples, desc=f"refine {name}", unit="img", disable=not progress):
            image, gt, ignore = sample.load()
            if not (gt & ~ignore).any():
                log.warning("%s/%s: empty ground truth, skipped", name, sample.name)
                continue
            encode = clock.seconds(image)
            engine.embed(image)
            s = sample_seed(seed, sample.name)
            for kind in kinds:
                initial, reason = try_coarse(gt, image, kind, s)
                if initial is None:
                    log.warning("%s/%s %s: skipped (%s)", name, sample.name, kind, reason)
                    skipped.append(
                        {"dataset": name, "image": sample.name, "coarse": kind, "reason": reason}
                    )
                    continue
                before = _quality(initial, gt, ignore)
                for runner in runners:
                    t0 = time.perf_counter()
                    result = runner.run(image, initial, seed=s)
                    seconds = time.perf_counter() - t0
                    after = _quality(result.mask, gt, ignore)
                    per_image.append(
                        {
                            "dataset": name,
                            "image": sample.name,
                            "coarse": kind,
                            "method": runner.name,
                            "iou_before": before[0],
                            "iou": after[0],
                            "biou_before": before[1],
                            "biou": after[1],
                            "biou_cheng_before": before[2],
                            "biou_cheng": after[2],
                            "seconds": seconds,
                            "encode_seconds": 0.0 if runner.name == UNREFINED else encode,
                            "timings": result.timings,
                            "source": result.source,
                        }
                    )
                    gain = after[0] - before[0]
                    ext = extremes[runner.name]
                    if ext.wants(gain):
                        title = (
                            f"{name}/{sample.name} {kind} "
                            f"IoU {100 * before[0]:.1f} to {100 * after[0]:.1f}"
                        )
                        case = Case(
                            title,
                            image,
                            gt,
                            result.mask,
                            initial,
                            result.points,
                            result.labels,
                            result.box,
                        )
                        ext.add(gain, case)
    summary = summarize_refine(
        _complete(per_image, kinds), names, baseline, bootstrap=bootstrap, seed=seed
    )
    payload = {**summary, "per_image": per_image, "skipped": skipped, "config": config}
    if out:
        _write_refine_report(Path(out), payload, extremes)
    return payload


def _complete(records: list[dict[str, Any]], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """The records of images that have every coarse kind: the summary pairs each image's
    kinds, so an image with a skipped kind is left out of it (it stays in ``per_image``
    and its skipped kind in ``skipped``)."""
    found: dict[tuple[str, str], set[str]] = {}
    for r in records:
        found.setdefault((r["dataset"], r["image"]), set()).add(r["coarse"])
    whole = {key for key, got in found.items() if got >= set(kinds)}
    if len(whole) < len(found):
        log.warning(
            "%d image(s) with a skipped coarse kind left out of the summary",
            len(found) - len(whole),
        )
    return [r for r in records if (r["dataset"], r["image"]) in whole]


def _write_refine_report(out: Path, result: dict[str, Any], extremes: dict[str, Extremes]) -> None:
    lines = write_overlays(out, extremes, "IoU gain")
    write_report(
        out,
        "Refinement benchmark",
        [
            ("Configuration", "```\n" + config_text(result["config"]) + "\n```"),
            ("Results", refine_tables(result, markdown=True)),
            ("Best and worst cases (IoU gain)", LEGEND + "\n\n" + "\n".join(lines)),
        ],
    )

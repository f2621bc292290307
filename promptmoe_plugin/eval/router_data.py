"""Training the expert selector from dataset folders: collect measured examples, hold
out a share of the images, fit, evaluate and save (:func:`train_router`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..experts import CHEAP_EXPERTS
from ..experts.depth import DepthEstimator
from ..router import (
    Example,
    evaluate,
    fit,
    load_examples,
    save_examples,
    save_router,
    split_by_image,
)
from ..sam import SamEngine
from ..selector_data import make_example
from .coarse import KINDS, sample_seed, try_coarse
from .datasets import sample_datasets

log = logging.getLogger(__name__)


def collect_examples(
    engine: SamEngine,
    folders: Sequence[str],
    images: int,
    kinds: Sequence[str],
    rng: np.random.Generator,
    *,
    depth: DepthEstimator | None = None,
    include_gated: bool = False,
    desc: str = "images",
    progress: bool = True,
) -> list[Example]:
    """Measured examples of ``images`` seeded-random images of each folder (0: all), one per
    coarse kind whose mask can be made and is not empty and, unless ``include_gated``, whose
    draft the box gate does not answer (the selector is asked only where it stays shut).

    The images are drawn with ``rng`` (:func:`.datasets.sample_datasets`, one permutation
    per folder, so successive calls continue its stream); each coarse mask is seeded by
    the image name with run seed 0.  Examples are named ``dataset/image``; drafts skipped
    (not made, empty, or answered by the gate) are logged with their count.
    """
    chosen = [(name, s) for name, found in sample_datasets(folders, images, rng=rng) for s in found]
    examples, unmade, gated = [], 0, 0
    bar = tqdm(chosen, desc=desc, unit="image", disable=not progress)
    for dataset, sample in bar:
        image, gt, ignore = sample.load()
        name = f"{dataset}/{sample.name}"
        for kind in kinds:
            coarse, reason = try_coarse(gt, image, kind, sample_seed(0, sample.name))
            if coarse is None:
                log.info("%s skipped: %s", name, reason)
                unmade += 1
                continue
            example = make_example(
                engine,
                name,
                kind,
                image,
                coarse,
                gt,
                ignore,
                depth=depth,
                skip_gated=not include_gated,
            )
            if example is None:
                gated += 1
            else:
                examples.append(example)
        bar.set_postfix(examples=len(examples), gated=gated)
    log.info(
        "%s: %d examples; skipped %d drafts that could not be made or were empty and %d "
        "answered by the box gate",
        desc,
        len(examples),
        unmade,
        gated,
    )
    return examples


def _cached_or_collected(
    collect: Callable[..., list[Example]],
    data: Sequence[str],
    holdout_data: Sequence[str],
    cache: Path | None,
) -> tuple[list[Example], list[Example]]:
    """Training-pool and held-out-only examples: read from ``cache`` (``<cache>.train.npz``,
    ``<cache>.holdout.npz``) when its training file exists, else measured by
    ``collect(folders, desc=...)`` (training folders first) and written there.

    Raises:
        ValueError: a cache file written by the earlier measurement (one PPE step of the
            paper's settings, no box agreement recorded): its IoUs are not this pipeline's.
    """
    train_file = cache.with_suffix(".train.npz") if cache else None
    holdout_file = cache.with_suffix(".holdout.npz") if cache else None
    if train_file and train_file.is_file():
        pool = load_examples(train_file)
        extra = load_examples(holdout_file) if holdout_file.is_file() else []
        for path, loaded in ((train_file, pool), (holdout_file, extra)):
            if any(np.isnan(e.agreement) for e in loaded):
                raise ValueError(
                    f"{path} holds examples measured by an earlier version (one PPE step, "
                    "no box agreement), not by the current refinement pipeline: delete the "
                    "cache files to measure them again"
                )
        log.info("loaded %d + %d examples from %s", len(pool), len(extra), cache)
        return pool, extra
    pool = collect(data, desc="training images")
    if not pool:
        raise ValueError(
            "no training examples: every draft was empty or answered by the box gate "
            "(measure those too with include_gated / --include-gated)"
        )
    extra = collect(holdout_data, desc="held-out images") if holdout_data else []
    if cache:
        save_examples(pool, train_file)
        if extra:
            save_examples(extra, holdout_file)
    return pool, extra


def train_router(
    engine: SamEngine,
    data: Sequence[str],
    holdout_data: Sequence[str],
    out: str | Path,
    *,
    images: int = 0,
    kinds: Sequence[str] = KINDS,
    holdout: float = 1 / 3,
    epochs: int = 300,
    seed: int = 0,
    examples: str | Path | None = None,
    depth_model: str | None = None,
    include_gated: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the expert selector on dataset folders and save its weights to ``out``.

    Every chosen image gets one example per coarse kind whose draft the box gate leaves to
    the experts (all drafts with ``include_gated``): the refined IoU of each expert pair
    (:func:`promptmoe_plugin.selector_data.make_example`).  A share ``holdout`` of the
    ``data`` images (drawn with ``seed``) is held out, together with every ``holdout_data``
    image; the selector is fitted on the rest.

    Raises:
        ValueError: no training example (every draft empty or answered by the gate).

    Args:
        engine: the SAM engine the pairs are measured with.
        data: dataset folders to train on (a share held out by image).
        holdout_data: dataset folders used only for held-out evaluation.
        out: weights file (``.pt``) to write.
        images: seeded-random images per folder (0: all).
        kinds: coarse-mask kinds (:data:`.coarse.KINDS`).
        holdout: share of the ``data`` images held out.
        epochs: training epochs.
        seed: seed of the image draw, the hold-out split and the fit.
        examples: cache of the measured examples (``<examples>.train.npz`` and
            ``.holdout.npz``): reused when present, written otherwise.
        depth_model: depth model (path or hub id) for the depth expert (None: none).
        include_gated: also measure drafts the box gate answers (by default only drafts
            where the gate stays shut and the selector is asked).
        progress: show progress bars while measuring.

    Returns:
        the selector's ``meta`` as saved with it: the images trained on and held out, the
        coarse kinds, seed, epochs, ``figures`` (:func:`promptmoe_plugin.router.evaluate`
        on ``train``, ``held_out``, ``held_out_lite`` (the six cheap experts) and
        ``held_out_by_dataset``) and ``fit_seconds``.
    """
    collect = partial(
        collect_examples,
        engine,
        images=images,
        kinds=kinds,
        rng=np.random.default_rng(seed),
        depth=DepthEstimator(depth_model) if depth_model else None,
        include_gated=include_gated,
        progress=progress,
    )
    cache = Path(examples) if examples else None
    pool, extra = _cached_or_collected(collect, data, holdout_data, cache)
    train, held = split_by_image(pool, holdout, seed)
    held = held + extra
    t0 = time.perf_counter()
    router = fit(train, epochs=epochs, seed=seed)
    figures: dict[str, Any] = {"train": evaluate(router, train), "held_out": evaluate(router, held)}
    figures["held_out_lite"] = evaluate(router, held, CHEAP_EXPERTS)
    figures["held_out_by_dataset"] = {
        ds: evaluate(router, [e for e in held if e.name.startswith(ds + "/")])
        for ds in sorted({e.name.split("/")[0] for e in held})
    }
    router.meta = {
        "trained_on": sorted({e.name for e in train}),
        "held_out": sorted({e.name for e in held}),
        "kinds": sorted({e.kind for e in train}),
        "seed": seed,
        "epochs": epochs,
        "figures": figures,
        "fit_seconds": time.perf_counter() - t0,
    }
    save_router(router, out)
    log.info(
        "trained on %d examples (%d images); held out %d examples (%d images); wrote %s",
        len(train),
        len(router.meta["trained_on"]),
        len(held),
        len(router.meta["held_out"]),
        out,
    )
    return router.meta

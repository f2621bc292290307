"""Training data and fitting of SmartSAM's learned switch (``promptmoe train-switch``).

:func:`switch_pools` runs SmartSAM's first click with references on every image of some
dataset folders, as ``bench click`` does (the same references, seeds and first clicks),
and measures each candidate of the pool against the ground truth;
:func:`train_switch` fits :func:`~promptmoe_plugin.smartsam.switch.fit_switch` on them
and reports the figures on the training and held-out pools.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..sam import SamEngine
from ..smartsam import SmartSamConfig, SmartSamSession, make_intent
from ..smartsam.switch import (
    DEFAULT_SWITCH,
    SwitchPool,
    SwitchWeights,
    fit_switch,
    load_switch,
    pool_figures,
)
from .click_bench import pool_mode, project_samples
from .clicker import Clicker
from .coarse import sample_seed
from .datasets import sample_datasets
from .metrics import iou

log = logging.getLogger(__name__)


def switch_pools(
    engine: SamEngine,
    folders: Sequence[str | Path],
    references: int = 5,
    class_references: int = 3,
    first_clicks: Sequence[str] = ("center", "random"),
    seed: int = 0,
    progress: bool = True,
) -> list[SwitchPool]:
    """First-click pools of SmartSAM with the ``sam`` intent, measured.

    References as in ``bench click --reference-pool auto``: up to ``class_references``
    other instances of the image's class where every name in a folder carries a class,
    else the ground truth of up to ``references`` earlier images of the folder (the
    first image, without any, is skipped).  Each image gives one pool per first click
    (``center``, ``random``: seeded per image as the bench does).
    """
    intent = make_intent("sam", engine)
    config = SmartSamConfig(switch=None)  # the pools do not depend on the choice
    pools: list[SwitchPool] = []
    for name, samples in sample_datasets(folders):
        mode = pool_mode("auto", samples)
        limit = references if mode == "earlier" else class_references
        project = project_samples(
            name, samples, mode, limit, desc=f"pools {name}", progress=progress
        )
        for sample, image, gt, ignore, refs in project:
            if not refs:
                continue
            s = sample_seed(seed, sample.name)
            for first in first_clicks:
                rng = np.random.default_rng(s) if first == "random" else None
                click = Clicker(gt, ignore, first, rng).next_click(np.zeros_like(gt))
                session = SmartSamSession(
                    engine, image, config, intent=intent, references=refs, seed=s
                )
                session.click(click.x, click.y, True)
                idx, features, eligible, sam = session.switch_pool()
                masks = engine.upscale_masks(session.emb, session.pool.logits[idx], "image")
                pools.append(
                    SwitchPool(
                        features,
                        eligible,
                        np.array([iou(m, gt, ignore) for m in masks]),
                        sam,
                        f"{name}/{sample.name}/{first}",
                    )
                )
    return pools


def save_pools(pools: Sequence[SwitchPool], path: str | Path) -> None:
    """Write ``pools`` to an ``.npz`` file (:func:`load_pools` reads it back)."""
    sizes = np.array([len(p.gt_iou) for p in pools])
    np.savez_compressed(
        path,
        sizes=sizes,
        features=np.concatenate([p.features for p in pools]),
        eligible=np.concatenate([p.eligible for p in pools]),
        gt_iou=np.concatenate([p.gt_iou for p in pools]),
        sam=np.array([p.sam for p in pools]),
        names=np.array([p.name for p in pools]),
    )


def load_pools(path: str | Path) -> list[SwitchPool]:
    """Pools written by :func:`save_pools`."""
    with np.load(path) as data:
        bounds = np.cumsum(np.concatenate([[0], data["sizes"]]))
        return [
            SwitchPool(
                data["features"][a:b],
                data["eligible"][a:b],
                data["gt_iou"][a:b],
                int(sam),
                str(name),
            )
            for a, b, sam, name in zip(
                bounds[:-1], bounds[1:], data["sam"], data["names"], strict=True
            )
        ]


def _cached_pools(
    engine: SamEngine, folders: Sequence[str | Path], cache: str | None, **kwargs: Any
) -> list[SwitchPool]:
    if cache and Path(cache).exists():
        log.info("first-click pools from %s", cache)
        return load_pools(cache)
    pools = switch_pools(engine, folders, **kwargs)
    if cache:
        save_pools(pools, cache)
    return pools


def _shipped() -> np.ndarray | None:
    """The package's switch weights, to compare with; None when it has none or they do
    not load."""
    if not DEFAULT_SWITCH.exists():
        return None
    try:
        return load_switch(DEFAULT_SWITCH).weights
    except ValueError as exc:
        log.warning("the shipped switch is left out of the figures: %s", exc)
        return None


def _by_dataset(pools: Sequence[SwitchPool], weights: np.ndarray | None) -> dict[str, Any]:
    """:func:`pool_figures` per ``dataset/first click`` group and over all pools."""
    groups: dict[str, list[SwitchPool]] = {}
    for p in pools:
        dataset, _, first = p.name.split("/")
        groups.setdefault(f"{dataset}/{first}", []).append(p)
    out = {key: pool_figures(g, weights) for key, g in sorted(groups.items())}
    out["all"] = pool_figures(pools, weights)
    return out


def train_switch(
    engine: SamEngine,
    data: Sequence[str | Path],
    holdout_data: Sequence[str | Path],
    out: str | Path,
    loss_weight: float = 1.0,
    temperature: float = 0.03,
    references: int = 5,
    class_references: int = 3,
    seed: int = 0,
    pools_cache: str | None = None,
) -> dict[str, Any]:
    """Fit the switch on the first-click pools of ``data``, write the weights to
    ``out`` (:meth:`~promptmoe_plugin.smartsam.switch.SwitchWeights.save`) and return
    the figures: mean IoU of the choice, of SAM's answer and (when the package has them)
    of the shipped weights' choice, losses, per ``dataset/first click`` on the training
    and the ``holdout_data`` pools.  ``pools_cache``: keep the measured pools in
    ``<pools_cache>.train.npz`` / ``.holdout.npz`` and reuse them."""
    kwargs = {"references": references, "class_references": class_references, "seed": seed}
    cache = (lambda part: f"{pools_cache}.{part}.npz") if pools_cache else (lambda part: None)
    train = _cached_pools(engine, data, cache("train"), **kwargs)
    held = _cached_pools(engine, holdout_data, cache("holdout"), **kwargs) if holdout_data else []
    weights = fit_switch(train, loss_weight=loss_weight, temperature=temperature)
    shipped = _shipped()
    figures: dict[str, dict[str, Any]] = {}
    for split, pools in (("train", train), ("held_out", held)):
        if pools:
            figures[split] = {
                "fitted": _by_dataset(pools, weights),
                "sam": _by_dataset(pools, None),
            }
            if shipped is not None:
                figures[split]["shipped"] = _by_dataset(pools, shipped)
    meta = {
        "trained_on": [str(d) for d in data],
        "held_out": [str(d) for d in holdout_data],
        "pools": len(train),
        "loss_weight": loss_weight,
        "temperature": temperature,
        "references": references,
        "class_references": class_references,
        "seed": seed,
        "model": engine.model_id,
        "figures": {s: f["fitted"]["all"] for s, f in figures.items()},
    }
    SwitchWeights(weights, meta).save(out)
    return {"weights": weights.tolist(), "meta": meta, "figures": figures}
